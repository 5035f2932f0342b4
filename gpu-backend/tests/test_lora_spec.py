"""spec-v1 session chunks with a LoRA adapter: the FP8 speculator applies the adapter (BF16 LoRA on the
un-quantized activations), so an adapter session resumes exactly; chunks never cross to another adapter."""

import random

import pytest
import torch

from engine_util import tiny_model
from lora_util import peft_adapter
from reprise_gpu.config import Config
from reprise_gpu.engine.llm_engine import LLMEngine
from reprise_gpu.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def setup():
    eng = LLMEngine(Config(model="tiny", device="cpu", dtype="bfloat16", block_size=4, num_kv_blocks=256,
                           max_num_seqs=4, max_num_batched_tokens=128, prefill_chunk_size=64, kv_codec="spec-v1",
                           max_loras=2), model=tiny_model("bfloat16"))
    files = [peft_adapter("tiny", r, t, seed=10 + r, scale=3.0) for r, t in
             ((8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), (4, ["v_proj"]))]
    return eng, [eng.adapters.add(c, w) for c, w in files]


def turn(eng, prompt, adapter, chunks=()):
    seq = eng.add_request(prompt, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True), kv_chunks=list(chunks),
                          export_kv=True, adapter=adapter)
    while eng.has_work():
        eng.step()
    return seq


def test_adapter_session_resumes_exactly(setup):
    eng, (ad, other) = setup
    rng = random.Random(0)
    first = turn(eng, [rng.randrange(256) for _ in range(20)], ad)
    chunk = first.kv_chunk
    follow = first.token_ids + [rng.randrange(256) for _ in range(6)]
    again = turn(eng, follow, ad, [chunk])
    assert again.num_restored == len(first) - 1
    assert again.completion_token_ids == turn(eng, follow, ad).completion_token_ids      # == recompute
    assert turn(eng, follow, other, [chunk]).num_restored == 0                          # another adapter
    assert turn(eng, follow, None, [chunk]).num_restored == 0                           # the base model


def test_speculator_with_the_adapter_codes_smaller(setup):
    """The adapter's speculator predicts the adapter's K/V better than the base speculator does."""
    eng, (ad, _) = setup
    coder = eng.kv.coder
    rng = random.Random(1)
    seq = turn(eng, [rng.randrange(256) for _ in range(40)], ad)
    exact = coder.decode(eng.kv.parse(seq.kv_chunk, ad), seq.token_ids, None, ad).kv
    with_lora = len(coder.encode_async(seq.token_ids, None, exact, 0, "p", ad).result())
    without = len(coder.encode_async(seq.token_ids, None, exact, 0, "p", None).result())
    assert with_lora < without, (with_lora, without)
