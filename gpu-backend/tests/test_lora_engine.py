"""Multi-LoRA serving on the engine: a mixed batch of adapters (written by PEFT) and base requests gives
what the base model with each adapter merged into its weights gives, on the eager path and inside decode
graphs (EagerReplay on the CPU; tests/test_lora_cuda.py runs the same on the H200 in real CUDA graphs)."""

import random

import pytest
import torch

from engine_util import tiny_model
from lora_util import peft_adapter
from reprise_gpu.config import Config, get_model_args
from reprise_gpu.engine.llm_engine import LLMEngine
from reprise_gpu.engine.model_runner import EagerReplay
from reprise_gpu.engine.sampling import SamplingParams
from reprise_gpu.layers import ops
from reprise_gpu.lora.merge import merged_state_dict
from reprise_gpu.lora.registry import parse_adapter
from reprise_gpu.models.llama import build_model

TINY = get_model_args("tiny")
# (rank, targets, rslora): every module, odd ranks, subsets
SPECS = [(4, ["q_proj", "v_proj"], False), (13, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"], False),
         (32, ["o_proj", "down_proj"], True), (8, ["gate_proj", "up_proj", "k_proj"], False)]


def engine(model, **kw):
    cfg = dict(model="tiny", device="cpu", dtype="float32", block_size=4, num_kv_blocks=256, max_num_seqs=8,
               max_num_batched_tokens=64, prefill_chunk_size=32, max_queue=32, max_loras=4)
    cfg.update(kw)
    return LLMEngine(Config(**cfg), model=model)


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(rng.randint(3, 30))] for _ in range(n)]


@pytest.fixture(scope="module")
def adapters():
    files = [peft_adapter("tiny", r, t, seed=i, rslora=rs, scale=3.0) for i, (r, t, rs) in enumerate(SPECS)]
    return files, [parse_adapter(c, w, TINY, "tiny") for c, w in files]


def merged_tokens(base, ad, ps, params):
    model = base if ad is None else build_model(TINY, merged_state_dict(base.state_dict(), ad, TINY))
    return [o["token_ids"] for o in engine(model, max_loras=0).generate(ps, params)]


@pytest.mark.parametrize("mode,graphs", [("reference", False), ("triton", True), ("triton", False)])
def test_mixed_batch_matches_merged(adapters, mode, graphs, monkeypatch):
    files, parsed = adapters
    tile_calls = []
    real_tile_shrink = ops.tile_shrink
    monkeypatch.setattr(ops, "tile_shrink", lambda *a: (tile_calls.append(a[0].shape[0]), real_tile_shrink(*a))[1])
    base = tiny_model("float32")
    eng = engine(base)
    if graphs:
        eng.runner.capture_graphs(eng.config.max_num_seqs)
        eng.runner.enable_lora(eng.lora_pool)
        assert all(isinstance(g.graph, EagerReplay) for g in eng.runner.lora_graphs.values())
        # the LoRA graphs read the sorted token tiles from the runner's own input buffer
        assert all(g.inputs[3].tiles is not None and g.inputs[3].tiles.shape == (bs, 3)
                   and g.inputs[3].order.untyped_storage().data_ptr() == eng.runner._d64.untyped_storage().data_ptr()
                   for bs, g in eng.runner.lora_graphs.items())
    packed = [eng.adapters.add(c, w) for c, w in files]
    # several adapters and the base model in one batch (fewer under the slow Triton interpreter)
    which = [None, 0, 1, 2, 3, 0, 1, None, 2, 3][:6 if mode == "triton" else 10]
    ps = prompts(len(which), seed=1)
    params = SamplingParams(max_tokens=4 if mode == "triton" else 6, temperature=0.0, ignore_eos=True)
    with ops.kernel_mode(mode):
        seqs = [eng.add_request(p, params, adapter=None if w is None else packed[w]) for p, w in zip(ps, which)]
        replays = []
        if graphs:
            for g in eng.runner.lora_graphs.values():
                g.graph.replay = (lambda f: lambda: (replays.append(1), f())[1])(g.graph.replay)
        while eng.has_work():
            eng.step()
    if graphs:
        assert replays, "decode steps with adapters must replay the LoRA graphs"
    if mode == "triton":   # graphs or eager decode (lora/batch.py's tiles)
        assert tile_calls, "decode LoRA must run on the sorted token tiles (kernels/lora_tiles.py)"
    for w in set(which):
        idx = [i for i, x in enumerate(which) if x == w]
        want = merged_tokens(base, None if w is None else parsed[w], [ps[i] for i in idx], params)
        assert [seqs[i].completion_token_ids for i in idx] == want, f"adapter {w}"
    base_out = merged_tokens(base, None, ps[1:2], params)
    assert seqs[1].completion_token_ids != base_out[0], "the adapter must change the output"


def test_logits_match_merged(adapters):
    """One prefill step of a mixed batch: each sequence's logits equal the merged model's (float32)."""
    files, parsed = adapters
    base = tiny_model("float32")
    eng = engine(base, max_num_batched_tokens=256, prefill_chunk_size=256)
    packed = [eng.adapters.add(c, w) for c, w in files]
    ps = prompts(4, seed=2)
    seqs = [eng.add_request(p, SamplingParams(max_tokens=1), adapter=packed[i]) for i, p in enumerate(ps)]
    batch = eng.scheduler.schedule()
    ids, pos, attn, lora = eng.runner._eager_inputs(batch)
    assert lora is not None and lora.segmented
    with torch.inference_mode():
        logits = eng.runner.forward_logits(ids, pos, attn, lora)
    ends = attn.cu_seqlens_q[1:].long() - 1
    for i, (p, ad) in enumerate(zip(ps, parsed)):
        m = engine(build_model(TINY, merged_state_dict(base.state_dict(), ad, TINY)), max_loras=0)
        s = m.add_request(p, SamplingParams(max_tokens=1))
        b = m.scheduler.schedule()
        with torch.inference_mode():
            want = m.runner.forward_logits(*m.runner._eager_inputs(b)[:3])
        torch.testing.assert_close(logits[ends[i]], want[-1], atol=1e-4, rtol=1e-4)
        assert seqs[i].adapter is packed[i] and s.adapter is None


def test_attention_only_batches_skip_the_mlp_launches(adapters, monkeypatch):
    """A decode batch whose adapters all leave the MLP alone replays the q/k/v/o-only LoRA graphs (no MLP
    LoRA launches), with the merged model's tokens; one adapter on the MLP in the batch switches to the
    full set."""
    files, parsed = adapters
    base = tiny_model("float32")
    eng = engine(base)
    eng.runner.capture_graphs(eng.config.max_num_seqs)
    eng.runner.enable_lora(eng.lora_pool)
    assert set(eng.runner.lora_attn_graphs) == set(eng.runner.lora_graphs)
    packed = [eng.adapters.add(c, w) for c, w in files]
    replays = {"attn": 0, "all": 0}
    for name, graphs in (("attn", eng.runner.lora_attn_graphs), ("all", eng.runner.lora_graphs)):
        for g in graphs.values():
            g.graph.replay = (lambda f, n=name: lambda: (replays.__setitem__(n, replays[n] + 1), f())[1])(g.graph.replay)
    launched = []
    real = ops.lora_add
    monkeypatch.setattr(ops, "lora_add", lambda out, x, lora, layer, mod0, slices: (
        launched.append(mod0), real(out, x, lora, layer, mod0, slices))[1])
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    ps = prompts(3, seed=4)
    with ops.kernel_mode("reference"):
        seqs = [eng.add_request(p, params, adapter=a) for p, a in zip(ps, [packed[0], None, packed[0]])]
        while eng.has_work():
            eng.step()
        assert replays == {"attn": params.max_tokens - 1, "all": 0}
        assert not {4, 6} & set(launched)      # SPECS[0] targets q and v: no gate_up / down launches at all
        want = merged_tokens(base, parsed[0], [ps[0], ps[2]], params)
        assert [seqs[0].completion_token_ids, seqs[2].completion_token_ids] == want
        seqs = [eng.add_request(p, params, adapter=a) for p, a in zip(ps, [packed[0], packed[2], None])]
        while eng.has_work():
            eng.step()
    assert replays["all"] == params.max_tokens - 1 and {3, 6} <= set(launched)          # SPECS[2]: o, down
    assert seqs[1].completion_token_ids == merged_tokens(base, parsed[2], [ps[1]], params)[0]
