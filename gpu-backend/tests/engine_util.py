"""Shared helpers for the engine tests: a tiny random-weight engine on the CPU."""

import functools

from reprise_gpu.config import Config
from reprise_gpu.engine.llm_engine import LLMEngine, load_model


@functools.cache
def tiny_model(dtype: str = "bfloat16", seed: int = 0):
    return load_model(Config(model="tiny", device="cpu", dtype=dtype), seed=seed)


def tiny_engine(dtype: str = "bfloat16", seed: int = 0, **overrides) -> LLMEngine:
    kw = dict(model="tiny", device="cpu", dtype=dtype, block_size=4, num_kv_blocks=256, max_num_seqs=8,
              max_num_batched_tokens=64, prefill_chunk_size=32, max_queue=16)
    kw.update(overrides)
    return LLMEngine(Config(**kw), model=tiny_model(dtype, seed))


async def ready_client(eng: LLMEngine):
    """An aiohttp test client of the server app around `eng`, started and answering /readyz."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from reprise_gpu.server.app import make_app
    client = TestClient(TestServer(make_app(eng.config, engine=eng)))
    await client.start_server()
    for _ in range(100):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    return client
