"""A client of the SexaComms billing API (docs/billing-api.md): GET, PUT and DELETE of a site,
with timeouts, and retries with exponential backoff and full jitter on 429/5xx and on
connection errors, honouring Retry-After within bounds. PUT and DELETE are idempotent, so a
retried request whose first answer was lost does no harm.

The bearer token goes into the Authorization header and nowhere else: no message, exception
or return value of this module holds it.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class BillingError(RuntimeError):
    """The billing system refused a request, or could not be reached in time."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 4.0
    # A Retry-After longer than this is cut to it; the whole call gives up past `deadline`.
    max_retry_after: float = 10.0
    deadline: float = 45.0
    timeout: float = 10.0
    connect_timeout: float = 3.0


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class BillingApi:
    """The sites resource of one billing system, over a shared httpx client."""

    def __init__(
        self, client: httpx.Client, base_url: str, token: str, policy: RetryPolicy | None = None
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.policy = policy or RetryPolicy()

    def __repr__(self) -> str:
        return f"BillingApi({self.base_url!r})"

    def site_url(self, site_id: str) -> str:
        return f"{self.base_url}/v1/sites/{site_id}"

    def get(self, site_id: str) -> dict[str, Any] | None:
        """The stored document, or None when the site is not registered."""
        answer = self._request("GET", site_id)
        if answer.status_code == 404:
            return None
        self._expect(answer, {200}, "GET")
        return answer.json()

    def put(self, site_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Register or update; the stored document (201 created, 200 unchanged or updated)."""
        answer = self._request("PUT", site_id, body)
        self._expect(answer, {200, 201}, "PUT")
        return answer.json()

    def delete(self, site_id: str) -> bool:
        """True when a registration was deleted, False when there was none."""
        answer = self._request("DELETE", site_id)
        if answer.status_code == 404:
            return False
        self._expect(answer, {200, 204}, "DELETE")
        return True

    def _expect(self, answer: httpx.Response, ok: set[int], method: str) -> None:
        if answer.status_code in ok:
            return
        if answer.status_code in (401, 403):
            raise BillingError(
                f"the billing system at {self.base_url} refused the token "
                f"({answer.status_code}); check PROVISION_BILLING_TOKEN"
            )
        raise BillingError(
            f"{method} {answer.request.url} answered {answer.status_code}: {_message(answer)}"
        )

    def _request(self, method: str, site_id: str, body: Any = None) -> httpx.Response:
        import httpx

        policy = self.policy
        url = self.site_url(site_id)
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        timeout = httpx.Timeout(policy.timeout, connect=policy.connect_timeout)
        deadline = time.monotonic() + policy.deadline
        for attempt in range(policy.attempts):
            wait = min(policy.max_delay, policy.base_delay * 2**attempt) * random.random()
            try:
                answer = self.client.request(
                    method, url, json=body, headers=headers, timeout=timeout
                )
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no answer'}"
            else:
                if answer.status_code not in RETRY_STATUSES:
                    return answer
                failure = f"{answer.status_code} {_message(answer)}"
                asked = retry_after_seconds(answer.headers.get("Retry-After"))
                if asked is not None:
                    wait = max(wait, min(asked, policy.max_retry_after))
            last = attempt == policy.attempts - 1
            if last or time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
        raise BillingError(
            f"{method} {url} failed after {attempt + 1} attempt(s): {failure}; "
            f"is the billing system at {self.base_url} up? (PROVISION_BILLING_URL)"
        )


def _message(answer: httpx.Response) -> str:
    """The error's message from the JSON body, else the reason phrase (one short line)."""
    try:
        text = str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = answer.reason_phrase
    return " ".join(text.split())[:200]
