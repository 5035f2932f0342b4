"""POST /v1/generate with a LoRA adapter (docs/backend-wire-format.md, "adapter"): files inline, cached by
key afterwards; a malformed adapter is a 400, an unknown key without files a 409."""

import functools
import json

from engine_util import tiny_engine
from lora_util import peft_adapter
from reprise_gpu.engine.sampling import SamplingParams
from reprise_gpu.lora.registry import adapter_key
from reprise_gpu.server.frames import KIND_ADAPTER, KIND_JSON, frame
from test_server import PROMPT, body, events, post, with_client

@functools.cache
def files_and_key():
    files = peft_adapter("tiny", 8, ["q_proj", "v_proj", "down_proj"], seed=3, scale=3.0)
    return files, adapter_key(*files)


def with_adapter(files=None, key=None, inline=True):
    files = files or files_and_key()[0]
    key = key or files_and_key()[1]
    b = body(adapter={"key": key, "inline": inline})
    return b + (frame(KIND_ADAPTER, files[0]) + frame(KIND_ADAPTER, files[1]) if inline else b"")


def tokens(raw):
    return [e["id"] for k, e in events(raw) if k == KIND_JSON and e.get("type") == "token"]


def test_adapter_inline_then_cached():
    FILES, KEY = files_and_key()

    async def t(client, eng):
        r = await post(client, with_adapter(inline=False))
        assert r.status == 409 and (await r.json())["error"]["code"] == "adapter_needed"
        r = await post(client, with_adapter())
        assert r.status == 200
        got = tokens(await r.read())
        assert eng.adapters.get(KEY) is not None
        ref = tiny_engine(max_loras=2)                      # the same adapter on an engine of its own
        seq = ref.add_request(PROMPT, SamplingParams(max_tokens=6, temperature=0), adapter=ref.adapters.add(*FILES))
        while ref.has_work():
            ref.step()
        assert got == seq.completion_token_ids
        base = tokens(await (await post(client, body())).read())
        assert base != got
        r = await post(client, with_adapter(inline=False))          # cached by key now: no files needed
        assert r.status == 200 and tokens(await r.read()) == got
    with_client(t, max_loras=2)


def test_malformed_adapter_is_400():
    FILES, KEY = files_and_key()

    async def t(client, eng):
        cfg = json.loads(FILES[0])
        cfg["r"] = 300
        bad = (json.dumps(cfg).encode(), FILES[1])
        r = await post(client, with_adapter(bad, adapter_key(*bad)))
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_adapter"
        r = await post(client, with_adapter(FILES, "0" * 64))                    # files are not that key's
        assert r.status == 400 and "do not match" in (await r.json())["error"]["message"]
        assert len(eng.adapters) == 0
    with_client(t, max_loras=2)
