"""The nginx step in the contract table, against the stack's real nginx.

The world a case snapshots is the site's vhost file, its enabled link, any temp file a killed
write left beside them, and what nginx answers for the site's Host at the marker path: so a
rollback must also have reloaded nginx (and proven it) to restore the world. Each case has
its own domain in each session; a case arranged with a vhost leaves it in place at the end, as
the contract requires, and the next session sweeps it once it is stale.
"""

from __future__ import annotations

import shutil
import time
import uuid
from functools import lru_cache
from typing import Any

from provisioner.engine.step import RunContext, Step
from provisioner.site.nginx import (
    NginxStep,
    VhostState,
    install_vhost,
    render_vhost,
)
from provisioner.site.nginx_control import VhostFiles
from tests.contract.harness import StepCase, World
from tests.nginx_support import (
    get,
    install_hand_written,
    remove_vhost,
    self_signed,
    site,
    site_folder,
    stack_settings,
    vhost_paths,
)

# Several test sessions may share the stack: each gets its own domains.
SESSION = uuid.uuid4().hex[:6]
SUFFIX = ".contract-nginx.test"
STALE_SECONDS = 900.0


def domain_of(name: str) -> str:
    return f"{name}-{SESSION}{SUFFIX}"


@lru_cache(maxsize=1)
def sweep_stale_sessions() -> None:
    """Remove what earlier sessions' cases left (their arranged worlds), once per session:
    the vhost first, then its certificate, so nginx never points at a missing file."""
    settings = stack_settings()
    cutoff = time.time() - STALE_SECONDS
    for vhost in settings.nginx_vhost_dir.glob(f"*{SUFFIX}.conf"):
        domain = vhost.name.removesuffix(".conf")
        if SESSION not in domain and vhost.lstat().st_mtime < cutoff:
            remove_vhost(settings, domain)
            shutil.rmtree(settings.cert_dir / "live" / domain, ignore_errors=True)
            shutil.rmtree(settings.sites_root / domain, ignore_errors=True)


def step_for(name: str) -> Any:
    def build(world: World) -> NginxStep:
        return NginxStep(site(domain_of(name), "Contract"), stack_settings())

    return build


def snapshot_for(name: str) -> Any:
    def snapshot(world: World) -> dict[str, Any]:
        settings = stack_settings()
        status, _, body = get(settings, domain_of(name), "/.well-known/provision-vhost")
        return {**vhost_paths(settings, domain_of(name)), "answer": (status, body)}

    return snapshot


def fresh(name: str, *, certificate: bool = False) -> None:
    """No vhost for the case's domain, its site folder made, a certificate only if asked."""
    sweep_stale_sessions()
    settings = stack_settings()
    spec = site(domain_of(name), "Contract")
    remove_vhost(settings, spec.domain)
    site_folder(settings, spec)
    shutil.rmtree(settings.cert_dir / "live" / spec.domain, ignore_errors=True)
    if certificate:
        self_signed(settings, spec.domain)


def arrange_nothing(name: str, **kwargs: bool) -> Any:
    return lambda world: fresh(name, **kwargs)


def arrange_hand_written(name: str, enabled: str) -> Any:
    def arrange(world: World) -> None:
        fresh(name)
        install_hand_written(stack_settings(), domain_of(name), mode=0o640, enabled=enabled)

    return arrange


def arrange_converged(name: str) -> Any:
    def arrange(world: World) -> None:
        fresh(name)
        install_vhost(site(domain_of(name), "Contract"), stack_settings())

    return arrange


def arrange_live_site(name: str) -> Any:
    """Ours already, but `live`: a run naming `coming_soon` (e.g. a disable) changes it."""

    def arrange(world: World) -> None:
        fresh(name)
        install_vhost(site(domain_of(name), "Contract"), stack_settings(), VhostState.LIVE)

    return arrange


def killed_after_the_vhost_was_written(step: Step, ctx: RunContext, world: World) -> None:
    """Killed inside apply: the vhost written (and a torn temp beside it), no link, no reload."""
    assert isinstance(step, NginxStep)
    files = VhostFiles.for_domain(step.spec.domain, step.settings)
    content = render_vhost(step.spec, step.settings, VhostState.COMING_SOON, False)
    files.write({"vhost": files.wanted(content)["vhost"]})
    (files.vhost.parent / f".{files.vhost.name}.k1lled.tmp").write_text(content[:30])


def applied_by_the_certificate_steps_entry_point(step: Step, ctx: RunContext, world: World) -> None:
    """`install_vhost` (what the certificate step calls), its undo record lost."""
    assert isinstance(step, NginxStep)
    install_vhost(step.spec, step.settings, step.state)


def nginx_serves_the_site(name: str) -> Any:
    def after_apply(world: World) -> None:
        status, headers, body = get(stack_settings(), domain_of(name))
        assert status == 200 and b"Contract" in body
        assert headers["x-robots-tag"] == "noindex"

    return after_apply


def case(name: str, arrange: Any, **expect: Any) -> StepCase:
    """A case whose domain is `<name>.contract-nginx.test`."""
    return StepCase(
        id=f"site-nginx/{name}",
        kind=NginxStep,
        build=expect.pop("build", None) or step_for(name),
        arrange=arrange,
        snapshot=snapshot_for(name),
        **expect,
    )


def coming_soon_step(name: str) -> Any:
    def build(world: World) -> NginxStep:
        spec = site(domain_of(name), "Contract")
        return NginxStep(spec, stack_settings(), VhostState.COMING_SOON)

    return build


CASES = [
    case(
        "new-site",
        arrange_nothing("new-site"),
        after_apply=nginx_serves_the_site("new-site"),
        partial_apply=killed_after_the_vhost_was_written,
    ),
    case(
        "new-site-unjournaled",
        arrange_nothing("new-site-unjournaled"),
        after_apply=nginx_serves_the_site("new-site-unjournaled"),
    ),
    case(
        "hand-written",
        arrange_hand_written("hand-written", "link"),
        after_apply=nginx_serves_the_site("hand-written"),
        partial_apply=killed_after_the_vhost_was_written,
    ),
    case(
        "enabled-copy",
        arrange_hand_written("enabled-copy", "file"),
        after_apply=nginx_serves_the_site("enabled-copy"),
    ),
    case(
        "not-enabled",
        arrange_hand_written("not-enabled", "absent"),
        after_apply=nginx_serves_the_site("not-enabled"),
        partial_apply=applied_by_the_certificate_steps_entry_point,
    ),
    case("tls", arrange_nothing("tls", certificate=True)),
    case(
        "live-to-coming-soon",
        arrange_live_site("live-to-coming-soon"),
        build=coming_soon_step("live-to-coming-soon"),
        after_apply=nginx_serves_the_site("live-to-coming-soon"),
    ),
    case("converged", arrange_converged("converged"), converged=True),
]
