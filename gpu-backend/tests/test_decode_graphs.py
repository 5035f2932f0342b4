"""The decode-graph path of the model runner on the CPU: ModelRunner.capture_graphs builds EagerReplay
stand-ins off CUDA, so packed inputs, padding rows, the block-table mirror and the in-graph argmax run
here exactly as they feed a CUDA graph. Results must equal the eager path's.

EagerReplay, like a CUDA graph, holds its inputs only weakly, so these tests also fail if the runner lets
a graph input go after capture (the H200 run-2 illegal memory access: a per-capture cu_seqlens tensor
was freed and its memory reused by later steps)."""

import gc
import random

import numpy as np
import pytest
import torch

from engine_util import tiny_engine
from reprise_gpu.config import Config
from reprise_gpu.engine.llm_engine import LLMEngine, load_model
from reprise_gpu.engine.model_runner import EagerReplay, GraphInputFreed
from reprise_gpu.engine.sampling import SamplingParams


def prompts(n, seed=0, lo=3, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def with_graphs(**kw):
    eng = tiny_engine(**kw)
    eng.runner.capture_graphs(eng.config.max_num_seqs)
    replays = []
    for g in eng.runner.graphs.values():
        assert isinstance(g.graph, EagerReplay)
        g.graph.replay = (lambda f, bs: lambda: (replays.append(bs), f())[1])(g.graph.replay, g.logits.shape[0])
    return eng, replays


def staggered(eng, ps, params):
    """Newcomers join a batch already decoding; sequences finish at different steps."""
    seqs = []
    for i, p in enumerate(ps):
        seqs.append(eng.add_request(p, params[i] if isinstance(params, list) else params))
        eng.step()
    while eng.has_work():
        eng.step()
    return [s.completion_token_ids for s in seqs]


@pytest.mark.parametrize("kw", [dict(), dict(max_num_batched_tokens=16, prefill_chunk_size=5, max_num_seqs=3),
                                dict(num_kv_blocks=16, block_size=4)], ids=["plain", "small_chunks", "preemption"])
def test_graph_path_equals_eager_greedy(kw):
    ps = prompts(6)
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (12, 5, 17, 9, 12, 3)]
    want = staggered(tiny_engine(**kw), ps, params)
    eng, replays = with_graphs(**kw)
    assert staggered(eng, ps, params) == want
    assert replays and len(set(replays)) > 1, "graphs of several sizes should have run (with padding rows)"
    eng.block_manager.check()
    assert eng.block_manager.num_used == 0


def test_graph_path_equals_eager_mixed_sampling():
    """Seeded sampled rows next to greedy ones: the graph's logits feed the same sampler."""
    ps = prompts(5, seed=3)
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=i) if i % 2 else
              SamplingParams(max_tokens=10, temperature=0) for i in range(5)]
    want = staggered(tiny_engine(), ps, params)
    eng, replays = with_graphs()
    assert staggered(eng, ps, params) == want and replays


def test_block_table_mirror_tracks_tables():
    """The mirror rewrites a row for another sequence or a re-allocated table and appends a grown tail."""
    eng, _ = with_graphs()
    r = eng.runner

    class S:
        def __init__(self, t):
            self.block_table = t

    a, b = S([5, 6]), S([7])
    assert r._sync_block_tables([a, b]) == 2
    a.block_table.append(9)
    b.block_table = [3, 4, 8]                      # freed and re-allocated: a new list
    assert r._sync_block_tables([a, b]) == 3
    assert r._bt_mirror[0, :3].tolist() == [5, 6, 9] and r._bt_mirror[1, :3].tolist() == [3, 4, 8]
    assert r._sync_block_tables([b, a]) == 3       # rows swapped
    assert r._bt_mirror[0, :3].tolist() == [3, 4, 8] and r._bt_mirror[1, :3].tolist() == [5, 6, 9]
    assert r._bt_mirror.dtype == np.int32


def test_eager_replay_holds_inputs_weakly():
    """The stand-in behaves like a CUDA graph: it does not keep what it reads alive."""
    x = torch.arange(4.0)
    g = EagerReplay(lambda t: (t * 2,), x)
    x.add_(1)
    g.replay()
    assert g.outputs[0].tolist() == [2.0, 4.0, 6.0, 8.0]
    del x
    gc.collect()
    with pytest.raises(GraphInputFreed):
        g.replay()


def test_graph_inputs_live_in_runner_buffers():
    """Every tensor a decode graph reads is a view of a buffer the runner owns and _replay writes (or the
    constant cu_seqlens), so nothing a graph reads can be freed and reused while the graph lives."""
    eng, _ = with_graphs(max_num_seqs=8)
    r = eng.runner
    gc.collect()
    owned = {r._d64.untyped_storage().data_ptr(), r._dbt.untyped_storage().data_ptr(),
             r._dcu.untyped_storage().data_ptr()}
    for bs, g in r.graphs.items():
        ids, pos, attn = g.inputs
        tensors = dict(ids=ids, pos=pos, cu_seqlens_q=attn.cu_seqlens_q, context_lens=attn.context_lens,
                       block_tables=attn.block_tables, slot_mapping=attn.slot_mapping)
        for name, t in tensors.items():
            assert t.untyped_storage().data_ptr() in owned, (bs, name)
        assert attn.cu_seqlens_q.tolist() == list(range(bs + 1)), bs
        assert attn.context_lens.shape == (bs,) and attn.context_lens.dtype == torch.int32
        # the context lengths are the int32 view of the int64 words right after ids | positions | slots
        assert attn.context_lens.data_ptr() == r._d64[3 * bs:].data_ptr()
        assert attn.block_tables.shape == (bs, r.max_blocks_per_seq)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA graphs")
def test_cuda_graphs_survive_reuse_of_freed_memory():
    """On CUDA: fill every free small block of the caching allocator with garbage after capture; the
    graphs must still equal the eager path (a graph reading freed memory reads the garbage and faults)."""
    kw = dict(model="tiny", device="cuda", dtype="float32", block_size=4, num_kv_blocks=256, max_num_seqs=8,
              max_num_batched_tokens=64, prefill_chunk_size=32, max_queue=16)
    model = load_model(Config(**kw), seed=0)
    ps = prompts(6)
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (12, 5, 17, 9, 12, 3)]
    want = staggered(LLMEngine(Config(**kw), model=model, cuda_graphs=False), ps, params)
    eng = LLMEngine(Config(**kw), model=model, cuda_graphs=True)
    assert eng.runner.graphs and not isinstance(next(iter(eng.runner.graphs.values())).graph, EagerReplay)
    gc.collect()
    junk = [torch.full((n,), 0x3FFFFFFF, dtype=torch.int32, device="cuda")
            for n in (128, 256, 384, 512) for _ in range(2048)]
    torch.cuda.synchronize()
    assert staggered(eng, ps, params) == want
    del junk
