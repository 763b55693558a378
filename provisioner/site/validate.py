"""User input to a SiteSpec: the one gate every value passes before a step may use it.

A domain, a name or a template that gets past `site_spec` is put in paths, nginx configs,
JSON files, DNS and ACME messages; so each is held to the narrowest form that works: a domain
in lowercase LDH labels (IDN in punycode), a template a plain folder name, a name printable
text that only ever reaches escaped HTML and JSON. Every refusal is one line that names the
value and says how to fix it (a PipelineError: exit 2, nothing made).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import idna

from provisioner.engine.pipeline import PipelineError
from provisioner.site.spec import SiteSpec, SiteType
from provisioner.site.templates import site_template_names

MAX_DOMAIN = 253
MAX_LABEL = 63
MAX_NAME = 100
# A label once converted: letters, digits, inner hyphens (RFC 1035 LDH, RFC 5890 A-labels).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.ASCII)
TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$", re.ASCII)
# Operator ids and usernames as AEIMS has them (op_001, jade, 0, op_test_001).
OPERATOR_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", re.ASCII)
# Characters that reorder displayed text (Trojan Source): refused even where printable.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown(value: object) -> str:
    """A value as a one-line message may quote it: repr (escapes controls), cut short."""
    text = repr(value)
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text if len(text) <= 70 else text[:67] + "..."


def _fail(field: str, value: object, reason: str, fix: str) -> PipelineError:
    return PipelineError(f"invalid {field} {shown(value)}: {shown_reason(reason)}; {fix}")


def shown_reason(reason: str) -> str:
    """A library's message, made safe for one line (it may quote the input raw)."""
    flat = " ".join(reason.split())
    return "".join(c if c.isprintable() else "?" for c in flat)[:160]


_DOMAIN_FIX = "give a registrable name like newflirts.com (no scheme, port, path or trailing dot)"


def domain(value: object) -> str:
    """The domain in its ASCII form: lowercase, IDN labels in punycode, checked label by label."""
    if not isinstance(value, str):
        raise _fail("domain", value, "not a string", _DOMAIN_FIX)
    text = value.strip()
    if not text:
        raise _fail("domain", value, "empty", _DOMAIN_FIX)
    if "*" in text:
        raise _fail("domain", value, "wildcards are not sites", _DOMAIN_FIX)
    if text.endswith((".", "\u3002", "\uff0e", "\uff61")):
        raise _fail("domain", value, "trailing dot", _DOMAIN_FIX)
    if _is_ip(text):
        raise _fail("domain", value, "an IP address, not a name", _DOMAIN_FIX)
    try:
        ascii_form = idna.encode(text, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        reason = str(exc) or "not a valid host name"
        if reason.lower().startswith("label too long"):
            reason = f"a label longer than {MAX_LABEL} characters"
        elif reason.lower().startswith("domain too long"):
            reason = f"longer than {MAX_DOMAIN} characters"
        raise _fail("domain", value, reason, _DOMAIN_FIX) from None
    ascii_form = ascii_form.lower()
    if len(ascii_form) > MAX_DOMAIN:
        raise _fail("domain", value, f"longer than {MAX_DOMAIN} characters", _DOMAIN_FIX)
    labels = ascii_form.split(".")
    if len(labels) < 2:
        raise _fail("domain", value, "a single label; a site needs a name and a TLD", _DOMAIN_FIX)
    for label in labels:
        if len(label) > MAX_LABEL:
            raise _fail("domain", value, f"a label longer than {MAX_LABEL}", _DOMAIN_FIX)
        if not _LABEL.match(label):
            reason = f"label {label!r} is not letters, digits and hyphens"
            raise _fail("domain", value, reason, _DOMAIN_FIX)
    if labels[-1].isdigit():
        raise _fail("domain", value, "the top-level label is all digits", _DOMAIN_FIX)
    if _is_ip(ascii_form):
        raise _fail("domain", value, "an IP address, not a name", _DOMAIN_FIX)
    return ascii_form


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def name(value: object) -> str:
    """The site's display name: trimmed printable text; pages and JSON escape it."""
    fix = f"give 1 to {MAX_NAME} printable characters, e.g. --name 'New Flirts'"
    if not isinstance(value, str):
        raise _fail("name", value, "not a string", fix)
    text = unicodedata.normalize("NFC", value.strip())
    if not text:
        raise _fail("name", value, "empty", fix)
    if len(text) > MAX_NAME:
        raise _fail("name", value, f"longer than {MAX_NAME} characters", fix)
    if not text.isprintable():
        raise _fail("name", value, "holds a control, format or unprintable character", fix)
    if any(c in _BIDI for c in text):
        raise _fail("name", value, "holds a bidirectional override", fix)
    return text


def template(value: object) -> str:
    """A template's folder name under templates/site/ (never a path)."""
    available = site_template_names()
    fix = f"use one of: {', '.join(available) or '(none installed)'}"
    if not isinstance(value, str) or not TEMPLATE_NAME.match(value):
        raise _fail("template", value, "not a template name", fix)
    if value not in available:
        raise _fail("template", value, "no such template", fix)
    return value


def site_type(value: object) -> SiteType:
    choices = ", ".join(t.value for t in SiteType)
    try:
        return SiteType(value)
    except ValueError:
        raise _fail("type", value, "unknown site type", f"use one of: {choices}") from None


def operators(value: object) -> tuple[str, ...] | None:
    """None (the pool's active operators), or operator ids/usernames, deduplicated in order."""
    if value is None:
        return None
    fix = "give operator ids or usernames (letters, digits, '_', '.', '-'), comma-separated"
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise _fail("operators", value, "not a list", fix)
    found: list[str] = []
    for item in value:
        if not isinstance(item, str) or not OPERATOR_REF.match(item):
            raise _fail("operator", item, "not an operator id or username", fix)
        if item not in found:
            found.append(item)
    return tuple(found)


def site_spec(params: Mapping[str, Any]) -> SiteSpec:
    """A SiteSpec from a pipeline's parameters (the CLI's options or the journal's copy).

    Keys other than domain, name, type, template and operators are left to their owners.
    """
    missing = [key for key in ("domain", "name", "type", "template") if params.get(key) is None]
    if missing:
        raise PipelineError(
            f"missing {', '.join('--' + key for key in missing)}: a site needs a domain, "
            "a name, a type and a template"
        )
    return SiteSpec(
        domain=domain(params["domain"]),
        name=name(params["name"]),
        type=site_type(params["type"]),
        template=template(params["template"]),
        operators=operators(params.get("operators")),
    )
