"""Contract cases of the site steps that write the site's folder and its AEIMS records:
files, record and operators.

The harness's World gives its runs `Settings(state_dir, pg_dsn)` only; these steps read the
sites folder and the AEIMS data folder from the run's settings (the data layer is the run's
shared client), so each case's arrange turns its world into a `SiteWorld`, whose settings
add `sites_root = <root>/sites` and `data_dir = <root>/aeims` (a copy of the fixture root).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import RunContext, Step
from provisioner.site.files import MANIFEST, FilesStep
from provisioner.site.operators import OperatorsStep
from provisioner.site.record import RecordStep
from provisioner.site.validate import site_spec
from provisioner.storage import DataLayer
from tests.contract.harness import StepCase, World, tree
from tests.datalayer_support import FIXTURE_AEIMS, copy_root


class SiteWorld(World):
    """A World whose runs know where sites and AEIMS data live (inside its root).

    Each arrange copies the AEIMS root to a new path (`aeims-<n>`): the data layer remembers
    the folders it made for the life of the process, and the harness re-arranges a world by
    removing and recreating it under the same path.
    """

    generation = 0

    @property
    def data_dir(self) -> Path:
        return self.root / f"aeims-{self.generation}"

    @property
    def settings(self) -> Settings:
        return replace(super().settings, sites_root=self.root / "sites", data_dir=self.data_dir)


def site_world(world: World) -> SiteWorld:
    world.__class__ = SiteWorld
    assert isinstance(world, SiteWorld)
    return world


def spec(domain: str = "newflirts.com", name: str = "New Flirts", **more: Any) -> Any:
    return site_spec({"domain": domain, "name": name, "type": "customer", "template": "default"}
                     | more)  # fmt: skip


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

FOLDER = Path("sites/newflirts.com")


def files_step(name: str = "New Flirts", inline_limit: int | None = None):  # type: ignore[no-untyped-def]
    def build(world: World) -> FilesStep:
        step = FilesStep(spec(name=name), site_world(world).settings)
        if inline_limit is not None:
            step.inline_limit = inline_limit
        return step

    return build


def sites_folder(*, rendered_as: str | None = None, hand_edit: bool = False,
                 foreign: bool = False):  # type: ignore[no-untyped-def]  # fmt: skip
    def arrange(world: World) -> None:
        site_world(world)
        (world.root / "sites").mkdir()
        if rendered_as is not None:
            step = files_step(rendered_as)(world)
            with world.run("arrange") as ctx:
                step.apply(ctx)
        if hand_edit:
            page = world.root / FOLDER / "index.html"
            page.write_text(page.read_text() + "<!-- the operator's own line -->\n")
        if foreign:  # an existing site folder the tool never rendered
            (world.root / FOLDER / "uploads").mkdir(parents=True)
            (world.root / FOLDER / "uploads" / "logo.png").write_bytes(b"\x89PNG\x00\xff")
            (world.root / FOLDER / "index.html").write_text("<h1>hand made</h1>\n")
            (world.root / FOLDER / "index.html").chmod(0o600)

    return arrange


def all_rendered(world: World) -> None:
    folder = world.root / FOLDER
    assert len([p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST]) == 15
    assert (folder / MANIFEST).stat().st_mode & 0o777 == 0o600
    assert "New Flirts" in (folder / "index.html").read_text()


def hand_edit_kept(world: World) -> None:
    page = (world.root / FOLDER / "index.html").read_text()
    assert "the operator's own line" in page or "hand made" in page
    manifest = json.loads((world.root / FOLDER / MANIFEST).read_text())
    assert "index.html" in manifest["kept"]


def killed_after_three_files(step: Step, ctx: RunContext, world: World) -> None:
    """Killed inside apply: folders made, three files written, a torn temp file beside them."""
    assert isinstance(step, FilesStep)
    plan = step.plan()
    for rel in plan.writes[:3]:
        path = step.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(plan.wanted[rel])
    torn = step.folder / plan.writes[3]
    torn.with_name(f".{torn.name}.k1lled.tmp").write_text("<!DOC")


def files_case(name: str, arrange: Any, build: Any = None, **expect: Any) -> StepCase:
    return StepCase(
        id=f"site-files/{name}",
        kind=FilesStep,
        build=build or files_step(),
        arrange=arrange,
        snapshot=lambda world: tree(world.root / "sites"),
        **expect,
    )


FILES_CASES = [
    files_case(
        "new-site",
        sites_folder(),
        after_apply=all_rendered,
        partial_apply=killed_after_three_files,
    ),
    files_case("renamed-site-rerendered", sites_folder(rendered_as="Old Flirts")),
    files_case(
        "hand-edit-kept-as-drift",
        sites_folder(rendered_as="Old Flirts", hand_edit=True),
        after_apply=hand_edit_kept,
    ),
    files_case(
        "existing-folder-never-rendered",
        sites_folder(foreign=True),
        after_apply=hand_edit_kept,
        partial_apply=killed_after_three_files,
    ),
    files_case(
        "big-before-state-in-a-checkpoint",
        sites_folder(rendered_as="Old Flirts"),
        build=files_step(inline_limit=10),
    ),
    files_case("already-converged", sites_folder(rendered_as="New Flirts"), converged=True),
]

# --------------------------------------------------------------------------------------------
# record and operators: the AEIMS files, read back as parsed JSON
# --------------------------------------------------------------------------------------------


def aeims_root(world: World) -> None:
    site = site_world(world)
    SiteWorld.generation += 1
    site.generation = SiteWorld.generation
    copy_root(FIXTURE_AEIMS, site.data_dir)


def aeims_files(world: World) -> dict[str, Any]:
    """The site files parsed (without their own `last_updated` stamp), and the operators as the
    data layer reads them: saving an operator that was only in agents/data/operators.json
    writes it to both files (the data layer's choice), which a rollback does not undo."""
    root = site_world(world).data_dir
    found: dict[str, Any] = {}
    for rel in ("data/sites.json", "data/domains.json"):
        data = json.loads((root / rel).read_text())
        data.pop("last_updated", None)
        found[rel] = data
    with DataLayer(root) as layer:
        found["operators"] = sorted(layer.list("operators"), key=lambda op: str(op["id"]))
    return found


def data_step(kind: type[Step], **spec_fields: Any):  # type: ignore[no-untyped-def]
    def build(world: World) -> Step:
        return kind(spec(**spec_fields), site_world(world).settings)

    return build


def only_the_site_saved(step: Step, ctx: RunContext, world: World) -> None:
    """Killed between the two records: the site saved, its domains.json entry not yet."""
    assert isinstance(step, RecordStep)
    change = step.check(ctx)
    assert change is not None
    from provisioner.clients import DATA_LAYER

    ctx.client(DATA_LAYER).save("sites", change.after["site"], step.spec.site_id)


def one_operator_linked(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after linking the first operator of the pool."""
    assert isinstance(step, OperatorsStep)
    from provisioner.clients import DATA_LAYER

    layer = ctx.client(DATA_LAYER)
    first = step.pool(layer)[0]
    layer.set_operator_site(str(first["id"]), step.spec.domain)


def site_is_provisioned(world: World) -> None:
    sites = aeims_files(world)["data/sites.json"]["sites"]
    domains = aeims_files(world)["data/domains.json"]
    record = next(s for s in sites.values() if s["domain"] == "newflirts.com")
    assert record["site_id"] == "newflirts_com" and record["active"] is False
    assert domains["newflirts.com"]["status"] == "provisioned"


def data_case(name: str, kind: type[Step], build: Any, **expect: Any) -> StepCase:
    return StepCase(
        id=f"site-{kind.name}/{name}",
        kind=kind,
        build=build,
        arrange=aeims_root,
        snapshot=aeims_files,
        **expect,
    )


DATA_CASES = [
    data_case(
        "new-site",
        RecordStep,
        data_step(RecordStep),
        after_apply=site_is_provisioned,
        partial_apply=only_the_site_saved,
    ),
    data_case(
        "domain-entry-kept-site-created",
        RecordStep,
        data_step(RecordStep, domain="gamma.example.test"),
        partial_apply=only_the_site_saved,
    ),
    data_case("renamed-site", RecordStep, data_step(RecordStep, domain="alpha.example.test")),
    data_case(
        "already-converged",
        RecordStep,
        data_step(RecordStep, domain="alpha.example.test", name="Alpha Flirts"),
        converged=True,
    ),
    data_case(
        "pool-joins-new-site",
        OperatorsStep,
        data_step(OperatorsStep),
        partial_apply=one_operator_linked,
    ),
    data_case(
        "named-operators-reactivated",
        OperatorsStep,
        data_step(OperatorsStep, domain="ghost.example.test", operators="jade,op_zero"),
        partial_apply=one_operator_linked,
    ),
    data_case(
        "already-in-the-pool",
        OperatorsStep,
        data_step(OperatorsStep, domain="alpha.example.test"),
        converged=True,
    ),
]

CASES: list[StepCase] = [*FILES_CASES, *DATA_CASES]
