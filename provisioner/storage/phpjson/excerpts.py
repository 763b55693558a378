"""Excerpts of malformed JSON files for error messages, with passwords, hashes and tokens masked.

The text around the error is masked before the excerpt is cut from it (docs/data-layer.md).
"""

from __future__ import annotations

import re
from typing import Final

import provisioner.secret_names  # noqa: F401  (registers the AEIMS secret field names)
from provisioner.redact import MASK, redact

# --------------------------------------------------------------------------------------------
# Excerpts with secrets masked
# --------------------------------------------------------------------------------------------

# Around the error, this much text is masked before the excerpt is cut from it: a secret has to
# be longer than this to reach into the excerpt from outside.
_REGION: Final = 64 * 1024
_EXCERPT_WIDTH: Final = 40
_SECRET_NAME = re.compile(r"pass|secret|token|hash|pin|credential|api_?key|auth|salt", re.I)
# bcrypt and argon2 hashes wherever they are, PHP's escaped slashes included.
_HASH = re.compile(r"\$(?:2[abxy]?\$\d\d\$|argon2(?:id|i|d)\$)[^\s\"]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}:,]|[^\s"\[\]{},:]+', re.S)


def _secret_name(key: str) -> bool:
    """A key whose value is masked: password-, hash- and token-like names, and every name the
    redaction masks (provisioner.redact, with the AEIMS names registered)."""
    return bool(_SECRET_NAME.search(key)) or redact({key: "?"}).get(key) == MASK


def _tokens(region: str, inside_string: bool) -> list[tuple[int, int, str]]:
    """JSON tokens of `region` as (start, end, text), starting inside a string or not."""
    out: list[tuple[int, int, str]] = []
    at = 0
    if inside_string:
        close = re.search(r'(?<!\\)(?:\\\\)*"', region)
        at = close.end() if close else len(region)
        out.append((0, at, '"' + region[:at]))
    out.extend((m.start(), m.end(), m.group()) for m in _TOKEN.finditer(region, at))
    return out


def _secret_spans(region: str) -> list[tuple[int, int]]:
    """Where `region` holds secrets: values of secret-named keys (whole objects and lists
    included) and strings holding a hash, read as if the region started outside a string and
    as if it started inside one (one of the two is how it is: both are masked)."""
    spans = [m.span() for m in _HASH.finditer(region)]
    for inside in (False, True):
        tokens = _tokens(region, inside)
        for i, (start, end, text) in enumerate(tokens):
            if not text.startswith('"'):
                continue
            if _HASH.search(text):
                spans.append((start, end))
            if i + 2 >= len(tokens) or tokens[i + 1][2] != ":" or not _secret_name(text[1:-1]):
                continue
            value_start, value_end, value = tokens[i + 2]
            if value in ("{", "["):
                value_end = _container_end(tokens, i + 2, len(region))
            spans.append((value_start, value_end))
    return _merged(spans)


def _container_end(tokens: list[tuple[int, int, str]], opener: int, default: int) -> int:
    depth = 0
    for _, end, text in tokens[opener:]:
        if text in ("{", "["):
            depth += 1
        elif text in ("}", "]"):
            depth -= 1
            if depth == 0:
                return end
    return default


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def masked_excerpt(text: str, pos: int) -> str:
    """The line around `pos` in `text`, about 40 characters either side, secrets masked.

    Masking runs on up to 64 KiB either side of `pos` before the excerpt is cut, so a password
    or hash cut by the excerpt's edge (its key or its `$2y$` outside the window) is masked
    all the same; an error inside a secret shows the mask.
    """
    start = max(0, pos - _REGION)
    end = min(len(text), pos + _REGION)
    region = text[start:end]
    at = pos - start
    pieces: list[str] = []
    length = 0
    new_at: int | None = None
    last = 0
    for span_start, span_end in _secret_spans(region):
        if new_at is None and at < span_start:
            new_at = length + at - last
        pieces.append(region[last:span_start])
        length += span_start - last
        if new_at is None and at < span_end:
            new_at = length
        pieces.append(f'"{MASK}"')
        length += len(MASK) + 2
        last = span_end
    if new_at is None:
        new_at = length + at - last
    pieces.append(region[last:])
    masked = "".join(pieces)
    line_start = masked.rfind("\n", 0, new_at) + 1
    line_end = masked.find("\n", new_at)
    if line_end < 0:
        line_end = len(masked)
    cut_start = max(line_start, new_at - _EXCERPT_WIDTH)
    cut_end = min(line_end, new_at + _EXCERPT_WIDTH)
    before = cut_start > line_start or (line_start == 0 and start > 0)
    after = cut_end < line_end or (line_end == len(masked) and end < len(text))
    snippet = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode()
        for ch in masked[cut_start:cut_end]
    )
    return repr(("…" if before else "") + snippet + ("…" if after else ""))


def masked_bytes_excerpt(raw: bytes, offset: int) -> str:
    """`masked_excerpt` at byte `offset` of text that is not valid UTF-8 (bad bytes shown as
    `\\xNN`)."""
    start = max(0, offset - _REGION)
    head = raw[start:offset].decode("utf-8", "backslashreplace")
    tail = raw[offset : offset + _REGION].decode("utf-8", "backslashreplace")
    return masked_excerpt(head + tail, len(head))
