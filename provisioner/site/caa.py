"""Reading DNS for certificates: CAA evaluated as a CA would (RFC 8659), DNS-01 TXT seen.

Records are only read, never written, through `settings.dns_resolver` (the local stack points
it at challtestsrv, pebble's DNS; production leaves it empty for the system's resolver). pebble
checks no CAA at all, so without this a CAA set forbidding Let's Encrypt would only show up as
a failed order in production, after burning the failed-validation budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from provisioner.config import Settings

# RFC 8659 §4.1: the issuer-critical flag.
CRITICAL = 128
KNOWN_TAGS = {"issue", "issuewild", "iodef"}


class DnsLookupError(RuntimeError):
    """A DNS answer could not be had (SERVFAIL, timeout): a CA must not issue then."""


@dataclass(frozen=True)
class CaaRecord:
    flags: int
    tag: str
    value: str


def resolver(settings: Settings, timeout: float = 5.0) -> dns.resolver.Resolver:
    """The configured DNS server, or the system's when none is set."""
    if not settings.dns_resolver:
        found = dns.resolver.Resolver()
    else:
        found = dns.resolver.Resolver(configure=False)
        text = settings.dns_resolver
        host, port = text, 53
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest.lstrip(":") or 53)
        elif text.count(":") == 1:
            host, _, raw = text.partition(":")
            port = int(raw)
        found.nameservers = [host]
        found.port = port
    found.lifetime = timeout
    return found


def caa_records(res: dns.resolver.Resolver, name: str) -> list[CaaRecord]:
    """The CAA RRset at exactly `name` (CNAMEs followed by the resolver); [] when empty."""
    try:
        answer = res.resolve(name, "CAA", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        raise DnsLookupError(f"cannot read the CAA records of {name}: {exc}") from None
    if answer.rrset is None:
        return []
    return [
        CaaRecord(int(r.flags), r.tag.decode("ascii", "replace").lower(), r.value.decode())
        for r in answer.rrset
        if r.rdtype == dns.rdatatype.CAA
    ]


def relevant_caa(res: dns.resolver.Resolver, name: str) -> tuple[str, list[CaaRecord]]:
    """RFC 8659 §3: the first non-empty CAA RRset climbing from `name` towards (not to) the root."""
    current = dns.name.from_text(name)
    while len(current.labels) > 1:  # the last label is the root itself
        text = current.to_text(omit_final_dot=True)
        found = caa_records(res, text)
        if found:
            return text, found
        current = current.parent()
    return "", []


def _issuer_and_params(value: str) -> tuple[str, dict[str, str]]:
    """`letsencrypt.org; accounturi=...; validationmethods=http-01` → (issuer, params)."""
    issuer, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, val = part.strip().partition("=")
        if sep:
            params[key.strip().lower()] = val.strip()
    return issuer.strip().lower().rstrip("."), params


def caa_verdict(
    name: str,
    owner: str,
    records: list[CaaRecord],
    identities: tuple[str, ...],
    account_uri: str | None,
    method: str,
) -> str | None:
    """None when the CA may issue for `name` under these records, else the reason it may not.

    RFC 8659 §4 for a non-wildcard name (site names never are): an unknown critical tag
    forbids; no `issue` tag leaves issuance open; otherwise one `issue` must name the CA, and
    its RFC 8657 `accounturi` / `validationmethods` parameters, when present, must match.
    """
    for record in records:
        if record.flags & CRITICAL and record.tag not in KNOWN_TAGS:
            return f"CAA at {owner} has an unknown critical tag {record.tag!r}"
    issues = [r for r in records if r.tag == "issue"]
    if not issues:
        return None
    if not identities:
        return (
            f"CAA at {owner} restricts issuers, and the CA advertises no caaIdentities; "
            "set PROVISION_ACME_CAA_IDENTITIES to the CA's CAA domain (letsencrypt.org)"
        )
    wanted = {i.lower() for i in identities}
    named = []
    for record in issues:
        issuer, params = _issuer_and_params(record.value)
        named.append(issuer or ";")
        if issuer not in wanted:
            continue
        if "accounturi" in params and account_uri and params["accounturi"] != account_uri:
            continue
        methods = params.get("validationmethods")
        if methods and method not in {m.strip() for m in methods.split(",")}:
            continue
        return None
    return (
        f"CAA at {owner} allows only {', '.join(sorted(set(named)))} to issue for {name}, "
        f"not {', '.join(sorted(wanted))} (with {method}); add "
        f'`{owner}. CAA 0 issue "{sorted(wanted)[0]}"` or use that CA'
    )


def caa_problems(
    settings: Settings,
    names: tuple[str, ...],
    identities: tuple[str, ...],
    account_uri: str | None,
    method: str,
) -> list[str]:
    """Every name's CAA verdict against this CA (one line per name it forbids)."""
    res = resolver(settings)
    problems = []
    for name in names:
        try:
            owner, records = relevant_caa(res, name)
        except DnsLookupError as exc:
            problems.append(f"{exc}; a CA refuses to issue while CAA cannot be read")
            continue
        verdict = caa_verdict(name, owner, records, identities, account_uri, method)
        if verdict:
            problems.append(verdict)
    return problems


def txt_values(res: dns.resolver.Resolver, name: str) -> set[str]:
    """The TXT strings at `name` (to see a DNS-01 record before asking the CA to look)."""
    try:
        answer = res.resolve(name, "TXT", raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout):
        return set()
    if answer.rrset is None:
        return set()
    return {b"".join(r.strings).decode() for r in answer.rrset}
