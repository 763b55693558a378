"""ACME with certbot's `acme` library, as a careful client does it in 2026.

One account per directory, its key made once (0600) and its URL kept; the profile named when
the CA offers profiles; challenges answered through a pluggable answerer (HTTP-01 into nginx's
webroot, DNS-01 through a DNS provider); authorizations and finalization polled at a short
interval instead of the library's fixed one-second sleeps; ARI (RFC 9773) read where offered.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import josepy as jose
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.config import Settings
from provisioner.fsutil import file_lock, private_dir, write_atomically
from provisioner.site import caa

USER_AGENT = "provision (AEIMS site onboarding)"
POLL_FIRST, POLL_MAX = 0.05, 1.0


class AcmeError(RuntimeError):
    """The CA refused, or a challenge could not be met; the message says what and why."""


class ValidationFailed(AcmeError):
    """The CA tried the challenge and failed: it counts against the failed-validation limit."""

    def __init__(self, names: list[str], detail: str) -> None:
        super().__init__(detail)
        self.names = names


def _verify(settings: Settings) -> bool | str:
    return str(settings.acme_ca_bundle) if settings.acme_ca_bundle else True


def fetch_directory(settings: Settings) -> messages.Directory:
    """The CA's directory (no account needed): endpoints, profiles, caaIdentities, ARI."""
    net = client.ClientNetwork(None, verify_ssl=_verify(settings), user_agent=USER_AGENT)
    try:
        return client.ClientV2.get_directory(settings.acme_directory, net)
    except Exception as exc:
        raise AcmeError(
            f"the ACME directory {settings.acme_directory} does not answer ({exc}); check "
            "PROVISION_ACME_DIRECTORY and PROVISION_ACME_CA_BUNDLE"
        ) from None


def requested_profile(directory: messages.Directory, wanted: str) -> str | None:
    """The profile to name in orders: `wanted` when the CA offers profiles, None when it
    offers none or `wanted` is empty (the CA's default); a CA that offers others refuses
    clearly instead of picking one for us."""
    offered = directory.meta.profiles or {}
    if not offered or not wanted:
        return None
    if wanted not in offered:
        raise AcmeError(
            f"the CA offers the profiles {', '.join(sorted(offered))}, not {wanted!r}; set "
            "PROVISION_ACME_PROFILE to one of them"
        )
    return wanted


def caa_identities(settings: Settings, directory: messages.Directory) -> tuple[str, ...]:
    return settings.acme_caa_identities or tuple(directory.meta.caa_identities or ())


def account_folder(settings: Settings) -> Path:
    """One account per directory URL, as certbot keeps them (accounts/<host>/<digest>)."""
    digest = hashlib.sha256(settings.acme_directory.encode()).hexdigest()[:16]
    host = urlsplit(settings.acme_directory).hostname or "acme"
    return settings.cert_dir / "accounts" / f"{host}-{digest}"


def known_account_uri(settings: Settings) -> str | None:
    try:
        return json.loads((account_folder(settings) / "regr.json").read_text())["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class Session:
    """A client bound to this host's account on the configured CA."""

    acme: client.ClientV2
    key: jose.JWKEC
    settings: Settings

    @property
    def account_uri(self) -> str:
        return str(self.acme.net.account.uri) if self.acme.net.account else ""

    def register(self) -> None:
        """Register the key (or find its existing account) and keep the account URL."""
        email = self.settings.acme_email or None
        new = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
        try:
            regr = self.acme.new_account(new)
        except errors.ConflictError as exc:  # the key already has an account: its URL
            regr = messages.RegistrationResource(uri=str(exc), body=messages.Registration())
            self.acme.net.account = regr
        write_atomically(
            account_folder(self.settings) / "regr.json",
            json.dumps({"uri": regr.uri, "directory": self.settings.acme_directory}) + "\n",
            0o600,
        )


def open_session(settings: Settings, directory: messages.Directory) -> Session:
    """This host's account: its key made once (0600, folder 0700), registered once."""
    folder = private_dir(account_folder(settings))
    with file_lock(folder / ".lock"):
        key_file = folder / "private_key.json"
        if key_file.exists():
            key = jose.JWKEC.json_loads(key_file.read_text())
        else:
            key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
            write_atomically(key_file, key.json_dumps(), 0o600)
        net = client.ClientNetwork(
            key, alg=jose.ES256, verify_ssl=_verify(settings), user_agent=USER_AGENT
        )
        session = Session(client.ClientV2(directory, net), key, settings)
        uri = known_account_uri(settings)
        if uri:
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        else:
            session.register()
    return session


# ------------------------------------------------------------------------------ challenges


class Answerer(Protocol):
    """Puts a challenge's answer where the CA will look, and takes it away afterwards."""

    kind: type[challenges.Challenge]

    def present(self, name: str, chall: messages.ChallengeBody, key: jose.JWK) -> None: ...

    def cleanup(self) -> None: ...


@dataclass
class Http01Webroot:
    """HTTP-01 through nginx: the answer is a file under `<webroot>/.well-known/acme-challenge`."""

    webroot: Path
    kind: type[challenges.Challenge] = challenges.HTTP01
    written: list[Path] = field(default_factory=list)

    def present(self, name: str, chall: messages.ChallengeBody, key: jose.JWK) -> None:
        _response, validation = chall.response_and_validation(key)
        path = self.webroot / chall.chall.path.lstrip("/")
        _write_world_readable(path, validation)
        self.written.append(path)

    def cleanup(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()


def _write_world_readable(path: Path, content: str) -> None:
    """nginx's workers run as nobody: the folders 0755, the file 0644, whatever the umask."""
    for folder in reversed([path.parent, *path.parent.parents][:2]):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    write_atomically(path, content, 0o644)


class DnsProvider(Protocol):
    """Where DNS-01 TXT records are set: challtestsrv in the stack, Route53 in production."""

    def set_txt(self, fqdn: str, value: str) -> None: ...

    def clear_txt(self, fqdn: str) -> None: ...


@dataclass
class ChallTestSrvDns:
    """pebble's DNS (pebble-challtestsrv), through its management API."""

    url: str

    def _post(self, path: str, body: dict[str, str]) -> None:
        answer = httpx.post(f"{self.url}{path}", json=body, timeout=5.0)
        if answer.status_code != 200:
            raise AcmeError(f"challtestsrv {path} answered {answer.status_code}")

    def set_txt(self, fqdn: str, value: str) -> None:
        self._post("/set-txt", {"host": f"{fqdn}.", "value": value})

    def clear_txt(self, fqdn: str) -> None:
        self._post("/clear-txt", {"host": f"{fqdn}."})


@dataclass
class Dns01:
    """DNS-01: a TXT record at `_acme-challenge.<name>`, seen through the resolver first."""

    provider: DnsProvider
    settings: Settings
    kind: type[challenges.Challenge] = challenges.DNS01
    timeout: float = 60.0
    written: list[str] = field(default_factory=list)

    def present(self, name: str, chall: messages.ChallengeBody, key: jose.JWK) -> None:
        fqdn = chall.chall.validation_domain_name(name)
        value = chall.chall.validation(key)
        self.provider.set_txt(fqdn, value)
        self.written.append(fqdn)
        res = caa.resolver(self.settings)
        deadline = time.monotonic() + self.timeout
        while value not in caa.txt_values(res, fqdn):
            if time.monotonic() > deadline:
                raise AcmeError(f"the TXT record {fqdn} is not visible after {self.timeout:g} s")
            time.sleep(0.2)

    def cleanup(self) -> None:
        for fqdn in self.written:
            self.provider.clear_txt(fqdn)
        self.written.clear()


def answerer_for(settings: Settings) -> Answerer:
    """HTTP-01 through the webroot; DNS-01 through pebble's DNS in the local stack (its URL
    set), else through Route53 (PROVISION_DNS_PROVIDER=route53, the AWS credential chain)."""
    if settings.acme_challenge == "dns-01":
        if settings.challtestsrv_url:
            return Dns01(ChallTestSrvDns(settings.challtestsrv_url), settings)
        if settings.dns_provider == "route53":
            from provisioner.site.route53_txt import Route53Txt, route53_client

            return Dns01(Route53Txt(route53_client(settings)), settings)
        raise AcmeError(
            "DNS-01 needs a DNS provider for TXT records: set PROVISION_DNS_PROVIDER=route53 "
            "(with AWS credentials), or use PROVISION_ACME_CHALLENGE=http-01"
        )
    return Http01Webroot(settings.acme_webroot)


def http01_self_probe(settings: Settings, names: tuple[str, ...]) -> str | None:
    """A random token put in the webroot and fetched through nginx with each name's Host, so a
    site that cannot answer HTTP-01 fails here, before it burns the CA's failed-validation
    limit. None when every name answers with the token."""
    token = secrets.token_urlsafe(24)
    path = settings.acme_webroot / ".well-known" / "acme-challenge" / token
    url = f"http://127.0.0.1:{settings.nginx_http_port}/.well-known/acme-challenge/{token}"
    _write_world_readable(path, token)
    try:
        with httpx.Client(timeout=5.0, trust_env=False, follow_redirects=False) as http:
            for name in names:
                try:
                    answer = http.get(url, headers={"Host": name})
                except httpx.HTTPError as exc:
                    return f"HTTP-01 self-probe for {name}: {url} does not answer ({exc})"
                if answer.status_code != 200 or answer.text.strip() != token:
                    first = answer.text.strip().splitlines()[0][:80] if answer.text.strip() else ""
                    return (
                        f"HTTP-01 self-probe for {name}: nginx answered {answer.status_code} "
                        f"{first!r} instead of the token put in {settings.acme_webroot}; make "
                        "its vhost serve /.well-known/acme-challenge/ from that folder"
                    )
    finally:
        path.unlink(missing_ok=True)
    return None


# ------------------------------------------------------------------------------ issuance


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# Errors a CA answers an order's `replaces` with when it will not link the two certificates.
REPLACES_REFUSED = ("alreadyReplaced", "malformed", "conflict")


class ReplacingOrder(messages.NewOrder):
    """A newOrder payload with RFC 9773's `replaces` (the ARI id of the certificate this order
    renews), which Let's Encrypt needs to exempt a renewal from its rate limits; the `acme`
    library (5.x) has no such field."""

    replaces: str = jose.field("replaces", omitempty=True)


def new_order(
    acme: client.ClientV2, csr_pem: bytes, profile: str | None, replaces: str | None
) -> messages.OrderResource:
    """`ClientV2.new_order`, with `replaces` in the payload when given."""
    if not replaces:
        return acme.new_order(csr_pem, profile=profile)
    csr = x509.load_pem_x509_csr(csr_pem)
    dns_names, _ = acme_crypto.get_identifiers_from_x509(csr.subject, csr.extensions)
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
    payload = ReplacingOrder(identifiers=identifiers, profile=profile or "", replaces=replaces)
    response = acme._post(acme.directory["newOrder"], payload)
    body = messages.Order.from_json(response.json())
    authorizations = [
        acme._authzr_from_response(acme._post_as_get(url), uri=url) for url in body.authorizations
    ]
    return messages.OrderResource(
        body=body,
        uri=response.headers.get("Location"),
        authorizations=authorizations,
        csr_pem=csr_pem,
    )


def _poll(fetch: Callable[[], Any], done: Callable[[Any], bool], deadline: float) -> Any:
    """Poll at 50 ms, backing off to 1 s, until `done` or the deadline (then AcmeError)."""
    pause = POLL_FIRST
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AcmeError("the CA did not finish in time")
        time.sleep(pause)
        pause = min(POLL_MAX, pause * 2)


def _problem(authz: messages.AuthorizationResource) -> str:
    errors_seen = [str(c.error.detail or c.error.typ) for c in authz.body.challenges if c.error]
    return "; ".join(errors_seen) or str(authz.body.status)


@dataclass(frozen=True)
class Issued:
    """What an issuance gave: the fullchain PEM, the order's URL, and what became of the
    order's `replaces` (None: none was sent; "accepted"; or "refused: ..." and the order was
    sent again without it)."""

    fullchain: str
    order_url: str | None
    replaces_outcome: str | None = None


def _refusal(exc: Exception) -> str | None:
    """Why the CA would not take an order's `replaces` (a 409, `alreadyReplaced`, a `malformed`
    ARI id of another CA's certificate), or None when the refusal is about something else."""
    if isinstance(exc, errors.ConflictError):
        return "409 conflict (the certificate was already replaced)"
    if isinstance(exc, messages.Error) and exc.code in REPLACES_REFUSED:
        return f"{exc.code}: {exc.detail or exc.description or exc.typ}"
    return None


def _order(
    session: Session, csr: bytes, profile: str | None, replaces: str | None
) -> tuple[messages.OrderResource, str | None]:
    """The new order, and the `replaces` outcome: refused, it is sent once more without it
    (a plain order still renews, only without the CA's rate-limit exemption)."""
    acme = session.acme
    for attempt in range(2):
        try:
            order = new_order(acme, csr, profile, replaces)
        except (messages.Error, errors.ConflictError) as exc:
            refused = _refusal(exc) if replaces else None
            if refused is not None:
                return new_order(acme, csr, profile, None), f"refused: {refused}"
            if (
                isinstance(exc, messages.Error)
                and exc.code == "accountDoesNotExist"
                and not attempt
            ):
                session.register()  # the CA forgot us (pebble restarted): register again
                continue
            raise AcmeError(f"the CA refused the order: {_detail(exc)}") from None
        return order, "accepted" if replaces else None
    raise AcmeError("the CA refused the order: the account it forgot could not be registered")


def _detail(exc: Exception) -> str:
    if isinstance(exc, messages.Error):
        return str(exc.detail or exc)
    return f"{type(exc).__name__} {exc}".strip()


def issue(
    session: Session,
    names: tuple[str, ...],
    key_pem: bytes,
    answerer: Answerer,
    profile: str | None,
    timeout: float = 90.0,
    replaces: str | None = None,
) -> Issued:
    """Order (naming the certificate it `replaces`, RFC 9773), answer every pending
    authorization, finalize."""
    deadline = time.monotonic() + timeout
    acme = session.acme
    csr = acme_crypto.make_csr(key_pem, list(names))
    try:
        order, replaces_outcome = _order(session, csr, profile, replaces)
    except (messages.Error, errors.ConflictError) as exc:  # the retry without `replaces`
        raise AcmeError(f"the CA refused the order: {_detail(exc)}") from None
    try:
        pending = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            chall = next(
                (c for c in authz.body.challenges if isinstance(c.chall, answerer.kind)), None
            )
            if chall is None:
                raise AcmeError(f"the CA offers no {answerer.kind.typ} challenge")
            answerer.present(authz.body.identifier.value, chall, session.key)
            pending.append((authz, chall))
        for _, chall in pending:
            acme.answer_challenge(chall, chall.response(session.key))
        failed: list[str] = []
        details: list[str] = []
        for authz, _ in pending:
            final = _poll(
                lambda a=authz: acme.poll(a)[0],
                lambda a: a.body.status != messages.STATUS_PENDING,
                deadline,
            )
            if final.body.status != messages.STATUS_VALID:
                failed.append(final.body.identifier.value)
                details.append(f"{final.body.identifier.value}: {_problem(final)}")
        if failed:
            raise ValidationFailed(failed, "the CA could not validate " + "; ".join(details))
    finally:
        answerer.cleanup()
    fullchain = _finalize(acme, order, deadline)
    return Issued(fullchain, order.uri, replaces_outcome)


def _finalize(acme: client.ClientV2, order: messages.OrderResource, deadline: float) -> str:
    try:
        acme.begin_finalization(order)
    except messages.Error as exc:
        if exc.code != "orderNotReady":
            raise AcmeError(f"the CA refused to finalize: {exc.detail or exc}") from None

    def fetch() -> messages.Order:
        return messages.Order.from_json(acme._post_as_get(order.uri).json())

    body = _poll(
        fetch, lambda b: b.status in (messages.STATUS_VALID, messages.STATUS_INVALID), deadline
    )
    if body.status == messages.STATUS_INVALID or body.certificate is None:
        raise AcmeError(f"the CA did not issue: {body.error or 'order invalid'}")
    return str(acme._post_as_get(body.certificate).text)


# ------------------------------------------------------------------------------ revocation

# RFC 5280 reason code 5: the site is gone (one of the reasons Let's Encrypt accepts).
CESSATION_OF_OPERATION = 5


def revoke(
    settings: Settings, cert: x509.Certificate, reason: int = CESSATION_OF_OPERATION
) -> None:
    """Revoke `cert` with this host's account (the one that ordered it); a certificate the CA
    already revoked counts as done, so a destroy resumed after a crash can revoke again."""
    session = open_session(settings, fetch_directory(settings))
    try:
        session.acme.revoke(cert, reason)
    except messages.Error as exc:
        if exc.code == "alreadyRevoked":
            return
        raise AcmeError(
            f"the CA refused to revoke serial {cert.serial_number:x}: {exc.detail or exc}; "
            "retry, or destroy with --keep-certificate (it then expires unused)"
        ) from None


# ------------------------------------------------------------------------------ renewal info


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial's DER bytes)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = cert.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER keeps a 0 sign byte
    return f"{_b64(aki.key_identifier or b'')}.{_b64(serial_der)}"


@dataclass(frozen=True)
class RenewalInfo:
    """The CA's ARI answer: its suggested window, and when to ask again (Retry-After)."""

    start: dt.datetime
    end: dt.datetime
    retry_after: float


ARI_RETRY_DEFAULT = 6 * 3600.0  # RFC 9773 §4.3: a missing or bad Retry-After means 6 hours
ARI_RETRY_BOUNDS = (60.0, 86400.0)  # a CA's odd value neither hammers it nor waits days


def _retry_after(value: str | None) -> float:
    if not value:
        return ARI_RETRY_DEFAULT
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return ARI_RETRY_DEFAULT
        seconds = (moment - dt.datetime.now(dt.UTC)).total_seconds()
    low, high = ARI_RETRY_BOUNDS
    return min(high, max(low, seconds))


def renewal_info(
    settings: Settings, directory: messages.Directory, cert: x509.Certificate
) -> RenewalInfo | None:
    """The CA's ARI answer for `cert`, or None when its directory offers no `renewalInfo`."""
    try:
        base = directory["renewalInfo"]
    except KeyError:
        return None
    url = f"{str(base).rstrip('/')}/{ari_cert_id(cert)}"
    bundle = settings.acme_ca_bundle
    verify = ssl.create_default_context(cafile=str(bundle)) if bundle else True
    answer = httpx.get(url, timeout=10.0, verify=verify)
    answer.raise_for_status()
    info = messages.RenewalInfo.from_json(answer.json())
    window = info.suggested_window
    return RenewalInfo(window.start, window.end, _retry_after(answer.headers.get("Retry-After")))


def renewal_window(
    settings: Settings, directory: messages.Directory, cert: x509.Certificate
) -> tuple[dt.datetime, dt.datetime] | None:
    """The CA's suggested renewal window for `cert`, or None when it offers no ARI."""
    info = renewal_info(settings, directory, cert)
    return None if info is None else (info.start, info.end)
