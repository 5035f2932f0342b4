"""The HMAC a KV chunk carries in its container header (docs/storage-grants.md, "Chunk MAC").

A chunk written through a grant names its object key, and its `mac` authenticates the header fields
(which include the payload's SHA-256) under a key only the edge and the backends hold, so a chunk
that someone rewrote and re-hashed, or copied from another session or position, fails the check.

    k_mac = HMAC-SHA256(shared secret, "reprise-chunk-mac-v1")
    mac   = hex(HMAC-SHA256(k_mac, "RPKV-mac-v1\\n" + key + "\\n" + producer + "\\n" + codec + "\\n" + layers
                + "\\n" + kv_heads + "\\n" + head_dim + "\\n" + token_start + "\\n" + token_end
                + "\\n" + payload_bytes + "\\n" + payload_sha256))

Every field but `producer` excludes newlines (keys and codecs by their character sets, the rest are
decimal or hex), so the message is one-to-one with the fields. TypeScript twin: src/storage/chunk-mac.ts.
"""

from __future__ import annotations

import hashlib
import hmac

MAC_KEY_LABEL = b"reprise-chunk-mac-v1"
MAC_FIELDS = ("producer", "codec", "layers", "kv_heads", "head_dim", "token_start", "token_end", "payload_bytes",
              "payload_sha256")


def mac_key(secret: str | bytes) -> bytes:
    """The chunk-MAC key derived from the edge/backend shared secret (whitespace stripped, as auth.py reads it)."""
    s = secret.strip().encode() if isinstance(secret, str) else secret.strip()
    return hmac.new(s, MAC_KEY_LABEL, hashlib.sha256).digest()


def mac_message(key: str, header: dict) -> bytes:
    return "\n".join(["RPKV-mac-v1", key, *(str(header[f]) for f in MAC_FIELDS)]).encode()


def chunk_mac(k_mac: bytes, key: str, header: dict) -> str:
    """Lowercase hex MAC of a container header (the dict of docs/kv-chunk-format.md) stored under `key`."""
    return hmac.new(k_mac, mac_message(key, header), hashlib.sha256).hexdigest()


def verify_mac(k_mac: bytes, key: str, header: dict) -> bool:
    """True when the header carries a `mac` that matches (constant-time compare)."""
    got = header.get("mac")
    if not isinstance(got, str) or any(not isinstance(header.get(f), (str, int)) or isinstance(header.get(f), bool)
                                       for f in MAC_FIELDS):
        return False
    return hmac.compare_digest(chunk_mac(k_mac, key, header).encode(), got.encode())
