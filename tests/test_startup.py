"""`provision --help` imports only what it shows: checked by import, not by time.

Time depends on the machine (`make bench` measures it against `python -c pass`); what was
imported does not, so a command module that pulls psycopg or rich in at the top fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from provisioner.cli.main import LAZY_COMMANDS, cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "psycopg",
    "psycopg_pool",
    "rich",
    "jinja2",
    "boto3",
    "botocore",
    "httpx",
    "acme",
    "certbot",
    "provisioner.storage",
    "provisioner.devstack",
    "provisioner.engine.runner",
    "provisioner.engine.backend",
)
# Print the help into nothing, then the names of the modules it took to print it.
PROBE = """
import contextlib, io, sys
from provisioner.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
print("\\n".join(sorted(sys.modules)))
"""


def modules_after(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    return set(result.stdout.split())


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_top_level_help_imports_no_command_module() -> None:
    modules = modules_after("--help")

    assert heavy_in(modules) == []
    assert not any(
        m.startswith("provisioner.cli.") and m != "provisioner.cli.main" for m in modules
    )


@pytest.mark.parametrize(
    "group",
    ["run", "demo", "data", "dev", "runs", "site", "certs"],
)
def test_group_help_imports_only_its_own_module(group: str) -> None:
    assert heavy_in(modules_after(group, "--help")) == []


def test_the_lazy_help_lines_are_the_commands_own() -> None:
    """`provision --help` shows LAZY_COMMANDS' lines: they must say what the commands say."""
    ctx = click.Context(cli)
    for name, (_, _, line, _) in LAZY_COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert command.get_short_help_str(200) == line, name


def test_the_pipelines_known_by_name_are_the_ones_their_modules_register() -> None:
    """`provisioner.app.PIPELINES` lets commands skip importing every pipeline: each name must
    be registered by its module, and every pipeline of the tool must be named there."""
    import importlib

    from provisioner.app import PIPELINES
    from provisioner.engine import pipeline

    for name, module in PIPELINES.items():
        importlib.import_module(module)
        assert name in pipeline._REGISTRY, f"{module} does not register {name!r}"
    ours = {
        name
        for name, factory in pipeline._REGISTRY.items()
        if factory.__module__.startswith("provisioner.")
    }
    assert ours <= set(PIPELINES), sorted(ours - set(PIPELINES))
