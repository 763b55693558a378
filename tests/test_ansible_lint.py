"""ansible/ passes ansible-lint (production profile), and each module's documentation is what
ansible-doc reads and names exactly the parameters the module takes."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ansible_support import ANSIBLE_DIR, BIN, ansible_env

MODULES = ANSIBLE_DIR / "collections/ansible_collections/aeims/provision/plugins/modules"


def test_ansible_lint_passes_on_the_modules_and_playbooks() -> None:
    env = ansible_env({"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(ANSIBLE_DIR / ".ansible")})
    done = subprocess.run(
        [str(BIN / "ansible-lint"), "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stderr + done.stdout


def _literal(path: Path, name: str) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return str(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} has no {name}")


def _argument_spec(path: Path) -> set[str]:
    """The keys of the `argument_spec={...}` literal the module hands AnsibleModule."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "argument_spec":
            assert isinstance(node.value, ast.Dict)
            return {ast.literal_eval(k) for k in node.value.keys if k is not None}
    raise AssertionError(f"{path.name} builds no argument_spec")


@pytest.mark.parametrize("module", ["site", "migration"])
def test_module_documentation_matches_its_parameters(module: str) -> None:
    path = MODULES / f"{module}.py"
    documented = yaml.safe_load(_literal(path, "DOCUMENTATION"))
    assert documented["module"] == module
    assert set(documented["options"]) == _argument_spec(path)
    assert yaml.safe_load(_literal(path, "EXAMPLES"))
    assert yaml.safe_load(_literal(path, "RETURN"))
    done = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", "-t", "module", f"aeims.provision.{module}"],
        cwd=ANSIBLE_DIR,
        env=ansible_env({"PATH": "/usr/bin:/bin"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)[f"aeims.provision.{module}"]
    assert doc["doc"]["options"].keys() == documented["options"].keys()
