"""Where the templates live, and a site template rendered into its files.

The templates are in the repository's top-level `templates/` folder (`site/<name>/` for site
folders, `nginx/` for vhosts). An installed wheel carries a copy as `provisioner/_templates`
(setup.py's build step puts it there), which wins when present; a checkout uses the folder
itself, so an edit shows at once.

A site template is a folder: `template.toml` holds the defaults a site starts with (its theme
palette, features, categories, billing: see templates/README.md), files whose names start with
`_` are partials (layouts), and every other file is rendered to the same relative path with a
trailing `.j2` dropped: ~15 files make a site.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from provisioner.site.spec import SiteSpec

METADATA = "template.toml"
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$", re.ASCII)
_FEATURE = re.compile(r"^[a-z][a-z0-9_]{0,40}$", re.ASCII)


class TemplateError(RuntimeError):
    """A template folder is missing or its metadata is malformed (an installation problem)."""


def templates_root() -> Path:
    """The top-level templates folder: the wheel's bundled copy, else the checkout's."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "_templates"
    if (bundled / "site").is_dir():
        return bundled
    return package.parent / "templates"


def site_template_names() -> list[str]:
    """The site templates installed: folders of templates/site/ holding a template.toml."""
    folder = templates_root() / "site"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / METADATA).is_file())


@dataclass(frozen=True)
class SiteTemplate:
    """A site template's folder and the defaults it gives a new site."""

    name: str
    folder: Path
    description: str
    theme: dict[str, str]
    features: dict[str, bool]
    categories: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    billing: dict[str, Any] = field(default_factory=dict)

    @property
    def aeims_theme(self) -> dict[str, str]:
        """The palette in sites.json's own keys (primary_color, ...)."""
        return {f"{key}_color": value for key, value in self.theme.items()}

    def sources(self) -> list[str]:
        """The files to render, relative to the folder (partials and metadata left out)."""
        found = []
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder).as_posix()
            if path.is_file() and rel != METADATA and not path.name.startswith("_"):
                found.append(rel)
        return found


@lru_cache(maxsize=16)
def load_site_template(name: str) -> SiteTemplate:
    """The template `name` (already validated as a folder name) and its checked defaults."""
    folder = templates_root() / "site" / name
    try:
        meta = tomllib.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError(f"cannot read {folder / METADATA}: {exc}") from None
    theme = meta.get("theme", {})
    if set(theme) != {"primary", "secondary", "accent"} or not all(
        isinstance(v, str) and _COLOUR.match(v) for v in theme.values()
    ):
        raise TemplateError(
            f"{folder / METADATA}: [theme] needs primary, secondary and accent as #rrggbb"
        )
    features = meta.get("features", {})
    if not all(_FEATURE.match(k) and isinstance(v, bool) for k, v in features.items()):
        raise TemplateError(f"{folder / METADATA}: [features] maps snake_case names to booleans")
    return SiteTemplate(
        name=name,
        folder=folder,
        description=str(meta.get("description", "")),
        theme=dict(theme),
        features=dict(features),
        categories=[str(c) for c in meta.get("categories", [])],
        services=[str(s) for s in meta.get("services", [])],
        billing=dict(meta.get("billing", {})),
    )


@lru_cache(maxsize=16)
def _environment(folder: Path) -> Environment:
    # Autoescape for HTML (the site's name is user text); JSON templates use |tojson, CSS gets
    # only validated colours, so nothing unescaped reaches a file.
    return Environment(
        loader=FileSystemLoader(folder),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["html", "html.j2", "xml", "xml.j2"], default=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def output_name(source: str) -> str:
    return source.removesuffix(".j2")


def site_variables(spec: SiteSpec, tpl: SiteTemplate) -> dict[str, Any]:
    """What every template of a site sees: no clock, no randomness, so renders are repeatable."""
    return {
        "site": {
            "domain": spec.domain,
            "site_id": spec.site_id,
            "name": spec.name,
            "type": str(spec.type),
            "template": spec.template,
            "description": tpl.description,
        },
        "theme": tpl.theme,
        "features": tpl.features,
        "enabled_features": [k for k, on in tpl.features.items() if on],
        "categories": tpl.categories,
        "services": tpl.services,
        "billing": tpl.billing,
    }


def render_site(spec: SiteSpec) -> dict[str, str]:
    """Every file of the site's folder: relative path -> content."""
    tpl = load_site_template(spec.template)
    env = _environment(tpl.folder)
    variables = site_variables(spec, tpl)
    rendered: dict[str, str] = {}
    for source in tpl.sources():
        if source.endswith(".j2"):
            rendered[output_name(source)] = env.get_template(source).render(**variables)
        else:
            rendered[source] = (tpl.folder / source).read_text(encoding="utf-8")
    return rendered
