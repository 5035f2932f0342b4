"""Streamed GET / PUT of a granted URL (docs/storage-grants.md).

Per turn the edge hands the backend one signed URL per object it may touch: read grants (GET) for
the stored chunks of the session, a create grant (PUT, `If-None-Match: *`) for the new one. The
URLs are R2's S3 presigned URLs in production and the Worker's signed streaming route locally; this
client does not care which. Objects are anything (KV chunks, LoRA adapters).

Everything that comes back is hostile: sizes are bounded before and while reading, a body that ends
early or runs past its announced length is an error, and each failure is a StorageError with a code,
never another exception. Nothing waits forever: connecting and every read have timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

PIECE = 1 << 20                    # bytes per read/write: amortizes syscalls, small next to any chunk
MAX_OBJECT_BYTES = 5 * 1024 ** 3   # R2's single-PUT limit; no grant allows more
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0              # longest silence while a body streams


class StorageError(Exception):
    """A transfer that did not happen as granted. `code`: not_found, exists, forbidden, too_large,
    size_mismatch, checksum, bad_grant, http, network, timeout."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Grant:
    key: str
    mode: str                              # "read" | "create"
    method: str                            # "GET" | "PUT"
    url: str
    headers: tuple[tuple[str, str], ...]   # to send as they are (a create's if-none-match: *)
    expires: int                           # unix seconds
    max_bytes: int | None = None

    @classmethod
    def from_json(cls, obj: object) -> Grant:
        """A grant from the edge's JSON (src/storage/grants.ts `Grant`); raises StorageError("bad_grant")."""
        def bad(why: str) -> StorageError:
            return StorageError("bad_grant", why)
        if not isinstance(obj, dict):
            raise bad("grant is not an object")
        key, mode, method, url = (obj.get(k) for k in ("key", "mode", "method", "url"))
        if not isinstance(key, str) or not key or len(key) > 512:
            raise bad("key")
        if (mode, method) not in (("read", "GET"), ("create", "PUT")):
            raise bad("mode/method")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise bad("url must be http(s)")
        headers = obj.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) and "\n" not in k + v
                                                    and "\r" not in k + v for k, v in headers.items()):
            raise bad("headers")
        expires, max_bytes = obj.get("expires"), obj.get("maxBytes")
        if type(expires) is not int:
            raise bad("expires")
        if max_bytes is not None and (type(max_bytes) is not int or not 0 <= max_bytes <= MAX_OBJECT_BYTES):
            raise bad("maxBytes")
        return cls(key, mode, method, url, tuple(sorted(headers.items())), expires, max_bytes)


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    sha256: str          # hex, of data
    seconds: float       # request start to last byte
    first_byte_s: float  # request start to response headers


@dataclass(frozen=True, slots=True)
class Stored:
    size: int
    sha256: str
    seconds: float


_STATUS_CODES = {403: "forbidden", 404: "not_found", 409: "exists", 412: "exists", 413: "too_large"}


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S,
                                 sock_read=READ_TIMEOUT_S)


def _refused(status: int) -> StorageError:
    return StorageError(_STATUS_CODES.get(status, "http"), f"storage answered {status}")


def _declared_length(resp: aiohttp.ClientResponse) -> int | None:
    cl = resp.headers.get("Content-Length")
    if cl is None:
        return None
    if not cl.isascii() or not cl.isdigit() or len(cl) > 13:
        raise StorageError("http", "malformed Content-Length")
    return int(cl)


async def stream_object(http: aiohttp.ClientSession, grant: Grant, *, max_bytes: int = MAX_OBJECT_BYTES,
                        expect_bytes: int | None = None) -> AsyncIterator[bytes]:
    """The object's bytes as they arrive, in pieces of at most PIECE bytes. Raises StorageError when the
    grant is not a read grant, storage refuses, the body is (announced as) longer than `max_bytes`, or its
    length is not `expect_bytes`."""
    if grant.mode != "read":
        raise StorageError("bad_grant", "not a read grant")
    limit = max_bytes if expect_bytes is None else min(max_bytes, expect_bytes)
    try:
        # identity: the bytes as stored (a gzipped body would hash differently and cost CPU for nothing)
        async with http.get(grant.url, headers={**dict(grant.headers), "Accept-Encoding": "identity"},
                            timeout=_timeout(), allow_redirects=False, auto_decompress=False) as resp:
            if resp.status != 200:
                raise _refused(resp.status)
            declared = _declared_length(resp)
            if declared is not None and declared > limit:
                raise StorageError("too_large" if expect_bytes is None or declared > max_bytes else "size_mismatch",
                                   f"{declared} bytes announced, at most {limit} expected")
            got = 0
            async for piece in resp.content.iter_chunked(PIECE):
                got += len(piece)
                if got > limit:
                    raise StorageError("too_large" if expect_bytes is None else "size_mismatch",
                                       f"body runs past {limit} bytes")
                yield piece
            if expect_bytes is not None and got != expect_bytes:
                raise StorageError("size_mismatch", f"{got} bytes, {expect_bytes} expected")
    except StorageError:
        raise
    except TimeoutError as e:
        raise StorageError("timeout", str(e) or "read timed out") from None
    except (aiohttp.ClientError, ValueError) as e:      # ClientPayloadError: the body ended early
        raise StorageError("network", f"{type(e).__name__}: {e}") from None


async def fetch_object(http: aiohttp.ClientSession, grant: Grant, *, max_bytes: int = MAX_OBJECT_BYTES,
                       expect_bytes: int | None = None, expect_sha256: str | None = None) -> Fetched:
    """The whole object, hashed while it streams in (no second pass). `expect_sha256`: hex; a mismatch is
    StorageError("checksum")."""
    t0 = time.perf_counter()
    h = hashlib.sha256()
    buf = bytearray()
    first = None
    async for piece in stream_object(http, grant, max_bytes=max_bytes, expect_bytes=expect_bytes):
        if first is None:
            first = time.perf_counter() - t0
        h.update(piece)
        buf += piece
    digest = h.hexdigest()
    if expect_sha256 is not None and digest != expect_sha256:
        raise StorageError("checksum", "SHA-256 of the body does not match")
    t = time.perf_counter() - t0
    return Fetched(bytes(buf), digest, t, t if first is None else first)


async def _pieces(view: memoryview) -> AsyncIterator[memoryview]:
    for off in range(0, len(view), PIECE):
        yield view[off:off + PIECE]


async def put_object(http: aiohttp.ClientSession, grant: Grant, data: bytes | bytearray | memoryview) -> Stored:
    """Creates the granted object with `data`, streamed in PIECE-sized writes with its Content-Length and
    SHA-256 (x-amz-checksum-sha256, which R2 and the Worker route verify). An existing object is never
    overwritten: that is StorageError("exists")."""
    if grant.mode != "create":
        raise StorageError("bad_grant", "not a create grant")
    view = memoryview(data).cast("B")
    if grant.max_bytes is not None and len(view) > grant.max_bytes:
        raise StorageError("too_large", f"{len(view)} bytes, the grant allows {grant.max_bytes}")
    digest = hashlib.sha256(view)
    headers = {**dict(grant.headers), "Content-Length": str(len(view)), "Content-Type": "application/octet-stream",
               "x-amz-checksum-sha256": base64.b64encode(digest.digest()).decode()}
    t0 = time.perf_counter()
    try:
        async with http.put(grant.url, data=_pieces(view), headers=headers, timeout=_timeout(),
                            allow_redirects=False) as resp:
            await resp.read()
            if resp.status not in (200, 201):
                raise _refused(resp.status)
    except StorageError:
        raise
    except TimeoutError as e:
        raise StorageError("timeout", str(e) or "write timed out") from None
    except (aiohttp.ClientError, ValueError) as e:
        raise StorageError("network", f"{type(e).__name__}: {e}") from None
    return Stored(len(view), digest.hexdigest(), time.perf_counter() - t0)
