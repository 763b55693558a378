"""What the aeims.provision modules share: the tool run as `provision ... --json`."""

from __future__ import annotations

import json
import re

SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|DSN|KEY", re.I)


def secret_masked_env(module):
    """The tool's environment as strings; the values of secret-named variables join the
    module's no_log values, so Ansible masks them wherever they would appear."""
    env = {str(k): str(v) for k, v in (module.params["env"] or {}).items()}
    for key, value in env.items():
        if SECRET_NAME.search(key) and value:
            module.no_log_values.add(value)
    return env


class ProvisionError(Exception):
    """A command failed: its JSON answer (or a stand-in built from its stderr)."""

    def __init__(self, payload):
        super().__init__(payload.get("msg"))
        self.payload = payload


class Provision:
    """Runs `provision ... --json` as an argv list (never through a shell)."""

    def __init__(self, module):
        self.module = module
        self.binary = module.params["provision_path"] or module.get_bin_path(
            "provision", required=True
        )
        self.env = secret_masked_env(module)

    def call(self, *args, expect=(0,)):
        """The command's JSON answer; ProvisionError when its exit code is not in `expect`."""
        argv = [self.binary, *args, "--json"]
        rc, out, err = self.module.run_command(
            argv, environ_update=self.env, check_rc=False, encoding="utf-8"
        )
        try:
            payload = json.loads(out) if out.strip() else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            said = (err or out or "").strip().splitlines()
            payload = {
                "failed": True,
                "msg": said[-1] if said else f"{' '.join(args[:2])} exited {rc} with no output",
            }
        payload["rc"] = rc
        if rc not in expect:
            payload.setdefault("msg", f"exit {rc}")
            raise ProvisionError(payload)
        return payload
