"""The decode-graph path of the model runner on the CPU: ModelRunner.capture_graphs builds EagerReplay
stand-ins off CUDA, so packed inputs, padding rows, the block-table mirror and the in-graph argmax run
here exactly as they feed a CUDA graph. Results must equal the eager path's."""

import random

import numpy as np
import pytest

from engine_util import tiny_engine
from reprise_gpu.engine.model_runner import EagerReplay
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
