"""`python -m tests.jws_capture ARGS...`: `provision ARGS...` with the payload of every signed
ACME request appended to `$JWS_CAPTURE` (JSON lines: url, payload), decoded from the JWS that
goes on the wire. pebble 2.4 ignores an order's `replaces`, so the drill reads it here."""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

from acme import client


def _decode(segment: str) -> Any:
    if not segment:
        return None  # POST-as-GET: an empty payload
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def install(path: str) -> None:
    original = client.ClientNetwork._wrap_in_jws

    def capture(self: client.ClientNetwork, obj: Any, nonce: str, url: str) -> str:
        jws = original(self, obj, nonce, url)
        payload = _decode(json.loads(jws)["payload"])
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"url": url, "payload": payload}) + "\n")
        return jws

    client.ClientNetwork._wrap_in_jws = capture  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ["JWS_CAPTURE"])
    from provisioner.cli.main import main

    main(sys.argv[1:])
