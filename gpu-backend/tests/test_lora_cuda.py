"""Multi-LoRA on CUDA (the H200 run; skipped without a GPU): the kernels at the real model shapes against
their references, and decode inside real CUDA graphs with several adapters active in one captured batch
(the case that has produced wrong tokens in other servers) against eager steps and merged weights."""

import random

import pytest
import torch

from lora_util import peft_adapter
from reprise_gpu.config import Config, get_model_args
from reprise_gpu.engine.llm_engine import LLMEngine, load_model
from reprise_gpu.engine.sampling import SamplingParams
from reprise_gpu.kernels.lora_expand import bgmv_expand, lora_expand_ref, sgmv_expand
from reprise_gpu.kernels.lora_shrink import bgmv_shrink, lora_shrink_ref, sgmv_shrink
from reprise_gpu.kernels.lora_tiles import build_tiles, tile_expand, tile_shrink, unsort_partials
from reprise_gpu.lora.merge import merged_state_dict
from reprise_gpu.lora.registry import parse_adapter
from reprise_gpu.models.llama import build_model
from test_lora_kernels import case, segments, valid

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("K,slices,mod0", [(4096, ((0, 4096), (4096, 1024), (5120, 1024)), 0),
                                           (14336, ((0, 4096),), 6), (576, ((0, 1536), (1536, 1536)), 4)])
@pytest.mark.parametrize("kind,T", [("zipf", 133), ("mixed", 1), ("distinct", 64)])
def test_kernels_at_model_shapes(K, slices, mod0, kind, T):
    x, pool, a_off, b_off, ranks, scaling, slots_np = case(kind, T, 3, torch.bfloat16, K=K, slices=slices)
    slots = torch.tensor(slots_np, dtype=torch.int32, device="cuda")
    n = len(slices)
    y_ref = lora_shrink_ref(x, pool, a_off, ranks, slots, mod0, n)
    m = valid(y_ref, slots, ranks, mod0, n)
    starts, seg_slots, max_len = segments(slots_np)
    order, tiles = (torch.from_numpy(v).cuda() for v in build_tiles(slots_np.astype("int32")))
    yp = tile_shrink(x, pool, a_off, ranks, order, tiles, mod0, n)
    for y in (bgmv_shrink(x, pool, a_off, ranks, slots, mod0, n),
              sgmv_shrink(x, pool, a_off, ranks, starts, seg_slots, max_len, mod0, n), unsort_partials(yp, order)):
        torch.testing.assert_close(y[m], y_ref[m], atol=0.05 * y_ref.abs().max().item(), rtol=0.02)
    base = torch.randn(T, sum(w for _, w in slices), device="cuda").to(torch.bfloat16)
    outs = [base.clone() for _ in range(4)]
    lora_expand_ref(outs[0], y_ref, pool, b_off, ranks, scaling, slots, mod0, slices)
    bgmv_expand(outs[1], y_ref, pool, b_off, ranks, scaling, slots, mod0, slices)
    sgmv_expand(outs[2], y_ref, pool, b_off, ranks, scaling, starts, seg_slots, max_len, mod0, slices)
    tile_expand(outs[3], yp, pool, b_off, ranks, scaling, order, tiles, mod0, slices)
    again = base.clone()                       # split-K without atomics: a rerun gives the same bits
    tile_expand(again, tile_shrink(x, pool, a_off, ranks, order, tiles, mod0, n), pool, b_off, ranks, scaling, order,
                tiles, mod0, slices)
    assert torch.equal(again.view(torch.int16), outs[3].view(torch.int16))
    for o in outs[1:]:
        torch.testing.assert_close(o.float(), outs[0].float(), atol=0.05 * outs[0].float().abs().max().item(), rtol=0.02)


def test_several_adapters_inside_cuda_graphs():
    """Decode batches mixing 5 adapters and the base model replay the LoRA graphs; tokens equal eager
    LoRA steps exactly, and the merged-weights model's (float32, where merging rounds nothing)."""
    args = get_model_args("smollm2-135m")
    specs = [(4, ["q_proj", "v_proj"]), (16, ALL), (37, ["o_proj", "down_proj"]), (64, ["k_proj", "up_proj"]),
             (128, ["gate_proj", "q_proj"])]
    files = [peft_adapter("smollm2-135m", r, t, seed=i, scale=2.0) for i, (r, t) in enumerate(specs)]
    rng = random.Random(0)
    ps = [[rng.randrange(args.vocab_size) for _ in range(rng.randint(5, 60))] for _ in range(12)]
    which = [None, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, None]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    model = load_model(Config(model="smollm2-135m", device="cuda", dtype="float32", gguf_path=None), seed=1)

    def run(graphs: bool, m=model, lora=True):
        eng = LLMEngine(Config(model="smollm2-135m", device="cuda", dtype="float32", gguf_path=None, num_kv_blocks=2048,
                               max_num_seqs=16, max_loras=8 if lora else 0), model=m, cuda_graphs=graphs)
        return eng

    eng = run(True)
    assert eng.runner.lora_graphs, "LoRA decode graphs must be captured"
    replays = []
    for g in eng.runner.lora_graphs.values():
        g.graph.replay = (lambda f: lambda: (replays.append(1), f())[1])(g.graph.replay)
    packed = [eng.adapters.add(c, w) for c, w in files]
    got = [s["token_ids"] for s in _gen(eng, ps, params, [None if w is None else packed[w] for w in which])]
    assert len(replays) >= params.max_tokens - 1
    eager = run(False)
    packed_e = [eager.adapters.add(c, w) for c, w in files]
    assert got == [s["token_ids"] for s in _gen(eager, ps, params, [None if w is None else packed_e[w] for w in which])]
    parsed = [parse_adapter(c, w, args, "smollm2-135m") for c, w in files]
    for w in set(which):
        idx = [i for i, x in enumerate(which) if x == w]
        m = model if w is None else build_model(args, merged_state_dict(model.state_dict(), parsed[w], args))
        want = [s["token_ids"] for s in _gen(run(True, m, lora=False), [ps[i] for i in idx], params, [None] * len(idx))]
        assert [got[i] for i in idx] == want, f"adapter {w}"


def _gen(eng, ps, params, adapters):
    seqs = [eng.add_request(p, params, adapter=a) for p, a in zip(ps, adapters)]
    while eng.has_work():
        eng.step()
    return [{"token_ids": s.completion_token_ids} for s in seqs]
