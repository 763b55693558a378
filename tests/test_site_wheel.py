"""An installed wheel finds the top-level templates/ (site and nginx) outside the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.site_support import stack_env

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]
PROBE = """
import json, provisioner
from provisioner.site.templates import render_site, site_template_names, templates_root
from provisioner.site.validate import site_spec
found = {"package": provisioner.__file__, "root": str(templates_root()),
         "templates": site_template_names(), "nginx": (templates_root() / "nginx").is_dir(),
         "rendered": {}}
for kind, tpl in (("customer", "default"), ("operator", "operator")):
    spec = site_spec({"domain": "wheel.example", "name": "Wheel & Co", "type": kind,
                      "template": tpl})
    found["rendered"][tpl] = sorted(render_site(spec))
print(json.dumps(found))
"""


def test_an_installed_wheel_finds_both_site_templates(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [*PIP, "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("provisioner-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The dependencies come from this venv's site-packages; the package only from the wheel
    # (the editable install's .pth is not read from PYTHONPATH).
    probe = subprocess.run(
        [str(python), "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["package"].startswith(str(venv)), found
    assert found["root"].startswith(str(venv)) and found["root"].endswith("_templates")
    assert {"default", "operator"} <= set(found["templates"])
    assert found["nginx"]
    assert len(found["rendered"]["default"]) == 15 and "index.html" in found["rendered"]["operator"]

    # The installed command plans a whole site create against the local stack from there.
    data = tmp_path / "aeims"
    shutil.copytree(REPO / "tests" / "fixtures" / "aeims", data)
    planned = subprocess.run(
        [
            str(venv / "bin" / "provision"),
            "site",
            "create",
            "--domain",
            "wheel.aeims.test",
            "--name",
            "Wheel & Co",
            "--plan",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **stack_env(),
            "PYTHONPATH": sysconfig.get_paths()["purelib"],
            "PATH": "/usr/bin:/bin",
            "PROVISION_STATE_DIR": str(tmp_path / "state"),
            "PROVISION_DATA_DIR": str(data),
            "PROVISION_JOURNAL": "files",
            "PROVISION_CERT_DIR": str(tmp_path / "certs"),  # a ledger of its own
        },
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
    steps = json.loads(planned.stdout)["steps"]
    assert [s["status"] for s in steps][:3] == ["planned", "planned", "planned"]
    assert "server_name wheel.aeims.test" in steps[2]["diff"]["prepared"]
