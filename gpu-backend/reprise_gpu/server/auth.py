"""HMAC-SHA256 request signatures: v1=hex(HMAC(secret, timestamp + "." + body)), at most 5 minutes old."""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Reprise-Timestamp"
SIGNATURE_HEADER = "X-Reprise-Signature"
MAX_SKEW_S = 300


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, ts, body)}


def verify(secret: bytes, timestamp: str | None, signature: str | None, body: bytes,
           now: float | None = None) -> str | None:
    """None when valid, else the reason it is not."""
    if not timestamp or not signature:
        return "missing signature headers"
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return "malformed timestamp"
    if abs((time.time() if now is None else now) - int(timestamp)) > MAX_SKEW_S:
        return "stale timestamp"
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.strip().encode()):
        return "bad signature"
    return None
