"""LoRA adapters the backend fetches itself through read grants (docs/lora-adapters.md, "Edge -> backend"):
the `adapter` object's grant form, a real fetch from a local HTTP object store, one fetch for concurrent
requests, other requests stepping meanwhile, and hostile storage (wrong hash, oversize, missing)."""

import asyncio
import hashlib
import json

import pytest

from engine_util import ready_client, tiny_engine
from reprise_gpu.engine.sampling import SamplingParams
from reprise_gpu.lora.registry import MAX_CONFIG_BYTES
from reprise_gpu.server.frames import KIND_ADAPTER, FrameError, frame, parse_generate_body
from storage_util import grant_json, start_store
from test_lora_server import files_and_key, tokens
from test_server import PROMPT, body, post

CFG_KEY, W_KEY = "adapters/t/a/adapter_config.json", "adapters/t/a/adapter_model.safetensors"


def granted(base, data: bytes, key: str, **over) -> dict:
    return {"grant": grant_json(base, key), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **over}


def adapter_obj(base, files, key, **over):
    return {"key": key, "config": granted(base, files[0], CFG_KEY), "weights": granted(base, files[1], W_KEY), **over}


def reference_tokens(files):
    """The adapter's greedy tokens on an engine of its own, from the files directly."""
    ref = tiny_engine(max_loras=2)
    seq = ref.add_request(PROMPT, SamplingParams(max_tokens=6, temperature=0), adapter=ref.adapters.add(*files))
    while ref.has_work():
        ref.step()
    return seq.completion_token_ids


# -- the `adapter` object ---------------------------------------------------------------------------

def test_grant_form_parses():
    files, key = files_and_key()
    req = parse_generate_body(body(adapter=adapter_obj("http://s", files, key)))
    assert req.adapter == key and req.adapter_files is None
    cfg, w = req.adapter_grants
    assert (cfg.grant.key, cfg.bytes, w.grant.key, w.bytes) == (CFG_KEY, len(files[0]), W_KEY, len(files[1]))
    assert w.sha256 == hashlib.sha256(files[1]).hexdigest()


@pytest.mark.parametrize("change,why", [
    (lambda a: a.pop("weights"), "go together"),
    (lambda a: a["config"].update(sha256="A" * 64), "sha256"),
    (lambda a: a["config"].update(bytes=-1), "bytes"),
    (lambda a: a["weights"].update(grant={**a["weights"]["grant"], "mode": "create", "method": "PUT"}),
     "read grant"),
    (lambda a: a["weights"]["grant"].update(url="file:///etc/passwd"), "http"),
    (lambda a: a.update(weights="x"), "must be an object"),
])
def test_malformed_grant_form_is_refused(change, why):
    files, key = files_and_key()
    ad = adapter_obj("http://s", files, key)
    change(ad)
    with pytest.raises(FrameError, match=why):
        parse_generate_body(body(adapter=ad))


def test_inline_and_grants_together_are_refused():
    files, key = files_and_key()
    b = body(adapter=adapter_obj("http://s", files, key, inline=True))
    with pytest.raises(FrameError, match="not both"):
        parse_generate_body(b + frame(KIND_ADAPTER, files[0]) + frame(KIND_ADAPTER, files[1]))


# -- real fetches through a local object store --------------------------------------------------------

def with_store(fn, objects, **store_kw):
    async def main():
        runner, base = await start_store(objects, **store_kw)
        eng = tiny_engine(secret="test-secret", max_loras=2)
        client = await ready_client(eng)
        try:
            await fn(client, eng, base)
        finally:
            await client.close()
            await runner.cleanup()
    asyncio.run(main())


def test_fetched_adapter_serves_like_its_files_and_is_fetched_once():
    files, key = files_and_key()
    gets: list[str] = []
    gate = asyncio.Event()

    async def t(client, eng, base):
        gate.clear()
        b = body(adapter=adapter_obj(base, files, key))
        # Two requests for the same uncached adapter while storage holds the weights back, and a base
        # request that must finish meanwhile: fetching does not stall the engine.
        first = [asyncio.ensure_future(post(client, b)) for _ in range(2)]
        await asyncio.sleep(0.2)
        r = await asyncio.wait_for(post(client, body()), 30)
        base_tokens = tokens(await r.read())
        assert r.status == 200 and len(base_tokens) == 6 and not any(f.done() for f in first)
        gate.set()
        got = [tokens(await (await f).read()) for f in first]
        assert got[0] == got[1] == reference_tokens(files) != base_tokens
        assert sorted(gets) == sorted([CFG_KEY, W_KEY]) and eng.adapters.get(key) is not None
        # cached by key now: the next request fetches nothing
        r = await post(client, b)
        assert r.status == 200 and tokens(await r.read()) == got[0] and len(gets) == 2
        metrics = await (await client.get("/metrics")).text()
        assert f'reprise_storage_bytes_total{{direction="get"}} {float(len(files[0]) + len(files[1]))}' in metrics
    with_store(t, {CFG_KEY: files[0], W_KEY: files[1]}, gets=gets, gates={W_KEY: gate})


def flip(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("case", ["wrong_sha", "tampered", "longer", "oversize", "other_key", "bad_contents"])
def test_hostile_storage_is_400_bad_adapter(case):
    files, key = files_and_key()
    objects = {CFG_KEY: files[0], W_KEY: files[1]}
    ad = adapter_obj("B", files, key)
    if case == "wrong_sha":             # the edge's record and the object disagree
        ad["weights"]["sha256"] = "0" * 64
    elif case == "tampered":            # the object was rewritten after upload: same length, other bytes
        objects[W_KEY] = flip(files[1])
    elif case == "longer":              # storage sends more than the recorded size: cut off while streaming
        objects[W_KEY] = files[1] + b"\0" * 4096
    elif case == "oversize":            # a config over the model's limit is not even fetched
        big = b" " * (MAX_CONFIG_BYTES + 1)
        objects[CFG_KEY] = big
        ad["config"] = granted("B", big, CFG_KEY)
    elif case == "other_key":           # both files intact, but they are not that adapter's
        ad["key"] = "1" * 64
    elif case == "bad_contents":        # recorded and delivered consistently, but not a valid adapter
        cfg = json.loads(files[0])
        cfg["r"] = 300
        objects[CFG_KEY] = json.dumps(cfg).encode()
        ad["config"] = granted("B", objects[CFG_KEY], CFG_KEY)
        from reprise_gpu.lora.registry import adapter_key
        ad["key"] = adapter_key(objects[CFG_KEY], files[1])
    gets: list[str] = []

    async def t(client, eng, base):
        for f in ("config", "weights"):
            ad[f]["grant"] = grant_json(base, ad[f]["grant"]["key"])
        r = await post(client, body(adapter=ad))
        err = (await r.json())["error"]
        assert (r.status, err["code"]) == (400, "bad_adapter"), err
        assert len(eng.adapters) == 0
        if case == "oversize":
            assert CFG_KEY not in gets
    with_store(t, objects, gets=gets)


def test_missing_object_is_502_adapter_fetch_failed():
    files, key = files_and_key()

    async def t(client, eng, base):
        r = await post(client, body(adapter=adapter_obj(base, files, key)))
        err = (await r.json())["error"]
        assert (r.status, err["code"]) == (502, "adapter_fetch_failed") and "not_found" in err["message"]
        assert len(eng.adapters) == 0
    with_store(t, {CFG_KEY: files[0]})


def test_distinct_adapter_fetches_are_bounded():
    from reprise_gpu.lora.registry import adapter_key
    from reprise_gpu.server.adapter_fetch import MAX_CONCURRENT_FETCHES
    files, _ = files_and_key()
    n = MAX_CONCURRENT_FETCHES + 1
    # n distinct adapters of the same math: the config differs by trailing whitespace, so the key does too
    variants = [(files[0] + b" " * (i + 1), files[1]) for i in range(n)]
    objects, gates, gets = {}, {}, []
    ads = []
    for i, (c, w) in enumerate(variants):
        ck, wk = f"adapters/t/{i}/adapter_config.json", f"adapters/t/{i}/adapter_model.safetensors"
        objects[ck], objects[wk] = c, w
        gates[wk] = asyncio.Event()
        ads.append({"key": adapter_key(c, w), "config": {"grant": None, "bytes": len(c), "sha256": hashlib.sha256(c).hexdigest()},
                    "weights": {"grant": None, "bytes": len(w), "sha256": hashlib.sha256(w).hexdigest()}, "_keys": (ck, wk)})

    async def t(client, eng, base):
        for ad in ads:
            ck, wk = ad.pop("_keys")
            ad["config"]["grant"], ad["weights"]["grant"] = grant_json(base, ck), grant_json(base, wk)
        pending = [asyncio.ensure_future(post(client, body(adapter=ad))) for ad in ads]
        await asyncio.sleep(0.5)
        assert len({k.split("/")[2] for k in gets}) == MAX_CONCURRENT_FETCHES     # the fifth waits for a slot
        for g in gates.values():
            g.set()
        got = [tokens(await (await f).read()) for f in pending]
        assert all(g == got[0] for g in got) and len(got[0]) == 6 and len(gets) == 2 * n and len(eng.adapters) == n
    with_store(t, objects, gets=gets, gates=gates)
