"""Sites as their visitors see them: Debian's headless Chromium, over HTTPS verified against
pebble's root (put in the browser's own NSS database, never with certificate errors turned
off), against sites created on the real local stack.

For the `default` template: the coming-soon page, the live landing page after `enable` and the
503 maintenance page after `disable`; for the `operator` template: its coming-soon and landing
pages. Each at 390 px (a phone) and 1280 px: the site's name visible, the theme's colours in
the computed styles, every request over HTTPS and answered, no console error, the security
headers, nothing wider than the screen, no tiny text, no text at the screen's edge, no links
on top of each other. Screenshots of every page go to var/screenshots/. A probe page with
every such defect shows the checks can fail; `site status --screenshot` takes the same
screenshots on demand, and refuses what it cannot do on one line.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from provisioner.site.screenshot import PHONE_WIDTH, PageUnreachable, SiteBrowser
from tests.browser_support import (
    SCREENSHOTS,
    Timings,
    browser_settings,
    png_size,
    seen_by_visitors,
    stack_browser,
    status_with_screenshot,
    write_probe_page,
)
from tests.site_e2e_support import durable_cert_dir, provision, site_env, still_named
from tests.site_support import unique_domain

NAME = "Browser Flirts"
OPERATOR_NAME = "Operator Desk"


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    """How long the browser work of this module took, written beside the screenshots."""
    measured = Timings()
    yield measured
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "timings.txt").write_text(measured.summary() + "\n")


@pytest.fixture(scope="module")
def browser(stack_env: dict[str, str], timings: Timings) -> Iterator[SiteBrowser]:
    with stack_browser(browser_settings(stack_env), timings) as opened:
        yield opened


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private state, AEIMS copy and certificate folder on the stack (removed once no vhost
    names it any more)."""
    cert_dir = durable_cert_dir("browser")
    yield site_env(
        tmp_path / "state", tmp_path / "aeims", modules="tests.site_pipelines", cert_dir=cert_dir
    )
    if not still_named(cert_dir):
        shutil.rmtree(cert_dir, ignore_errors=True)


@contextmanager
def site_made(env: dict[str, str], name: str, *create_args: str) -> Iterator[str]:
    """A site made by `provision site create` (its domain), destroyed at the end."""
    domain = unique_domain()
    try:
        done = provision(env, "site", "create", "--domain", domain, "--name", name, *create_args)
        assert done.returncode == 0, done.stdout + done.stderr
        yield domain
    finally:
        gone = provision(env, "site", "destroy", "--site", domain, "--keep-certificate", "--json")
        assert gone.returncode in {0, 2}, gone.stdout + gone.stderr  # 2: never made
        for archived in (Path(env["PROVISION_SITES_ROOT"]) / "_archived").glob(f"{domain}_*"):
            shutil.rmtree(archived)


def refused_without_the_root(browser: SiteBrowser, domain: str) -> str:
    """What a browser that does not trust pebble's root says of `domain`. In a thread of its
    own: Playwright's sync API runs one instance per thread, and the module's is open."""
    untrusting = dataclasses.replace(browser.settings, acme_issuer_root=None)

    def visit() -> str:
        with SiteBrowser(untrusting, [domain]) as stranger, pytest.raises(PageUnreachable) as e:
            stranger.visit(domain, PHONE_WIDTH)
        return str(e.value)

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(visit).result(timeout=120)


def run_ok(env: dict[str, str], *args: str) -> None:
    done = provision(env, *args)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_a_default_site_before_during_and_after_going_live(
    env: dict[str, str], browser: SiteBrowser, timings: Timings
) -> None:
    with site_made(env, NAME) as domain:
        coming_soon = seen_by_visitors(
            browser, timings, domain, "default-coming-soon", NAME, "default"
        )
        assert all(v.title == f"{NAME} · coming soon" for v in coming_soon)
        assert all(v.headers.get("x-robots-tag") == "noindex" for v in coming_soon)

        run_ok(env, "site", "enable", "--site", domain)
        live = seen_by_visitors(
            browser, timings, domain, "default-live", NAME, "default", landing=True
        )
        assert all(v.title == NAME and "x-robots-tag" not in v.headers for v in live)
        scripts = [f for v in live for f in v.fetches if f.kind == "script"]
        assert scripts and all(f.status == 200 for f in scripts)

        run_ok(env, "site", "disable", "--site", domain)
        down = seen_by_visitors(
            browser, timings, domain, "default-maintenance", NAME, "default", status=503
        )
        assert all(v.title == f"{NAME} · down for maintenance" for v in down)
        assert all(v.headers.get("x-robots-tag") == "noindex" for v in down)


def test_an_operator_site_and_its_screenshot_on_demand(
    env: dict[str, str], browser: SiteBrowser, timings: Timings, tmp_path: Path
) -> None:
    with site_made(env, OPERATOR_NAME, "--type", "operator", "--template", "operator") as domain:
        seen_by_visitors(
            browser, timings, domain, "operator-coming-soon", OPERATOR_NAME, "operator"
        )
        run_ok(env, "site", "enable", "--site", domain)
        seen_by_visitors(
            browser, timings, domain, "operator-live", OPERATOR_NAME, "operator", landing=True
        )

        code, out = status_with_screenshot(env, domain, tmp_path / "desk.png")
        assert code == 0, out
        phone = tmp_path / f"desk-{PHONE_WIDTH}px.png"
        assert f"1280 px: {tmp_path / 'desk.png'} (answered 200)" in out
        assert f" 390 px: {phone} (answered 200)" in out
        assert png_size(tmp_path / "desk.png")[0] == 1280
        assert png_size(phone)[0] == PHONE_WIDTH

        # A browser without pebble's root in its NSS database refuses the site: the trust
        # above came from that root, not from certificate errors being ignored.
        assert "ERR_CERT_AUTHORITY_INVALID" in refused_without_the_root(browser, domain)


def test_the_checks_see_a_broken_page(
    env: dict[str, str], browser: SiteBrowser, timings: Timings
) -> None:
    with site_made(env, NAME) as domain:
        run_ok(env, "site", "enable", "--site", domain)
        probe = write_probe_page(env, domain, NAME)
        try:
            visit = browser.visit(domain, PHONE_WIDTH, path="/probe.html")
        finally:
            probe.unlink()
        problems = "\n".join(visit.problems())
        assert "failed: stylesheet https://" in problems and "never-made.css" in problems
        # The console says it one way or the other, as Chromium's own checks happen to run:
        # "Failed to load resource: ... status of 404", or "Refused to apply style from
        # '.../never-made.css'" (the 404 page is HTML, and nosniff refuses it as a stylesheet).
        console = [line for line in problems.splitlines() if line.startswith("console: ")]
        assert any("status of 404" in line or "never-made.css" in line for line in console), console
        assert "/insecure.png" in problems  # upgraded to HTTPS on a plain-HTTP port, or not
        assert "uncaught: undefinedFunctionOfTheProbe is not defined" in problems
        assert f"wider than the screen: 2000 px at {PHONE_WIDTH} px" in problems
        assert 'text too small: <p> "fine print nobody can read" 8px' in problems
        assert "text at the screen's edge" in problems


def test_a_screenshot_that_cannot_be_taken_is_refused_on_one_line(tmp_path: Path) -> None:
    env = site_env(tmp_path / "state", tmp_path / "aeims", modules="tests.site_pipelines")
    shadow = tmp_path / "shadow" / "playwright"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named playwright")\n')
    target = tmp_path / "shot.png"
    cases = {
        "needs --site": ("site", "status", "--screenshot", str(target)),
        "does not exist; create it first": (
            *("site", "status", "--site", "x.aeims.test"),
            *("--screenshot", str(tmp_path / "missing" / "shot.png")),
        ),
        "name a .png file, or an existing folder": (
            *("site", "status", "--site", "x.aeims.test", "--screenshot", str(tmp_path / "a.jpg")),
        ),
    }
    without_chromium = {**env, "PATH": str(tmp_path / "no-bin")}
    without_playwright = {**env, "PYTHONPATH": f"{shadow.parent}:{env['PYTHONPATH']}"}
    runs = [(said, provision(env, *args)) for said, args in cases.items()]
    for said, run_env in (
        ("chromium is not installed; install it with", without_chromium),
        ("playwright cannot be imported", without_playwright),
    ):
        runs.append(
            (
                said,
                provision(
                    run_env, "site", "status", "--site", "x.aeims.test", "--screenshot", str(target)
                ),
            )
        )
    for said, done in runs:
        assert done.returncode == 2, (said, done.stdout, done.stderr)
        assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert not target.exists()
