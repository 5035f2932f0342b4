"""/v1/generate on the grant path (docs/storage-grants.md): the backend fetches the chunks the edge
granted from a real HTTP object store and uploads the new one itself; bad, missing or swapped chunks
mean a recompute (same tokens), reported with a reason; nothing but JSON frames comes back."""

import asyncio
import json

import pytest

from engine_util import ready_client, tiny_engine
from reprise_gpu.server.frames import KIND_JSON, KIND_KV, json_frame, split_frames
from reprise_gpu.server import auth
from reprise_gpu.storage.chunk_mac import mac_key, verify_mac
from storage_util import grant_json, start_store

SECRET = "test-secret"
PROMPT = [(5 * i + 1) % 256 for i in range(21)]
SAMPLING = {"max_tokens": 6, "temperature": 0}


def request(prompt, storage):
    b = json_frame({"version": 1, "model": "tiny", "prompt_token_ids": prompt, "sampling": SAMPLING, "chunks": 0,
                    "storage": storage})
    return b, auth.signed_headers(SECRET.encode(), b)


def chunk_ref(base, ev):
    """What the edge records from a kv_stored event, as the next turn's granted chunk."""
    return {"grant": grant_json(base, ev["key"]), "token_start": ev["token_start"], "token_end": ev["token_end"],
            "bytes": ev["bytes"], "sha256": ev["sha256"], "codec": ev["codec"], "mac": ev["mac"]}


def put(base, key, form="raw"):
    return {"grant": grant_json(base, key, "create", max_bytes=1 << 24), "form": form}


def scenario(fn, **engine_overrides):
    async def main():
        objects: dict[str, bytes] = {}
        runner, base = await start_store(objects)
        eng = tiny_engine(secret=SECRET, **engine_overrides)
        client = await ready_client(eng)
        try:
            async def turn(prompt, storage):
                b, h = request(prompt, storage)
                r = await client.post("/v1/generate", data=b, headers=h)
                assert r.status == 200, await r.text()
                frames = split_frames(await r.read())
                assert all(k == KIND_JSON for k, _ in frames), "no KV frame on the grant path"
                return [json.loads(p) for _, p in frames]
            await fn(turn, base, objects, eng, client)
        finally:
            await client.close()
            await runner.cleanup()
    asyncio.run(main())


def of(evs, kind):
    return [e for e in evs if e["type"] == kind]


def ids(evs):
    return [e["id"] for e in of(evs, "token")]


@pytest.mark.parametrize("kv_codec,forms", [("raw", ["raw"]), ("spec-v1", ["coded", "raw"])])
def test_store_then_resume_from_storage(kv_codec, forms):
    async def t(turn, base, objects, eng, client):
        keys = ["s/0.kv", "s/0.alt.kv"][:len(forms)]
        t1 = await turn(PROMPT, {"chunks": [], "export_from": 0, "put": [put(base, k, f) for k, f in zip(keys, forms)]})
        stored = of(t1, "kv_stored")
        assert [e["key"] for e in stored] == keys
        assert [e["codec"] for e in stored] == ["spec-v1" if f == "coded" else "raw-bf16" for f in forms]
        for e in stored:
            assert len(objects[e["key"]]) == e["bytes"] and (e["token_start"], e["token_end"]) == (0, 26)
            header = eng.kv.parse(objects[e["key"]])       # a container the engine accepts
            assert header.token_end == 26
        assert [e["type"] for e in t1][-2:] == ["stats", "done"]
        stats = of(t1, "stats")[0]["stats"]
        assert stats["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2 and stats["prefill"]["tokens"] == 21

        nxt = PROMPT + ids(t1) + [3, 1, 4]
        full = await turn(nxt, {"chunks": [], "export_from": 0, "put": []})
        assert not of(full, "kv_stored")
        for e in stored:         # each stored form restores on its own
            resumed = await turn(nxt, {"chunks": [chunk_ref(base, e)], "export_from": 26, "put": [put(base, "s/1." + e["key"][4:])]})
            assert ids(resumed) == ids(full)
            assert of(resumed, "done")[0]["usage"]["cached_tokens"] == 26
            st = of(resumed, "stats")[0]["stats"]["restore"]
            assert st["fetch_bytes"] == e["bytes"] and st["refused"] == [] and st["tokens"] == 26
            assert (st["decoded_bytes"] > 0) == (e["codec"] == "spec-v1")
            new = of(resumed, "kv_stored")[0]
            assert new["token_start"] == 26
        assert eng.block_manager.num_used == 0
    scenario(t, kv_codec=kv_codec)


@pytest.mark.parametrize("fault,reason", [("missing", "missing"), ("flip", "corrupt"), ("truncate", "corrupt"),
                                          ("swap", "unauthentic"), ("rehash", "unauthentic")])
def test_faulty_chunk_is_recomputed_with_a_reason(fault, reason):
    async def t(turn, base, objects, eng, client):
        t1 = await turn(PROMPT, {"chunks": [], "export_from": 0, "put": [put(base, "a/0.kv")]})
        other = await turn(PROMPT[::-1], {"chunks": [], "export_from": 0, "put": [put(base, "b/0.kv")]})
        ref = chunk_ref(base, of(t1, "kv_stored")[0])
        if fault == "missing":
            del objects["a/0.kv"]
        elif fault == "flip":
            objects["a/0.kv"] = objects["a/0.kv"][:-1] + bytes([objects["a/0.kv"][-1] ^ 1])
        elif fault == "truncate":
            objects["a/0.kv"] = objects["a/0.kv"][:-100]
        else:
            if fault == "swap":     # another session's chunk at this key, and a record that matches its bytes
                b = of(other, "kv_stored")[0]
                objects["a/0.kv"] = objects["b/0.kv"]
                ref.update(bytes=b["bytes"], sha256=b["sha256"], mac=b["mac"])
            else:                   # the payload rewritten, its SHA-256 recomputed: only the MAC can tell
                import hashlib
                from reprise_gpu.engine import kv_io
                data = bytearray(objects["a/0.kv"])
                magic, ver, hlen = kv_io.PREFIX.unpack_from(data)
                h = json.loads(data[kv_io.PREFIX.size:kv_io.PREFIX.size + hlen])
                payload = bytearray(data[kv_io.PREFIX.size + hlen:])
                payload[0] ^= 1
                h["payload_sha256"] = hashlib.sha256(payload).hexdigest()
                hb = json.dumps(h, separators=(",", ":")).encode()
                objects["a/0.kv"] = kv_io.PREFIX.pack(magic, ver, len(hb)) + hb + bytes(payload)
                ref.update(bytes=len(objects["a/0.kv"]), sha256=hashlib.sha256(objects["a/0.kv"]).hexdigest())
                assert not verify_mac(mac_key(SECRET), "a/0.kv", h)
        nxt = PROMPT + ids(t1) + [3, 1, 4]
        full = await turn(nxt, {"chunks": [], "export_from": 0, "put": []})
        got = await turn(nxt, {"chunks": [ref], "export_from": 26, "put": [put(base, "a/1.kv")]})
        assert ids(got) == ids(full)
        assert of(got, "done")[0]["usage"]["cached_tokens"] == 0
        assert of(got, "stats")[0]["stats"]["restore"]["refused"] == [{"token_start": 0, "reason": reason}]
        assert of(got, "kv_stored")[0]["token_start"] == 0        # the new chunk covers what was refused
        metrics = await (await client.get("/metrics")).text()
        assert f'reprise_kv_chunks_refused_total{{reason="{reason}"}} 1.0' in metrics
    scenario(t)


def test_store_refused_by_storage_is_reported_not_fatal():
    async def t(turn, base, objects, eng, client):
        objects["x/0.kv"] = b"already here"
        evs = await turn(PROMPT, {"chunks": [], "export_from": 0, "put": [put(base, "x/0.kv")]})
        assert of(evs, "kv_store_failed") == [{"type": "kv_store_failed", "key": "x/0.kv", "reason": "exists"}]
        assert objects["x/0.kv"] == b"already here" and of(evs, "done")
    scenario(t)


@pytest.mark.parametrize("storage", [[], {"chunks": {}}, {"put": [{"grant": {}, "form": "raw"}]},
                                     {"chunks": [{"grant": grant_json("http://x", "k"), "token_start": 5,
                                                  "token_end": 4, "bytes": 1, "sha256": "0" * 64, "codec": "raw-bf16",
                                                  "mac": None}]},
                                     {"put": [{"grant": grant_json("http://x", "k"), "form": "raw"}]}])
def test_malformed_storage_is_400(storage):
    async def t(turn, base, objects, eng, client):
        b, h = request(PROMPT, storage)
        r = await client.post("/v1/generate", data=b, headers=h)
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
    scenario(t)


@pytest.mark.parametrize("fault", [None, "flip"])
def test_split_restore_computes_the_front_while_the_back_loads(fault):
    """restore_from k: tokens [0, k) are prefilled while the chunk of [k, T) is fetched, then attached;
    the answer is the full recompute's, and a bad back chunk only means more is computed."""
    async def t(turn, base, objects, eng, client):
        t1 = await turn(PROMPT, {"chunks": [], "export_from": 0, "put": [put(base, "s/0.kv")]})
        p2 = PROMPT + ids(t1) + [3, 1, 4]
        t2 = await turn(p2, {"chunks": [chunk_ref(base, of(t1, "kv_stored")[0])], "export_from": 26,
                             "put": [put(base, "s/1.kv")]})
        back = of(t2, "kv_stored")[0]
        k, T = back["token_start"], back["token_end"]
        if fault:
            objects["s/1.kv"] = objects["s/1.kv"][:-1] + bytes([objects["s/1.kv"][-1] ^ 1])
        p3 = p2 + ids(t2) + [7, 7]
        full = await turn(p3, {"chunks": [], "export_from": 0, "put": []})
        got = await turn(p3, {"chunks": [chunk_ref(base, back)], "restore_from": k, "export_from": T,
                              "put": [put(base, "s/2.kv")]})
        assert ids(got) == ids(full)
        usage = of(got, "done")[0]["usage"]
        new = of(got, "kv_stored")[0]
        if fault:
            assert usage["cached_tokens"] == 0
            assert of(got, "stats")[0]["stats"]["restore"]["refused"] == [{"token_start": k, "reason": "corrupt"}]
            assert new["token_start"] == k          # the edge keeps [0, k); the new chunk covers the rest
        else:
            assert usage["cached_tokens"] == T - k
            assert new["token_start"] == T
        assert eng.block_manager.num_used == 0
    scenario(t, prefill_chunk_size=8)
