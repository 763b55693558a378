"""What the Ansible tests share: real `ansible-playbook` runs of ansible/ on the local stack,
their play recap read back, and each web host's journal of runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.site_e2e_support import PROVISION, REPO

ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def ansible_env(env: dict[str, str]) -> dict[str, str]:
    """The tool's environment plus ansible/ansible.cfg (its temporary files under ansible/)."""
    return {
        **env,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', os.defpath)}",
    }


def playbook(
    env: dict[str, str],
    book: str,
    extra: dict[str, Any],
    *options: str,
    inventory: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook BOOK -e JSON [options]` from ansible/, as an operator runs it."""
    argv = [str(BIN / "ansible-playbook"), book, "-e", json.dumps(extra), *options]
    if inventory is not None:
        argv += ["-i", str(inventory)]
    return subprocess.run(
        argv,
        cwd=ANSIBLE_DIR,
        env=ansible_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def site_vars(domain: str, name: str, state: str = "present") -> dict[str, Any]:
    return {"domain": domain, "site_name": name, "state": state, "provision_path": PROVISION}


def recap(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """The PLAY RECAP per host: ok, changed, unreachable, failed."""
    found = {
        host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
        for host, ok, ch, un, fa in RECAP.findall(done.stdout)
    }
    assert found, f"no PLAY RECAP in:\n{done.stdout}\n{done.stderr}"
    return found


def succeeded(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """The recap of a play that must have passed on every host."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr}"
    return recap(done)


def journaled_runs(state_dir: Path) -> list[dict[str, Any]]:
    """Each run a host journaled (its start event: pipeline, scopes, steps), oldest first."""
    runs = []
    for path in sorted((state_dir / "journal").glob("*.jsonl")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        runs.append(json.loads(first))
    return runs
