"""What the browser tests share: a headless Chromium on the local stack that trusts pebble's
root through its own NSS database, the screenshots folder, and the checks a visitor's eyes make
of a page (its name, the theme's colours, HTTPS only, no console error, the security headers,
a layout readable on a phone and a desktop)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from provisioner.config import Settings, load_settings
from provisioner.site.screenshot import WIDTHS, PageVisit, SiteBrowser
from provisioner.site.templates import load_site_template
from tests.site_e2e_support import REPO, provision

SCREENSHOTS = REPO / "var" / "screenshots"
ZONE = "aeims.test"  # the zone tests.site_support.unique_domain makes sites in
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000",
    "x-content-type-options": "nosniff",
    "x-frame-options": "SAMEORIGIN",
    "referrer-policy": "strict-origin-when-cross-origin",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rgb(colour: str) -> str:
    """`#rrggbb` as a computed style writes it."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def palette(template: str) -> dict[str, str]:
    """The template's theme (template.toml), as computed styles write the colours."""
    return {role: rgb(colour) for role, colour in load_site_template(template).theme.items()}


def browser_settings(env: dict[str, str]) -> Settings:
    return load_settings(env=env)


@dataclass
class Timings:
    """How long the browser took: its start and every page visit, in seconds."""

    launch: float = 0.0
    visits: list[float] = field(default_factory=list)

    def summary(self) -> str:
        total = self.launch + sum(self.visits)
        return (
            f"browser start {self.launch:.2f} s, {len(self.visits)} page visits "
            f"{sum(self.visits):.2f} s, total {total:.2f} s"
        )


@contextmanager
def stack_browser(settings: Settings, timings: Timings) -> Iterator[SiteBrowser]:
    """One Chromium for every site of the test zone, through the stack's nginx."""
    started = time.monotonic()
    with SiteBrowser(settings, [f"*.{ZONE}"]) as browser:
        timings.launch += time.monotonic() - started
        yield browser


def seen_by_visitors(
    browser: SiteBrowser,
    timings: Timings,
    domain: str,
    label: str,
    name: str,
    template: str,
    status: int = 200,
    landing: bool = False,
) -> list[PageVisit]:
    """The page at a phone's and a desktop's width, screenshots under var/screenshots/ named
    `<label>-<width>px.png`; every way it would look broken to a visitor is asserted away."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    visits = []
    for width in WIDTHS:
        started = time.monotonic()
        visit = browser.visit(domain, width, screenshot=SCREENSHOTS / f"{label}-{width}px.png")
        timings.visits.append(time.monotonic() - started)
        wrong = what_looks_wrong(visit, name, palette(template), status, landing)
        assert not wrong, f"{label} at {width} px ({visit.url}):\n  " + "\n  ".join(wrong)
        visits.append(visit)
    return visits


def what_looks_wrong(
    visit: PageVisit, name: str, colours: dict[str, str], status: int, landing: bool
) -> list[str]:
    """Everything on `visit` a visitor would see as broken (empty: nothing)."""
    wrong = list(visit.problems())
    if visit.status != status:
        wrong.append(f"answered {visit.status}, not {status}")
    if name not in visit.headings:
        wrong.append(f"no visible heading with the site's name {name!r}: {visit.headings}")
    for header, value in SECURITY_HEADERS.items():
        if visit.headers.get(header) != value:
            wrong.append(f"header {header}: {visit.headers.get(header)!r}, not {value!r}")
    wrong += _theme_not_applied(visit, colours, landing)
    stylesheet = urljoin(visit.url, "/assets/css/theme.css")
    if visit.stylesheets != [stylesheet]:
        wrong.append(f"stylesheets applied: {visit.stylesheets}, not [{stylesheet}]")
    loaded = {f.url: f.status for f in visit.fetches if f.kind == "stylesheet"}
    if loaded.get(stylesheet) != 200:
        wrong.append(f"the theme's stylesheet answered {loaded.get(stylesheet)}")
    document = [f for f in visit.fetches if f.kind == "document"]
    if [f.status for f in document] != [status]:
        wrong.append(f"documents loaded: {[(f.url, f.status) for f in document]}")
    return wrong


def _theme_not_applied(visit: PageVisit, colours: dict[str, str], landing: bool) -> list[str]:
    """The palette seen in the computed styles: the hero's gradient runs from the primary to the
    secondary colour; on a landing page the header is the secondary colour, the call to action
    the accent, and the swatches show all three."""
    wanted = {".hero": [colours["primary"], colours["secondary"]]}
    if landing:
        wanted |= {
            ".site-header": [colours["secondary"]],
            ".button": [colours["accent"]],
            ".swatch.primary": [colours["primary"]],
            ".swatch.secondary": [colours["secondary"]],
            ".swatch.accent": [colours["accent"]],
        }
    wrong = []
    for selector, expected in wanted.items():
        background = visit.colours.get(selector, {}).get("background", "(no such element)")
        missing = [colour for colour in expected if colour not in background]
        if missing:
            wrong.append(f"{selector} background {background!r} lacks {missing}")
    return wrong


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (IHDR), after checking it is one."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


PROBE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>probe</title>
<link rel="stylesheet" href="/assets/css/theme.css">
<link rel="stylesheet" href="/assets/css/never-made.css">
</head><body>
<h1>{name}</h1>
<div style="width: 2000px">far too wide for a phone</div>
<p style="font-size: 8px">fine print nobody can read</p>
<img alt="" src="http://{host}/insecure.png">
<script>undefinedFunctionOfTheProbe();</script>
</body></html>
"""


def write_probe_page(env: dict[str, str], domain: str, name: str) -> Path:
    """A page served by the live site with every defect the checks must see: a stylesheet that
    is not there, a plain-HTTP image, a box wider than a phone, tiny text, a script error."""
    page = Path(env["PROVISION_SITES_ROOT"]) / domain / "probe.html"
    host = f"{domain}:{env['PROVISION_NGINX_HTTP_PORT']}"
    page.write_text(PROBE_PAGE.format(name=name, host=host))
    page.chmod(0o644)
    return page


def status_with_screenshot(env: dict[str, str], site: str, target: Path) -> tuple[int, str]:
    """`provision site status --site SITE --screenshot TARGET`: exit code and all it printed."""
    done = provision(env, "site", "status", "--site", site, "--screenshot", str(target))
    return done.returncode, done.stdout + done.stderr
