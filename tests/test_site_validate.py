"""Site input validation: nothing accepted can break out of a config, a command line or a path."""

from __future__ import annotations

import json
import shlex
import string
from html.parser import HTMLParser

import idna
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from provisioner.engine.errors import UsageError
from provisioner.engine.pipeline import PipelineError
from provisioner.site import validate
from provisioner.site.spec import SiteType
from provisioner.site.templates import render_site

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# What must never be in a domain or template once accepted: it would end an nginx string or
# directive, split a shell word, end a JSON string, or climb out of a path.
DANGEROUS = ["/", "\\", "..", "\x00", "\n", "\r", "\t", " ", '"', "'", "`", ";", "{", "}", "$"]
LDH = set(string.ascii_lowercase + string.digits + "-.")


def base(**override: object) -> dict[str, object]:
    params: dict[str, object] = {
        "domain": "newflirts.com",
        "name": "New Flirts",
        "type": "customer",
        "template": "default",
    }
    params.update(override)
    return params


def refused(**override: object) -> str:
    with pytest.raises(PipelineError) as caught:
        validate.site_spec(base(**override))
    message = str(caught.value)
    assert isinstance(caught.value, UsageError)  # exit 2
    assert "\n" not in message and "\r" not in message and message.isprintable()
    return message


def test_a_good_site() -> None:
    spec = validate.site_spec(base(operators="jade, op_001,jade"))
    assert spec.domain == "newflirts.com" and spec.site_id == "newflirts_com"
    assert spec.type is SiteType.CUSTOMER and spec.operators == ("jade", "op_001")
    assert validate.site_spec(base()).operators is None


@pytest.mark.parametrize(
    ("given_domain", "wanted"),
    [
        ("NewFlirts.COM", "newflirts.com"),
        ("  newflirts.com ", "newflirts.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("ｅｘａｍｐｌｅ．ｃｏｍ", "example.com"),
        ("a-b.com", "a-b.com"),
        ("a.b.com", "a.b.com"),
        ("x" * 63 + ".com", "x" * 63 + ".com"),
    ],
)
def test_domains_accepted_in_ascii_form(given_domain: str, wanted: str) -> None:
    assert validate.domain(given_domain) == wanted


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("*.example.com", "wildcard"),
        ("example.com.", "trailing dot"),
        ("192.168.1.1", "IP address"),
        ("::1", "IP address"),
        ("[2001:db8::1]", "IP address"),
        ("localhost", "single label"),
        ("example.123", "all digits"),
        ("x" * 64 + ".com", "63"),
        (("a" * 62 + ".") * 4 + "com", "253"),
        ("a_b.com", "U+005F"),
        ("-a.com", "hyphen"),
        ("a..com", "Empty Label"),
        ("http://example.com", "not"),
        ("example.com/x", "not"),
        ("example.com:8080", "not"),
        ("exa mple.com", "not"),
        ('ex"ample.com', "not"),
        ("example.com\nserver_name evil", "not"),
        ("ab--cd.com", "hyphens"),
        ("xn--zz.com", "xn--zz"),
        (42, "not a string"),
    ],
)
def test_domains_refused_with_one_line(bad: object, reason: str) -> None:
    message = refused(domain=bad)
    assert message.startswith("invalid domain ") and reason.lower() in message.lower()
    assert "newflirts.com" in message  # says what a good one looks like


@FAST
@given(st.text(max_size=80))
@example("a.b\u2028c.com")
@example("ex\u202eample.com")
def test_no_accepted_domain_can_break_out(text: str) -> None:
    try:
        found = validate.domain(text)
    except PipelineError as exc:
        assert "\n" not in str(exc) and str(exc).isprintable()
        return
    assert set(found) <= LDH and not any(bad in found for bad in DANGEROUS)
    assert len(found) <= 253 and all(1 <= len(label) <= 63 for label in found.split("."))
    assert shlex.quote(found) == found  # a plain shell word
    assert json.dumps(found) == f'"{found}"'  # a plain JSON string
    assert validate.domain(found) == found  # idempotent


@FAST
@given(
    st.lists(
        st.text(st.characters(categories=["Ll", "Lo", "Nd"]), min_size=1, max_size=12),
        min_size=2,
        max_size=4,
    )
)
def test_idn_round_trips(labels: list[str]) -> None:
    text = ".".join(labels)
    try:
        ascii_form = validate.domain(text)
    except PipelineError:
        return
    unicode_form = idna.decode(ascii_form)
    assert validate.domain(unicode_form) == ascii_form
    assert idna.encode(unicode_form).decode() == ascii_form


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "x" * 101, "New\nFlirts", "a\x00b", "tab\there", "evil\u202egnp.exe", "a\u2028b"],
)
def test_names_refused(bad: str) -> None:
    assert refused(name=bad).startswith("invalid name ")


@FAST
@given(st.text(max_size=120))
@example("</title><script>alert(1)</script> & \"quotes\" 'x' {{ 7*7 }} ${x}; rm -rf /")
def test_an_accepted_name_is_escaped_wherever_it_goes(text: str) -> None:
    try:
        name = validate.name(text)
    except PipelineError as exc:
        assert "\n" not in str(exc) and str(exc).isprintable()
        return
    assert name == name.strip() and 1 <= len(name) <= 100 and name.isprintable()
    assert not any(c in name for c in "\x00\n\r\u202e\u2066")
    spec = validate.site_spec(base(name=name))
    files = render_site(spec)
    assert json.loads(files["config.json"])["site_name"] == name
    plain = render_site(validate.site_spec(base(name="x")))
    for page in ("index.html", "coming-soon.html"):
        title, tags = page_structure(files[page])
        assert title.removesuffix(" \u00b7 coming soon") == name  # text, shown as given
        assert tags == page_structure(plain[page])[1]  # and it added no element


class Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def page_structure(html: str) -> tuple[str, list[str]]:
    parser = Structure()
    parser.feed(html)
    return parser.title, parser.tags


@pytest.mark.parametrize(
    "bad", ["../default", "default/", "/etc", "Default", "nope", "", ".hidden", "a b", 7]
)
def test_templates_refused(bad: object) -> None:
    message = refused(template=bad)
    assert "default" in message and "operator" in message  # names the ones there are


@FAST
@given(st.text(max_size=50))
def test_no_accepted_template_is_a_path(text: str) -> None:
    try:
        found = validate.template(text)
    except PipelineError:
        return
    assert found in ("default", "operator")


def test_type_and_operators_refused() -> None:
    assert "customer, operator" in refused(type="admin")
    assert refused(operators=["jade", "../x"]).startswith("invalid operator ")
    assert refused(operators=["a b"]).startswith("invalid operator ")
    assert refused(operators=7).startswith("invalid operators ")
    assert refused(domain=None).startswith("missing --domain")
    assert refused(template=None).startswith("missing --template")
