"""The reference SexaComms billing server (docs/billing-api.md), for the local stack and tests.

A stdlib ThreadingHTTPServer bound to 127.0.0.1 only, keeping the registered sites in one JSON
file replaced atomically on every change, so a restart keeps them. The bearer token is read
from a 0600 file, never from the command line (which any local user can read in /proc).
`--test-hooks` (the dev stack passes it) adds `POST /_test/fail-next`, which makes the next
requests fail, so clients' retries can be tested against the real server.

    python -m provisioner.devstack.billing_server --port P --state FILE --token-file FILE
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from provisioner.fsutil import write_atomically

MAX_BODY = 64 * 1024
SITE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,251}[a-z0-9])?$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
SITE_PATH = re.compile(r"^/v1/sites/([^/]+)$")
# The fields of each billing model and their bounds (inclusive).
MODELS: dict[str, dict[str, tuple[float, float]]] = {
    "customer": {"per_minute_rate": (0.0, 1000.0), "minimum_purchase": (0.0, 100000.0)},
    "operator": {"operator_commission": (0.0, 1.0)},
}
FIELDS = ("domain", "name", "type", "billing")


class ApiError(Exception):
    """An answer other than success: status, machine code, human message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_site(body: Any) -> dict[str, Any]:
    """The registration as stored, or an ApiError(422) naming the first thing wrong."""

    def bad(message: str) -> ApiError:
        return ApiError(422, "invalid", message)

    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise bad(f"unknown field(s): {', '.join(unknown)}")
    for name in ("domain", "name", "type"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise bad(f"{name} must be a non-empty string")
    if len(body["domain"]) > 253 or len(body["name"]) > 200:
        raise bad("domain or name is too long")
    model = MODELS.get(body["type"])
    if model is None:
        raise bad(f"type must be one of {', '.join(MODELS)}")
    billing = body.get("billing")
    if not isinstance(billing, dict) or set(billing) != {*model, "currency"}:
        raise bad(f"billing for a {body['type']} site holds {', '.join([*model, 'currency'])}")
    if not isinstance(billing["currency"], str) or not CURRENCY.match(billing["currency"]):
        raise bad("billing.currency must be an ISO 4217 code such as USD")
    for name, (low, high) in model.items():
        value = billing[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            raise bad(f"billing.{name} must be a number from {low:g} to {high:g}")
    return {name: body[name] for name in FIELDS}


class Store:
    """Registered sites in one JSON file, each change written atomically under one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.sites: dict[str, dict[str, Any]] = json.loads(path.read_text("utf-8"))["sites"]
        except FileNotFoundError:
            self.sites = {}

    def _save(self) -> None:
        text = json.dumps({"sites": self.sites}, indent=2, sort_keys=True) + "\n"
        write_atomically(self.path, text, 0o600)

    def get(self, site_id: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.sites.get(site_id)
            return dict(found) if found else None

    def put(self, site_id: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """201 and the new document, or 200 and the stored one (updated when it differed)."""
        with self.lock:
            old = self.sites.get(site_id)
            if old is not None and {k: old[k] for k in FIELDS} == fields:
                return 200, dict(old)
            now = _now()
            created = old["created_at"] if old else now
            doc = {"site_id": site_id, **fields, "created_at": created, "updated_at": now}
            self.sites[site_id] = doc
            self._save()
            return (200 if old else 201), dict(doc)

    def delete(self, site_id: str) -> bool:
        with self.lock:
            if self.sites.pop(site_id, None) is None:
                return False
            self._save()
            return True


class Faults:
    """Test hook: the next `count` API requests answer `status` (or drop the connection)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: int | str = 503
        self.count = 0
        self.retry_after: str | None = None

    def arm(self, status: int | str, count: int, retry_after: str | None) -> None:
        with self.lock:
            self.status, self.count, self.retry_after = status, count, retry_after

    def take(self) -> tuple[int | str, str | None] | None:
        with self.lock:
            if self.count <= 0:
                return None
            self.count -= 1
            return self.status, self.retry_after


class BillingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, store: Store, token: str, test_hooks: bool) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.store, self.token, self.test_hooks = store, token, test_hooks
        self.faults = Faults()


class Handler(BaseHTTPRequestHandler):
    server: BillingServer
    protocol_version = "HTTP/1.1"
    server_version = "sexacomms-billing-reference/1"

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (json.dumps(body) + "\n").encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: ApiError) -> None:
        body = {"error": {"code": exc.code, "message": exc.message}}
        self._send(exc.status, body, exc.headers)

    def _authorized(self) -> None:
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.server.token.encode()
        )
        if not ok:
            challenge = {"WWW-Authenticate": 'Bearer realm="billing"'}
            raise ApiError(401, "unauthorized", "a valid bearer token is required", challenge)

    def _body(self) -> Any:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise ApiError(411, "length_required", "send a Content-Length")
        if int(length) > MAX_BODY:
            raise ApiError(413, "too_large", f"the body may hold at most {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        if self.headers.get_content_type() != "application/json":
            raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None

    def _fault(self) -> bool:
        """Answer with an armed fault instead of the request; True when one was used."""
        fault = self.server.faults.take()
        if fault is None:
            return False
        status, retry_after = fault
        if status == "drop":
            self.close_connection = True
            self.connection.close()
            return True
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self._error(ApiError(int(status), "unavailable", "injected failure", headers))
        return True

    def _site_id(self, path: str) -> str:
        match = SITE_PATH.match(path)
        if match is None:
            raise ApiError(404, "not_found", "no such endpoint")
        site_id = match.group(1)
        if not SITE_ID.match(site_id):
            raise ApiError(400, "bad_site_id", "site_id holds a-z, 0-9, _ and - only")
        return site_id

    def _handle(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            if method == "GET" and path == "/healthz":
                self._send(200, {"ok": True})
                return
            if path.startswith("/_test/") and self.server.test_hooks:
                self._authorized()
                self._test_hook(method, path)
                return
            site_id = self._site_id(path)
            self._authorized()
            if self._fault():
                return
            self._site(method, site_id)
        except ApiError as exc:
            self._error(exc)

    def _site(self, method: str, site_id: str) -> None:
        store = self.server.store
        if method == "GET":
            doc = store.get(site_id)
            if doc is None:
                raise ApiError(404, "not_found", f"site {site_id} is not registered")
            self._send(200, doc)
        elif method == "PUT":
            status, doc = store.put(site_id, validate_site(self._body()))
            self._send(status, doc)
        elif method == "DELETE":
            if not store.delete(site_id):
                raise ApiError(404, "not_found", f"site {site_id} is not registered")
            self._send(204)
        else:
            allow = {"Allow": "GET, PUT, DELETE"}
            raise ApiError(405, "method_not_allowed", "use GET, PUT or DELETE", allow)

    def _test_hook(self, method: str, path: str) -> None:
        if method != "POST" or path != "/_test/fail-next":
            raise ApiError(404, "not_found", "no such test hook")
        query = parse_qs(urlsplit(self.path).query)
        status = query.get("status", ["503"])[0]
        count = query.get("count", ["1"])[0]
        retry_after = query.get("retry_after", [None])[0]
        if not (status == "drop" or status.isdigit()) or not count.isdigit():
            raise ApiError(400, "bad_request", "status is a number or 'drop'; count a number")
        self.server.faults.arm(status if status == "drop" else int(status), int(count), retry_after)
        self._send(200, {"armed": {"status": status, "count": int(count)}})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_POST(self) -> None:
        self._handle("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request, to the log (the request line never holds the token)."""
        super().log_message(format, *args)


def serve(port: int, state: Path, token_file: Path, test_hooks: bool) -> None:
    token = token_file.read_text("utf-8").strip()
    if not token:
        raise SystemExit(f"{token_file} is empty")
    server = BillingServer(port, Store(state), token, test_hooks)
    print(f"billing reference server on http://127.0.0.1:{port}/", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--test-hooks", action="store_true")
    args = parser.parse_args(argv)
    serve(args.port, args.state, args.token_file, args.test_hooks)


if __name__ == "__main__":
    main()
