"""The granted-URL client (reprise_gpu/storage/remote.py) against real HTTP servers: a small
create-only object store in aiohttp, and a raw socket server that answers whatever hypothesis (or the
corpus in tests/corpus/storage_http/) makes up, to show that a hostile or broken storage service gives
exact bytes or a StorageError, never another exception and never a hang."""

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings, strategies as st

from reprise_gpu.storage import remote
from reprise_gpu.storage.chunk_mac import chunk_mac, mac_key, verify_mac
from reprise_gpu.storage.remote import Grant, StorageError, fetch_object, put_object
from storage_util import start_store

CORPUS = Path(__file__).parent / "corpus" / "storage_http"


def grant(url: str, mode: str = "read", max_bytes=None, key="k/obj") -> Grant:
    return Grant.from_json({"key": key, "mode": mode, "method": "GET" if mode == "read" else "PUT", "url": url,
                            "headers": {"if-none-match": "*"} if mode == "create" else {}, "expires": 1,
                            **({"maxBytes": max_bytes} if max_bytes is not None else {})})


def run(coro):
    return asyncio.run(coro)


def test_put_then_fetch_streams_exact_bytes_and_never_overwrites():
    async def main():
        objects: dict[str, bytes] = {}
        runner, base = await start_store(objects)
        data = os.urandom(3 * remote.PIECE + 12345)
        try:
            async with aiohttp.ClientSession() as http:
                stored = await put_object(http, grant(f"{base}/o/a", "create", max_bytes=len(data)), data)
                assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
                assert objects["a"] == data
                with pytest.raises(StorageError) as e:
                    await put_object(http, grant(f"{base}/o/a", "create", max_bytes=len(data)), b"other")
                assert e.value.code == "exists" and objects["a"] == data
                got = await fetch_object(http, grant(f"{base}/o/a"), expect_bytes=len(data),
                                         expect_sha256=stored.sha256)
                assert got.data == data and got.sha256 == stored.sha256
                for kw, code in [({"expect_bytes": len(data) - 1}, "size_mismatch"),
                                 ({"expect_bytes": len(data) + 1}, "size_mismatch"),
                                 ({"max_bytes": 1000}, "too_large"),
                                 ({"expect_sha256": "0" * 64}, "checksum")]:
                    with pytest.raises(StorageError) as e:
                        await fetch_object(http, grant(f"{base}/o/a"), **kw)
                    assert e.value.code == code, kw
                with pytest.raises(StorageError) as e:
                    await fetch_object(http, grant(f"{base}/o/missing"))
                assert e.value.code == "not_found"
                with pytest.raises(StorageError) as e:
                    await put_object(http, grant(f"{base}/o/b", "create", max_bytes=10), b"x" * 11)
                assert e.value.code == "too_large" and "b" not in objects
                with pytest.raises(StorageError):
                    await put_object(http, grant(f"{base}/o/c"), b"read grants do not write")
        finally:
            await runner.cleanup()
    run(main())


def test_fetch_asks_for_the_stored_bytes_not_a_compressed_form():
    """wrangler dev gzips a response for a client that accepts it; the client must ask for identity."""
    import gzip

    async def main():
        data = b"compressible " * 10_000

        async def get(request):
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                return web.Response(body=gzip.compress(data), headers={"Content-Encoding": "gzip"})
            return web.Response(body=data)
        app = web.Application()
        app.router.add_get("/o", get)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/o"
                got = await fetch_object(http, grant(url), expect_bytes=len(data))
                assert got.data == data
        finally:
            await runner.cleanup()
    run(main())


@pytest.mark.parametrize("obj", [None, [], {"key": "", "mode": "read", "method": "GET", "url": "http://x/", "expires": 1},
                                 {"key": "k", "mode": "read", "method": "PUT", "url": "http://x/", "expires": 1},
                                 {"key": "k", "mode": "read", "method": "GET", "url": "file:///etc/passwd", "expires": 1},
                                 {"key": "k", "mode": "read", "method": "GET", "url": "http://x/", "expires": "1"},
                                 {"key": "k", "mode": "read", "method": "GET", "url": "http://x/", "expires": 1,
                                  "headers": {"a": "b\r\nX-Evil: 1"}},
                                 {"key": "k", "mode": "create", "method": "PUT", "url": "http://x/", "expires": 1,
                                  "maxBytes": -1}])
def test_grant_json_is_validated(obj):
    with pytest.raises(StorageError) as e:
        Grant.from_json(obj)
    assert e.value.code == "bad_grant"


# ---- a raw HTTP server that says whatever it is told ------------------------------------------------

async def serve_raw(response: bytes, hold_open: bool):
    """One-shot server: reads a request head, writes `response`, then closes (or holds the socket open)."""
    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        writer.write(response)
        try:
            await writer.drain()
            if hold_open:
                await asyncio.sleep(5)
        except ConnectionError:
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def raw_response(status: int, body: bytes, content_length: int | None, extra: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} X\r\n".encode()
    if content_length is not None:
        head += f"Content-Length: {content_length}\r\n".encode()
    return head + extra + b"Connection: close\r\n\r\n" + body


def fetch_raw(response: bytes, hold_open: bool = False, **kw):
    """(data or None, error code or None) of fetching from a server that answers `response`."""
    async def main():
        server, port = await serve_raw(response, hold_open)
        try:
            async with aiohttp.ClientSession() as http:
                got = await asyncio.wait_for(fetch_object(http, grant(f"http://127.0.0.1:{port}/o"), **kw), 10)
                return got.data, None
        except StorageError as e:
            return None, e.code
        finally:
            server.close()
    return run(main())


@pytest.fixture(autouse=True)
def short_read_timeout(monkeypatch):
    monkeypatch.setattr(remote, "READ_TIMEOUT_S", 0.5)


def check_outcome(status, body, declared, data, code, expect_bytes=None):
    """What the client may answer: the exact body of a well-formed 200, or a StorageError."""
    if data is not None:
        # HTTP framing decides where a body ends: a Content-Length shorter than what the server sent
        # gives that many bytes (the caller's expect_bytes / SHA-256 / MAC checks catch such a lie).
        assert status == 200
        assert data == (body if declared is None else body[:declared])
        if expect_bytes is not None:
            assert len(data) == expect_bytes
    else:
        assert isinstance(code, str) and code


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.sampled_from([200, 200, 200, 206, 301, 403, 404, 412, 500]),
       body=st.binary(max_size=3000),
       lie=st.sampled_from([None, 0, -1, 1, 1000]),
       hold_open=st.booleans(),
       expect=st.booleans())
def test_fetch_from_hostile_server_gives_exact_bytes_or_storage_error(status, body, lie, hold_open, expect):
    declared = None if lie is None else max(0, len(body) + lie)
    expect_bytes = len(body) if expect else None
    data, code = fetch_raw(raw_response(status, body, declared), hold_open=hold_open, expect_bytes=expect_bytes)
    check_outcome(status, body, declared, data, code, expect_bytes)
    if status == 200 and declared == len(body) and not hold_open:
        assert data == body


def corpus_cases():
    return sorted(CORPUS.glob("*.http"))


@pytest.mark.parametrize("path", corpus_cases(), ids=lambda p: p.stem)
def test_corpus_responses(path):
    """Each corpus file is a raw response; its name says what the client must do: ok-*, err-<code>-*."""
    data, code = fetch_raw(path.read_bytes(), hold_open=path.stem.endswith("-open"))
    kind = path.stem.split("-")
    if kind[0] == "ok":
        assert code is None and data is not None
    else:
        assert data is None and code == kind[1], (path.name, code)


def test_chunk_mac_matches_the_edge():
    """The vector test/storage-grants.test.ts checks too."""
    h = {"producer": "reprise-gpu/0.1.0;weights=sha256:00;dtype=bfloat16;device=cpu", "codec": "spec-v1", "layers": 30,
         "kv_heads": 3, "head_dim": 64, "token_start": 0, "token_end": 40, "payload_bytes": 1234,
         "payload_sha256": "ab" * 32}
    assert chunk_mac(mac_key(" test-secret\n"), "sessions/sess_00/0.kv", h) == \
        "3678ef19a28249274566922b12d7fd2a23781a09f6a4cd18f122ed520d42f47f"


def test_chunk_mac_binds_key_and_fields():
    k = mac_key("secret\n")
    assert k == mac_key("secret")
    h = {"producer": "reprise-gpu/0.1.0;x", "codec": "spec-v1", "layers": 30, "kv_heads": 3, "head_dim": 64,
         "token_start": 0, "token_end": 40, "payload_bytes": 1234, "payload_sha256": "ab" * 32}
    h["mac"] = chunk_mac(k, "sessions/s1/0.kv", h)
    assert verify_mac(k, "sessions/s1/0.kv", h)
    assert not verify_mac(k, "sessions/s2/0.kv", h)
    assert not verify_mac(mac_key("other"), "sessions/s1/0.kv", h)
    for f, v in [("token_end", 41), ("payload_sha256", "cd" * 32), ("codec", "raw-bf16"), ("layers", True)]:
        assert not verify_mac(k, "sessions/s1/0.kv", {**h, f: v}), f
    assert not verify_mac(k, "sessions/s1/0.kv", {k2: v for k2, v in h.items() if k2 != "mac"})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["producer", "codec", "layers", "token_start", "token_end", "payload_bytes",
                                        "payload_sha256", "kv_heads", "head_dim", "mac"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70), st.lists(st.integers()))))
def test_verify_mac_never_raises_on_hostile_headers(h):
    assert verify_mac(mac_key("s"), "k", h) in (True, False)
