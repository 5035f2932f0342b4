"""The HTTP server end to end through aiohttp's test client (tiny preset, CPU)."""

import asyncio
import json
import struct
import time

import pytest

from engine_util import ready_client, tiny_engine
from reprise_gpu.engine import kv_io
from reprise_gpu.server import auth
from reprise_gpu.server.frames import KIND_JSON, KIND_KV, frame, json_frame, split_frames

SECRET = "test-secret"
PROMPT = [(5 * i + 1) % 256 for i in range(21)]


def body(prompt=PROMPT, sampling=None, chunks=(), model="tiny", **extra):
    head = {"version": 1, "model": model, "prompt_token_ids": prompt,
            "sampling": sampling or {"max_tokens": 6, "temperature": 0}, "chunks": len(chunks), **extra}
    return json_frame(head) + b"".join(frame(KIND_KV, c) for c in chunks)


def signed(b: bytes, secret=SECRET, now=None):
    return auth.signed_headers(secret.encode(), b, now)


def with_client(fn, **engine_overrides):
    async def main():
        kw = dict(secret=SECRET)
        kw.update(engine_overrides)
        eng = tiny_engine(**kw)
        client = await ready_client(eng)
        try:
            await fn(client, eng)
        finally:
            await client.close()
    asyncio.run(main())


def events(raw: bytes):
    return [(k, json.loads(p) if k == KIND_JSON else p) for k, p in split_frames(raw)]


async def post(client, b, headers=None):
    return await client.post("/v1/generate", data=b, headers=signed(b) if headers is None else headers)


def test_health_ready_metrics():
    async def t(client, eng):
        assert (await client.get("/healthz")).status == 200
        r = await client.get("/readyz")
        assert r.status == 200 and (await r.json())["model"] == "tiny"
        r = await post(client, body())
        await r.read()
        text = await (await client.get("/metrics")).text()
        for name in ("reprise_queue_depth", "reprise_running_batch_size", "reprise_generated_tokens_total",
                     "reprise_generation_tokens_per_second", "reprise_kv_blocks_in_use", "reprise_kv_blocks_total"):
            assert name in text, name
        assert "reprise_generated_tokens_total 6.0" in text
        assert f"reprise_kv_blocks_total {eng.block_manager.num_usable}.0" in text
    with_client(t)


@pytest.mark.parametrize("case", ["missing", "bad", "stale", "other_body", "wrong_secret"])
def test_signature_required(case):
    async def t(client, eng):
        b = body()
        h = {"missing": {}, "bad": {**signed(b), auth.SIGNATURE_HEADER: "v1=" + "0" * 64},
             "stale": signed(b, now=time.time() - 301), "other_body": signed(body(prompt=[1, 2])),
             "wrong_secret": signed(b, secret="nope")}[case]
        r = await post(client, b, headers=h)
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    with_client(t)


@pytest.mark.parametrize("kv_codec", ["raw", "spec-v1"])
def test_stream_tokens_kv_done_and_resume(kv_codec):
    async def t(client, eng):
        r = await post(client, body())
        assert r.status == 200 and r.headers["Content-Type"] == "application/x-reprise-frames"
        evs = events(await r.read())
        tokens = [e for k, e in evs if k == KIND_JSON and e["type"] == "token"]
        kv = [e for k, e in evs if k == KIND_KV]
        kinds = [k if k == KIND_KV else e["type"] for k, e in evs]
        assert kinds == ["token"] * 6 + [KIND_KV, "done"]
        done = evs[-1][1]
        assert done == {"type": "done", "finish_reason": "length",
                        "usage": {"prompt_tokens": 21, "completion_tokens": 6, "cached_tokens": 0}}
        chunk = eng.kv.parse(kv[0])
        assert (chunk.token_start, chunk.token_end) == (0, 21 + 6 - 1)
        generated = [e["id"] for e in tokens]
        assert generated == eng.generate([PROMPT], eng_params())[0]["token_ids"]

        # next turn: history + new tokens, with the returned chunk
        nxt = PROMPT + generated + [3, 1, 4]
        full = events(await (await post(client, body(prompt=nxt))).read())
        resumed = events(await (await post(client, body(prompt=nxt, chunks=[kv[0]]))).read())
        ids = lambda evs: [e["id"] for k, e in evs if k == KIND_JSON and e["type"] == "token"]   # noqa: E731
        assert ids(resumed) == ids(full)
        assert resumed[-1][1]["usage"]["cached_tokens"] == 26
        new_chunk = eng.kv.parse([e for k, e in resumed if k == KIND_KV][0])
        assert (new_chunk.token_start, new_chunk.token_end) == (26, len(nxt) + 6 - 1)
        # a corrupt chunk is ignored: same tokens, nothing cached
        bad = bytearray(kv[0])
        bad[-1] ^= 0xFF
        again = events(await (await post(client, body(prompt=nxt, chunks=[bytes(bad)]))).read())
        assert ids(again) == ids(full) and again[-1][1]["usage"]["cached_tokens"] == 0
        assert eng.block_manager.num_used == 0
    with_client(t, kv_codec=kv_codec)


def eng_params():
    from reprise_gpu.engine.sampling import SamplingParams
    return SamplingParams(max_tokens=6, temperature=0)


@pytest.mark.parametrize("case,status", [("garbage", 400), ("version", 400), ("chunk_count", 400),
                                         ("sampling", 400), ("model", 404), ("too_long", 400)])
def test_bad_requests(case, status):
    async def t(client, eng):
        b = {"garbage": b"\x07\x00", "version": body(version=2), "chunk_count": body(chunks=[b"x"])[:-6],
             "sampling": body(sampling={"temperature": -1}), "model": body(model="llama3-8b"),
             "too_long": body(prompt=[1] * 2000)}[case]
        r = await post(client, b)
        assert r.status == status
        assert "message" in (await r.json())["error"]
    with_client(t)


def test_queue_full_503_and_disconnect_frees_blocks():
    async def t(client, eng):
        long = body(sampling={"max_tokens": 500, "temperature": 0})
        a = await post(client, long)                        # running (max_num_seqs=1)
        head = await a.content.readexactly(5)
        kind, n = struct.unpack("<BI", head)
        assert kind == KIND_JSON and json.loads(await a.content.readexactly(n))["type"] == "token"
        b_task = asyncio.ensure_future(post(client, long))  # waits behind a
        for _ in range(200):
            if eng.scheduler.num_waiting == 1:
                break
            await asyncio.sleep(0.02)
        c = await post(client, body())
        assert c.status == 503 and c.headers["Retry-After"] == "1"
        assert (await c.json())["error"]["code"] == "queue_full"
        text = await (await client.get("/metrics")).text()
        assert "reprise_queue_depth 1.0" in text and "reprise_running_batch_size 1.0" in text
        a.close()                                           # client goes away: a is aborted, b gets admitted
        b = await b_task
        assert b.status == 200
        await b.content.readexactly(5)
        b.close()
        for _ in range(300):
            if eng.block_manager.num_used == 0 and not eng.has_work():
                break
            await asyncio.sleep(0.05)
        assert eng.block_manager.num_used == 0 and not eng.has_work()
        eng.block_manager.check()
        assert 'reprise_requests_finished_total{reason="abort"} 2.0' in await (await client.get("/metrics")).text()
    with_client(t, max_num_seqs=1, max_num_batched_tokens=64, max_queue=1)


def test_failed_chunk_export_sends_the_turn_without_kv(monkeypatch):
    """A chunk whose coding fails is left out; tokens and `done` still arrive (the next turn recomputes)."""
    from reprise_gpu.codec import api as codec_api

    def broken(*a, **k):
        raise RuntimeError("coder failure")
    monkeypatch.setattr(codec_api, "encode", broken)

    async def t(client, eng):
        evs = events(await (await post(client, body())).read())
        assert [k if k == KIND_KV else e["type"] for k, e in evs] == ["token"] * 6 + ["done"]
    with_client(t, kv_codec="spec-v1")
