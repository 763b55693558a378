"""A site as its visitors see it: Debian's headless Chromium, driven by Playwright, over
verified HTTPS, with what the page loaded, logged and looks like at a given width.

`curl` cannot tell that a stylesheet was refused or a page overflows a phone's screen; a
browser can. The browser reaches the site the way the health step does, through this host's
nginx (every name of the site mapped to 127.0.0.1, the HTTPS port of the settings), and trusts
the CA the way a browser trusts one: PROVISION_ACME_ISSUER_ROOT is put in an NSS database in a
private HOME for this browser alone (Chromium's user trust store on Linux); without it, the
browser's own roots apply. Certificate errors are never turned off. Playwright downloads no
browser here: it launches the system's `chromium` (`scripts/bootstrap.sh` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

    from provisioner.config import Settings

PHONE_WIDTH, DESKTOP_WIDTH = 390, 1280
WIDTHS = (PHONE_WIDTH, DESKTOP_WIDTH)
VIEWPORT_HEIGHT = 844
MIN_FONT_PX = 12.0  # below this, body text is not readable on a phone
EDGE_PX = 4.0  # text closer than this to the viewport's side touches the screen's edge
INSTALL_PLAYWRIGHT = "`.venv/bin/pip install -c constraints.txt playwright` (or `make setup`)"
INSTALL_BROWSER = "`apt-get install chromium libnss3-tools` (or `make setup`)"


class BrowserUnavailable(RuntimeError):
    """Chromium, Playwright or certutil is missing or would not start; says how to fix it."""


class PageUnreachable(RuntimeError):
    """The browser could not load the page (connection, TLS or timeout); says what happened."""


@dataclass
class Fetch:
    """One request the page made and how it ended."""

    url: str
    kind: str  # Playwright's resource type: document, stylesheet, script, image, ...
    status: int | None  # None: no answer (see `failure`)
    failure: str | None = None


@dataclass
class PageVisit:
    """What a visitor's browser got and showed at one width."""

    url: str
    width: int
    status: int
    headers: dict[str, str]
    title: str
    headings: list[str]  # the visible <h1> texts
    fetches: list[Fetch]
    console_errors: list[tuple[str, str]]  # (message, the URL it is about)
    colours: dict[str, dict[str, str]]  # selector -> computed color, background
    stylesheets: list[str]  # the hrefs of the stylesheets the document applied
    scroll_width: int
    small_text: list[str]
    edge_text: list[str]
    overlaps: list[str]
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        """What a visitor would notice is broken, one line each (empty: nothing)."""
        found = [
            f"console: {message}"
            for message, about in self.console_errors
            if not (about == self.url and f"status of {self.status} " in message)
        ]  # a page answering 503 on purpose (maintenance) is not a problem of the page
        for fetch in self.fetches:
            if not fetch.url.startswith("https://") and not fetch.url.startswith("data:"):
                found.append(f"not over HTTPS: {fetch.kind} {fetch.url}")
            refused = fetch.kind != "document" and fetch.status is not None and fetch.status >= 400
            if refused:
                found.append(f"answered {fetch.status}: {fetch.kind} {fetch.url}")
            elif fetch.failure is not None:
                found.append(f"failed: {fetch.kind} {fetch.url}: {fetch.failure}")
        if self.scroll_width > self.width:
            found.append(f"wider than the screen: {self.scroll_width} px at {self.width} px")
        found += [f"text too small: {text}" for text in self.small_text]
        found += [f"text at the screen's edge: {text}" for text in self.edge_text]
        found += [f"overlapping: {pair}" for pair in self.overlaps]
        return found


# Computed in the page: the colours of the themed parts, and what makes a layout unreadable.
_COLOUR_SELECTORS = (
    "body",
    ".site-header",
    ".hero",
    ".button",
    ".site-footer a",
    ".swatch.primary",
    ".swatch.secondary",
    ".swatch.accent",
)
_MEASURE_JS = """
([selectors, minFont, edge]) => {
  const width = document.documentElement.clientWidth;
  const visible = (el) => {
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    return box.width > 0 && box.height > 0 && style.visibility !== "hidden";
  };
  const label = (el) => {
    const text = (el.innerText || el.textContent || "").trim().replace(/\\s+/g, " ");
    return `<${el.tagName.toLowerCase()}> "${text.slice(0, 40)}"`;
  };
  const colours = {};
  for (const selector of selectors) {
    const el = document.querySelector(selector);
    if (!el) continue;
    const style = getComputedStyle(el);
    colours[selector] = {
      color: style.color,
      background: `${style.backgroundColor} ${style.backgroundImage}`,
    };
  }
  const smallText = [], edgeText = [];
  for (const el of document.body.querySelectorAll("*")) {
    const own = [...el.childNodes].filter((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own.length || !visible(el)) continue;
    const size = parseFloat(getComputedStyle(el).fontSize);
    if (size < minFont) smallText.push(`${label(el)} ${size}px`);
    for (const node of own) {
      const range = document.createRange();
      range.selectNodeContents(node);
      const box = range.getBoundingClientRect();
      if (box.width && (box.left < edge || box.right > width - edge)) {
        edgeText.push(`${label(el)} spans x ${Math.round(box.left)}..${Math.round(box.right)}`);
        break;
      }
    }
  }
  const targets = [...document.querySelectorAll("a[href], button, input, select, textarea")]
    .filter(visible);
  const overlaps = [];
  const boxes = targets.map((el) => [...el.getClientRects()]);
  const meet = (a, b) => a.left < b.right - 1 && b.left < a.right - 1
    && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  for (let i = 0; i < targets.length; i++) {
    for (let j = i + 1; j < targets.length; j++) {
      if (targets[i].contains(targets[j]) || targets[j].contains(targets[i])) continue;
      if (boxes[i].some((a) => boxes[j].some((b) => meet(a, b)))) {
        overlaps.push(`${label(targets[i])} and ${label(targets[j])}`);
      }
    }
  }
  const headings = [...document.querySelectorAll("h1")].filter(visible)
    .map((h) => h.innerText.trim());
  const stylesheets = [...document.styleSheets].map((s) => s.href || "(inline)");
  return {
    colours, smallText, edgeText, overlaps, headings, stylesheets,
    scrollWidth: document.documentElement.scrollWidth,
  };
}
"""


def chromium_path() -> str:
    """Debian's `chromium` (the launcher script, which sets the package's own flags)."""
    found = shutil.which("chromium")
    if found is None:
        raise BrowserUnavailable(f"chromium is not installed; install it with {INSTALL_BROWSER}")
    return found


def require_playwright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise BrowserUnavailable(
            f"playwright cannot be imported ({exc}); install it with {INSTALL_PLAYWRIGHT}"
        ) from exc


def trust_roots(home: Path, roots: Path) -> None:
    """An NSS database in `home` (where Chromium reads the user's trust store on Linux) that
    trusts every certificate in the PEM file `roots` as a CA for web sites."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certutil = shutil.which("certutil")
    if certutil is None:
        raise BrowserUnavailable(
            f"certutil is not installed (Debian's libnss3-tools); install it with {INSTALL_BROWSER}"
        )
    try:
        certificates = x509.load_pem_x509_certificates(roots.read_bytes())
    except (OSError, ValueError) as exc:
        raise BrowserUnavailable(f"cannot read the issuer root {roots}: {exc}") from exc
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True, mode=0o700)
    store = f"sql:{database}"
    _certutil([certutil, "-N", "-d", store, "--empty-password"])
    for number, certificate in enumerate(certificates):
        der = home / f"root-{number}.der"
        der.write_bytes(certificate.public_bytes(Encoding.DER))
        _certutil(
            [certutil, "-A", "-d", store, "-n", f"root-{number}", "-t", "C,,", "-i", str(der)]
        )


def _certutil(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise BrowserUnavailable(f"certutil failed: {(done.stderr or done.stdout).strip()}")


def resolver_rules(hosts: Sequence[str]) -> str:
    """Chromium's host rules: `hosts` (names or `*.zone` patterns) to this host's nginx, and
    every other name to nowhere, so nothing the page names leaves the machine."""
    rules = [f"MAP {host} 127.0.0.1" for host in hosts]
    return ", ".join([*rules, "MAP * ~NOTFOUND"])


class SiteBrowser:
    """One headless Chromium for the sites `hosts` name; `visit` loads a page at a width."""

    def __init__(self, settings: Settings, hosts: Sequence[str]) -> None:
        self.settings = settings
        self.hosts = list(hosts)
        self._stack = ExitStack()
        self._browser: Browser | None = None

    def url(self, domain: str, path: str = "/") -> str:
        port = self.settings.nginx_https_port
        return f"https://{domain}{'' if port == 443 else f':{port}'}{path}"

    def __enter__(self) -> SiteBrowser:
        require_playwright()
        executable = chromium_path()
        try:
            home = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="browser-")))
            if self.settings.acme_issuer_root is not None:
                trust_roots(home, self.settings.acme_issuer_root)
            self._browser = self._launch(executable, home)
        except BaseException:
            self._stack.close()
            raise
        return self

    def _launch(self, executable: str, home: Path) -> Browser:
        from playwright.sync_api import Error, sync_playwright

        playwright = self._stack.enter_context(sync_playwright())
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for name in ("LANG", "TMPDIR", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        try:
            return playwright.chromium.launch(
                executable_path=executable,
                args=[f"--host-resolver-rules={resolver_rules(self.hosts)}"],
                env=env,
                timeout=30_000,
            )
        except Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BrowserUnavailable(f"{executable} did not start: {first}") from exc

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
        self._browser = None

    def visit(
        self, domain: str, width: int, path: str = "/", screenshot: Path | None = None
    ) -> PageVisit:
        """Load `path` of `domain` at `width` px, measure it and, if asked, save a PNG of the
        whole page. Raises PageUnreachable when the page does not load at all."""
        from playwright.sync_api import Error

        assert self._browser is not None, "SiteBrowser is used outside its `with` block"
        url = self.url(domain, path)
        context = self._browser.new_context(
            viewport={"width": width, "height": VIEWPORT_HEIGHT}, service_workers="block"
        )
        try:
            page = context.new_page()
            ended: list[tuple[Request, str | None]] = []
            answered: dict[str, int] = {}  # url -> status, also of requests failed after
            errors: list[tuple[str, str]] = []
            page.on(
                "console",
                lambda m: (
                    errors.append((m.text, m.location.get("url", "")))
                    if m.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda exc: errors.append((f"uncaught: {exc}", url)))
            page.on("response", lambda r: answered.__setitem__(r.url, r.status))
            page.on("requestfinished", lambda r: ended.append((r, None)))
            page.on("requestfailed", lambda r: ended.append((r, r.failure)))
            timeout = min(self.settings.health_timeout, 60) * 1000
            try:
                response = page.goto(url, wait_until="load", timeout=timeout)
            except Error as exc:
                said = str(exc).strip().splitlines()[0].removeprefix("Page.goto: ")
                raise PageUnreachable(f"{url}: {said.removesuffix(f' at {url}')}") from exc
            if response is None:
                raise PageUnreachable(f"{url}: no answer")
            measured = _measure(page)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            return PageVisit(
                url=url,
                width=width,
                status=response.status,
                headers=response.all_headers(),
                title=page.title(),
                headings=measured["headings"],
                fetches=[
                    Fetch(r.url, r.resource_type, answered.get(r.url), failure)
                    for r, failure in ended
                ],
                console_errors=errors,
                colours=measured["colours"],
                stylesheets=measured["stylesheets"],
                scroll_width=measured["scrollWidth"],
                small_text=measured["smallText"],
                edge_text=measured["edgeText"],
                overlaps=measured["overlaps"],
                screenshot=screenshot,
            )
        finally:
            context.close()


def _measure(page: Page) -> dict[str, Any]:
    measured: dict[str, Any] = page.evaluate(
        _MEASURE_JS, [list(_COLOUR_SELECTORS), MIN_FONT_PX, EDGE_PX]
    )
    return measured


@dataclass
class Shot:
    """One screenshot taken for an operator, and what looked wrong on it."""

    path: Path
    width: int
    status: int
    problems: list[str] = field(default_factory=list)


def screenshot_paths(target: Path, domain: str) -> dict[int, Path]:
    """Where `site status --screenshot` writes: `target` itself for the desktop width and
    `<stem>-390px.png` beside it for a phone; in an existing folder, `<domain>-<width>px.png`."""
    if target.is_dir():
        return {width: target / f"{domain}-{width}px.png" for width in WIDTHS}
    return {
        DESKTOP_WIDTH: target,
        PHONE_WIDTH: target.with_name(f"{target.stem}-{PHONE_WIDTH}px{target.suffix}"),
    }


def check_target(target: Path) -> str | None:
    """What is wrong with a screenshot path, before anything runs (None: nothing)."""
    if target.is_dir():
        return None if os.access(target, os.W_OK) else f"cannot write into the folder {target}"
    if target.suffix.lower() != ".png":
        return f"--screenshot {target}: name a .png file, or an existing folder"
    folder = target.parent
    if not folder.is_dir():
        return f"--screenshot {target}: the folder {folder} does not exist; create it first"
    if not os.access(folder, os.W_OK):
        return f"--screenshot {target}: cannot write into the folder {folder}"
    return None


def check_browser() -> str | None:
    """What is missing for a screenshot (None: nothing), before anything runs."""
    try:
        require_playwright()
        chromium_path()
    except BrowserUnavailable as exc:
        return str(exc)
    return None


@contextmanager
def site_browser(settings: Settings, domain: str) -> Iterator[SiteBrowser]:
    """A browser that reaches `domain` and www.`domain` through this host's nginx."""
    with SiteBrowser(settings, [domain, f"www.{domain}"]) as browser:
        yield browser


def take_screenshots(settings: Settings, domain: str, target: Path) -> list[Shot]:
    """The site's landing page at a phone's and a desktop's width, as PNGs (see
    `screenshot_paths`), with what a visitor would notice is wrong on each."""
    shots: list[Shot] = []
    with site_browser(settings, domain) as browser:
        for width, path in sorted(screenshot_paths(target, domain).items()):
            visit = browser.visit(domain, width, screenshot=path)
            shots.append(Shot(path, width, visit.status, visit.problems()))
    return shots
