"""The engine end to end on the tiny preset (random weights, CPU): batching must not change results."""

import random

import pytest

from engine_util import tiny_engine
from reprise_gpu.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0)


def prompts(n, seed=0, lo=3, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.fixture(scope="module")
def alone():
    """Greedy reference: each prompt run on its own."""
    eng = tiny_engine()
    return [eng.generate([p], GREEDY)[0]["token_ids"] for p in prompts(6)]


def test_greedy_alone_equals_batched(alone):
    eng = tiny_engine()
    out = eng.generate(prompts(6), GREEDY)
    assert [o["token_ids"] for o in out] == alone
    assert eng.block_manager.num_used == 0


def test_greedy_same_with_small_chunks_and_staggered_arrivals(alone):
    eng = tiny_engine(max_num_batched_tokens=16, prefill_chunk_size=5, max_num_seqs=3)
    ps = prompts(6)
    seqs, results = [], {}
    for i, p in enumerate(ps):
        seqs.append(eng.add_request(p, GREEDY))
        eng.step()                              # each newcomer joins a batch already decoding
    while eng.has_work():
        eng.step()
    assert [s.completion_token_ids for s in seqs] == alone


def test_preemption_recomputes_to_the_same_tokens(alone):
    eng = tiny_engine(num_kv_blocks=16, block_size=4)    # 15 usable blocks: 60 tokens for 6 sequences
    seqs = [eng.add_request(p, GREEDY) for p in prompts(6)]
    while eng.has_work():
        eng.step()
    assert sum(s.num_preemptions for s in seqs) > 0, "pool was meant to be too small"
    assert [s.completion_token_ids for s in seqs] == alone
    eng.block_manager.check()
    assert eng.block_manager.num_used == 0


def test_seeded_sampling_reproducible_regardless_of_batch():
    p = prompts(4, seed=1)
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=1234)
    eng = tiny_engine()
    solo = eng.generate([p[0]], params)[0]["token_ids"]
    others = [SamplingParams(max_tokens=10, temperature=1.0, seed=s) for s in (1, 2, 3)]
    batched = eng.generate(p, [params] + others)
    assert batched[0]["token_ids"] == solo
    assert len({tuple(o["token_ids"]) for o in batched}) > 1
    other_seed = eng.generate([p[0]], SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=99))
    assert other_seed[0]["token_ids"] != solo


def test_abort_frees_blocks():
    eng = tiny_engine()
    a = eng.add_request(prompts(1)[0], SamplingParams(max_tokens=20, temperature=0))
    b = eng.add_request(prompts(1, seed=5)[0], SamplingParams(max_tokens=20, temperature=0))
    for _ in range(3):
        eng.step()
    assert eng.block_manager.num_used > 0
    assert eng.abort(a.seq_id) and a.finish_reason == "abort"
    c = eng.add_request([1, 2, 3], GREEDY)        # still waiting when aborted
    assert eng.abort(c.seq_id)
    while eng.has_work():
        eng.step()
    assert b.finish_reason == "length" and eng.block_manager.num_used == 0
    assert not eng.abort(b.seq_id)
    eng.block_manager.check()


def test_stop_token_and_stop_string():
    eng = tiny_engine()
    p = prompts(1, seed=3)[0]
    ref = eng.generate([p], SamplingParams(max_tokens=16, temperature=0))[0]
    stop_tok = ref["token_ids"][4]
    out = eng.generate([p], SamplingParams(max_tokens=16, temperature=0, stop_token_ids=[stop_tok]))[0]
    first = ref["token_ids"].index(stop_tok)
    assert out["token_ids"] == ref["token_ids"][:first + 1] and out["finish_reason"] == "stop"
    text = ref["text"]
    stop = next(text[i:i + 2] for i in range(3, len(text) - 1) if "\ufffd" not in text[i:i + 2])
    out = eng.generate([p], SamplingParams(max_tokens=16, temperature=0, stop=[stop]))[0]
    assert out["finish_reason"] == "stop"
    assert out["text"] == text[:text.index(stop)]


def test_length_and_validation():
    eng = tiny_engine()
    out = eng.generate([[5, 6]], SamplingParams(max_tokens=3, temperature=0))[0]
    assert len(out["token_ids"]) == 3 and out["finish_reason"] == "length"
    with pytest.raises(ValueError):
        eng.add_request([300], GREEDY)                 # outside the vocabulary
    with pytest.raises(ValueError):
        eng.add_request(list(range(10)) * 200, GREEDY)  # longer than max_seq_len (1024)


def test_padded_decode_rows_do_not_change_real_rows():
    """What a CUDA graph of a larger size sees: padding rows write to block 0 and leave the real rows alone."""
    import torch

    from reprise_gpu.models.llama import AttnMetadata

    eng = tiny_engine()
    seqs = [eng.add_request(p, SamplingParams(max_tokens=50, temperature=0)) for p in prompts(3)]
    for _ in range(4):
        eng.step()
    batch = eng.scheduler.schedule()
    assert batch.is_decode and len(batch) == 3
    runner = eng.runner

    def logits(pad_to):
        i64, i32, bt = runner._host_inputs(batch, pad_to=pad_to)
        T = B = len(i64) // 3
        attn = AttnMetadata(torch.from_numpy(i32[:B + 1]), torch.from_numpy(i32[B + 1:]), torch.from_numpy(bt),
                            torch.from_numpy(i64[2 * T:]), 1, eng.max_model_len)
        with torch.inference_mode():
            h = runner.model(torch.from_numpy(i64[:T]), torch.from_numpy(i64[T:2 * T]), attn, runner.kv_cache)
            return runner.model.compute_logits(h)

    ref = logits(None)
    padded = logits(8)
    assert padded.shape[0] == 8 and torch.equal(padded[:3], ref)
    assert all(0 not in s.block_table for s in seqs)
