"""DNS-01's TXT records in Route53, for certificates obtained once for a fleet behind a load
balancer (the certificate step's global scope).

Only the values this provider wrote are ever removed: a TXT record set at `_acme-challenge.<name>`
may also hold another client's token (a second issuer, a wildcard order), so a clear puts back
what remains, and deletes the set only when nothing else is left in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from provisioner.clients import route53_client
from provisioner.site import route53 as r53
from provisioner.site.acme_client import AcmeError

__all__ = ["Route53Txt", "TxtError", "route53_client"]

T = TypeVar("T")

# Validation happens within minutes; a short TTL keeps a stale token from being cached long.
TXT_TTL_SECONDS = 60


class TxtError(AcmeError):
    """Route53 has no zone for the name, or refused the change."""


def quoted(value: str) -> str:
    """A TXT value as Route53 stores it: one quoted string (tokens are base64url, no quotes)."""
    return f'"{value}"'


class Route53Txt:
    """set_txt/clear_txt (acme_client.DnsProvider) through one boto3 Route53 client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.written: dict[str, list[str]] = {}

    def _zone(self, fqdn: str) -> str:
        zone, duplicates = r53.find_zone(self.client, fqdn)
        if zone is None:
            raise TxtError(
                f"no Route53 hosted zone holds {fqdn}: create the zone, or use "
                "PROVISION_ACME_CHALLENGE=http-01"
            )
        if duplicates:
            raise TxtError(
                f"several Route53 zones are named {zone['Name']} ({', '.join(duplicates)}): "
                "delete the unused ones"
            )
        return r53.zone_id(zone)

    def _put(self, zone: str, fqdn: str, values: list[str]) -> None:
        found = r53.current(self.client, zone, fqdn, "TXT")
        if values:
            wanted = r53.simple_record(fqdn, "TXT", TXT_TTL_SECONDS, values)
            change = {"Action": "UPSERT", "ResourceRecordSet": wanted}
        elif found is not None:
            change = {"Action": "DELETE", "ResourceRecordSet": found}
        else:
            return
        r53.change_and_wait(self.client, zone, [change], f"provision dns-01 {fqdn}")

    def _refused(self, fqdn: str, call: Callable[[], T]) -> T:
        """boto's errors as one line naming the record (credentials, throttling, refusals)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except (BotoCoreError, ClientError) as exc:
            raise TxtError(f"Route53 refused the DNS-01 record {fqdn}: {exc}") from None

    def set_txt(self, fqdn: str, value: str) -> None:
        self._refused(fqdn, lambda: self._set(fqdn, value))

    def clear_txt(self, fqdn: str) -> None:
        self._refused(fqdn, lambda: self._clear(fqdn))

    def _set(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        present = r53.values(r53.current(self.client, zone, fqdn, "TXT"))
        token = quoted(value)
        if token not in present:
            self._put(zone, fqdn, [*present, token])
        self.written.setdefault(fqdn, []).append(token)

    def _clear(self, fqdn: str) -> None:
        ours = self.written.pop(fqdn, [])
        zone = self._zone(fqdn)
        present = r53.values(r53.current(self.client, zone, fqdn, "TXT"))
        left = [value for value in present if value not in ours]
        if left != present:
            self._put(zone, fqdn, left)
