"""The record, files and operators steps through the real runner, in every migration phase.

Forward, a re-run that changes nothing, rollback back to exactly the records found before
(JSON files and PostgreSQL), and a failure after the three steps that leaves no residue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.config import Settings
from provisioner.engine.journal import FileJournal
from provisioner.engine.locks import FileTargetLock
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.runner import Runner
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.files import MANIFEST, FilesStep
from provisioner.site.operators import OperatorsStep
from provisioner.site.record import RecordStep
from provisioner.site.validate import site_spec
from provisioner.storage import DataLayer
from provisioner.storage.layer.phase import Phase
from tests.datalayer_support import FIXTURE_AEIMS, copy_root, layer_in, migrate

DOMAIN = "newflirts.com"


class Boom(Step):
    """Fails after the steps before it applied, so the runner rolls them back."""

    name = "boom"
    scope = Scope.GLOBAL

    def check(self, ctx: RunContext) -> Change | None:
        return Change("explode")

    def apply(self, ctx: RunContext) -> Undo:
        raise RuntimeError("injected failure after the site's steps")

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        return None


@register("site-data-test")
def _pipeline(params: dict[str, Any], settings: Settings) -> Pipeline:
    spec = site_spec(params)
    steps: list[Step] = [
        RecordStep(spec, settings),
        FilesStep(spec, settings),
        OperatorsStep(spec, settings),
    ]
    if params.get("fail"):
        steps.append(Boom())
    return Pipeline("site-data-test", spec.domain, params, steps)


@pytest.fixture(params=[Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_JSON, Phase.PG_ONLY])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    phase: Phase = request.param
    dsn = None
    if phase is not Phase.JSON_ONLY:
        dsn = request.getfixturevalue("fresh_pg_dsn")
        migrate(dsn)
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    with layer_in(root, dsn, phase):
        pass
    (tmp_path / "sites").mkdir()
    yield Settings(
        state_dir=tmp_path / "state",
        data_dir=root,
        pg_dsn=dsn,
        sites_root=tmp_path / "sites",
        journal="files",
    )


def runner(settings: Settings) -> Runner:
    journal = FileJournal(settings.journal_dir)
    return Runner(settings, journal, lambda t: FileTargetLock(settings.lock_dir, t))


def pipeline(settings: Settings, **params: Any) -> Pipeline:
    base = {"domain": DOMAIN, "name": "New Flirts", "type": "customer", "template": "default"}
    return _pipeline({**base, **params}, settings)


def world(settings: Settings) -> dict[str, Any]:
    """What the steps may touch, as the data layer reads it (JSON or PostgreSQL by phase),
    PostgreSQL's own rows when configured, and the sites folder."""
    assert settings.data_dir is not None
    with DataLayer.from_settings(settings) as layer:
        seen: dict[str, Any] = {
            "sites": sorted(layer.list("sites"), key=lambda r: r["site_id"]),
            "domains": sorted(layer.list("domains"), key=lambda r: r["domain"]),
            "operators": sorted(layer.list("operators"), key=lambda r: str(r["id"])),
        }
    if settings.pg_dsn:
        with psycopg.connect(settings.pg_dsn) as conn:
            seen["operator_sites"] = sorted(
                conn.execute("SELECT * FROM operator_sites").fetchall(), key=repr
            )
            seen["pg_counts"] = conn.execute(
                "SELECT (SELECT count(*) FROM sites), (SELECT count(*) FROM domains)"
            ).fetchall()
    seen["folder"] = sorted(str(p) for p in settings.sites_root.rglob("*"))
    return seen


def test_create_converge_and_roll_back_in_every_phase(settings: Settings) -> None:
    before = world(settings)
    result = runner(settings).run(pipeline(settings))
    assert result.status == "succeeded", result.failure
    summaries = [s.summary for s in result.steps]
    assert summaries[0].startswith("site_id newflirts_com created")
    assert summaries[1] == f"created {settings.sites_root / DOMAIN}/ with 15 templates"
    assert summaries[2] == "connected to AEIMS operator pool (4 operators)"

    with DataLayer.from_settings(settings) as layer:
        site = layer.get_site("newflirts_com")
        assert site is not None and site["active"] is False and site["name"] == "New Flirts"
        assert site["theme"]["primary_color"].startswith("#")
        assert layer.get("domains", DOMAIN)["status"] == "provisioned"  # type: ignore[index]
        assert len(layer.search_operators(site=DOMAIN)) == 4
    if settings.pg_dsn:
        with psycopg.connect(settings.pg_dsn) as conn:
            linked = conn.execute(
                "SELECT count(*) FROM operator_sites WHERE domain = %s", (DOMAIN,)
            ).fetchone()
        assert linked == (4,)
    page = (settings.sites_root / DOMAIN / "index.html").read_text()
    assert "New Flirts" in page and "#e91e63" in page

    again = runner(settings).run(pipeline(settings))
    assert again.status == "succeeded" and not again.changed

    undone = runner(settings).rollback(result.run_id or "")
    assert undone.status in ("rolled_back", "succeeded"), undone.failure
    assert world(settings) == before


def test_a_failure_after_the_steps_leaves_no_residue(settings: Settings) -> None:
    before = world(settings)
    result = runner(settings).run(pipeline(settings, fail=True))
    assert result.status != "succeeded" and "injected failure" in (result.failure or "")
    assert world(settings) == before


def test_rollback_puts_back_an_existing_site_and_links(settings: Settings) -> None:
    """alpha.example.test exists: a rename updates its record and re-renders nothing by hand;
    rollback restores the record (stats, active flag, everything) exactly."""
    before = world(settings)
    params = {"domain": "alpha.example.test", "name": "Alpha Renamed", "operators": "jade"}
    result = runner(settings).run(pipeline(settings, **params))
    assert result.status == "succeeded", result.failure
    assert result.steps[0].summary == "site_id alpha_example_test updated"
    with DataLayer.from_settings(settings) as layer:
        site = layer.get_site("alpha_example_test")
        assert site is not None and site["name"] == "Alpha Renamed" and site["active"] is True
    runner(settings).rollback(result.run_id or "")
    assert world(settings) == before


def test_hand_edits_survive_a_rerun_and_are_reported_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", sites_root=tmp_path / "sites")
    (tmp_path / "sites").mkdir()
    spec = site_spec({"domain": DOMAIN, "name": "New Flirts", "type": "customer",
                      "template": "default"})  # fmt: skip
    step = FilesStep(spec, settings)
    ctx = RunContext("r", DOMAIN, {}, settings)
    step.apply(ctx)
    css = settings.sites_root / DOMAIN / "assets/css/theme.css"
    css.write_text(css.read_text().replace("#e91e63", "#123456"))
    (settings.sites_root / DOMAIN / "terms.html").unlink()

    renamed = FilesStep(site_spec({**spec.as_params(), "name": "Newer Flirts"}), settings)
    change = renamed.check(ctx)
    assert change is not None
    assert "kept 2 file(s) changed by hand (not overwritten): assets/css/theme.css, terms.html" in (
        change.summary
    )
    assert "-  --primary: #e91e63;" in (change.diff or "") and "+  --primary: #123456;" in (
        change.diff or ""
    )
    undo = renamed.apply(ctx)
    assert undo["kept"] == ["assets/css/theme.css", "terms.html"]
    assert "#123456" in css.read_text()
    assert not (settings.sites_root / DOMAIN / "terms.html").exists()
    assert "Newer Flirts" in (settings.sites_root / DOMAIN / "index.html").read_text()
    assert renamed.check(ctx) is None  # drift acknowledged: quiet until it changes again
    assert renamed.drift() == ["assets/css/theme.css", "terms.html"]
    manifest = json.loads((settings.sites_root / DOMAIN / MANIFEST).read_text())
    assert set(manifest["kept"]) == {"assets/css/theme.css", "terms.html"}


def test_preflight_names_what_is_missing(tmp_path: Path) -> None:
    spec = site_spec({"domain": DOMAIN, "name": "N", "type": "customer", "template": "default",
                      "operators": ["nobody"]})  # fmt: skip
    bare = Settings(state_dir=tmp_path / "state", sites_root=tmp_path / "nowhere")
    ctx = RunContext("r", DOMAIN, {}, bare)
    assert RecordStep(spec, bare).preflight(ctx) == [
        "no AEIMS data folder configured: set PROVISION_DATA_DIR to the application root "
        "holding data/*.json"
    ]
    assert "PROVISION_SITES_ROOT" in FilesStep(spec, bare).preflight(ctx)[0]
    data = Settings(state_dir=tmp_path / "state", data_dir=copy_root(FIXTURE_AEIMS, tmp_path / "a"))
    ctx = RunContext("r", DOMAIN, {}, data)
    assert OperatorsStep(spec, data).preflight(ctx) == [
        "no AEIMS operator nobody: check the ids or usernames given to --operators"
    ]
    ctx.close_clients()
