"""LoRA shrink/expand kernels (SGMV, BGMV) vs their float32 references, on scattered pool pages.

Every rank from 4 to 128 appears (odd ones too), modules missing per adapter (rank 0), tokens without an
adapter (slot -1), identical / distinct / zipf / skewed batches and odd sizes. Without CUDA the kernels run
in Triton's interpreter (TRITON_INTERPRET=1, tests/conftest.py), so shapes stay small.
"""

import numpy as np
import pytest
import torch

from reprise_gpu.kernels.lora_expand import bgmv_expand, lora_expand_ref, sgmv_expand
from reprise_gpu.kernels.lora_shrink import R_MAX, bgmv_shrink, lora_shrink_ref, sgmv_shrink

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
N_MODULES = 7


def make_pool(ranks: np.ndarray, in_dims, out_dims, dtype, seed):
    """A flat pool holding each slot's A rows and B^T rows at shuffled, non-overlapping places."""
    g = torch.Generator().manual_seed(seed)
    S, M = ranks.shape
    width = max(max(in_dims), max(out_dims))
    n_rows = int(ranks.sum()) * 2
    places = torch.randperm(n_rows + 7, generator=g)[:n_rows]      # gaps between rows, as freed pages leave
    pool = torch.randn((n_rows + 7) * width, generator=g) * 0.5
    a_off = torch.zeros(S, M, R_MAX, dtype=torch.int32)
    b_off = torch.zeros(S, M, R_MAX, dtype=torch.int32)
    k = 0
    for s in range(S):
        for m in range(M):
            for j in range(int(ranks[s, m])):
                a_off[s, m, j] = int(places[k]) * width
                b_off[s, m, j] = int(places[k + 1]) * width
                k += 2
    scaling = torch.rand(S, generator=g) + 0.5
    t = lambda x: x.to(DEVICE)  # noqa: E731
    return t(pool.to(dtype)), t(a_off), t(b_off), t(torch.from_numpy(ranks.astype(np.int32))), t(scaling)


def token_slots(kind: str, T: int, S: int, rng) -> np.ndarray:
    if kind == "identical":
        return np.full(T, S - 1)
    if kind == "distinct":
        return np.arange(T) % S
    if kind == "zipf":
        p = 1.0 / np.arange(1, S + 1)
        return rng.choice(S, size=T, p=p / p.sum())
    if kind == "skewed":   # most tokens on one adapter, a few on others, some without any
        return np.where(rng.random(T) < 0.8, 0, rng.integers(-1, S, size=T))
    return rng.integers(-1, S, size=T)                    # "mixed": -1 included


RANKS = [4, 5, 8, 16, 17, 32, 64, 100, 128]


def case(kind, T, seed, dtype, K=48, slices=((0, 40), (40, 24), (64, 24))):
    rng = np.random.default_rng(seed)
    S = 6
    ranks = np.zeros((S, N_MODULES), dtype=np.int64)
    for s in range(S):
        r = RANKS[(seed + s) % len(RANKS)]
        present = rng.random(N_MODULES) < 0.7
        present[0] = True
        ranks[s] = np.where(present, r, 0)
    slots = token_slots(kind, T, S, rng)
    pool, a_off, b_off, ranks_t, scaling = make_pool(ranks, [K] * N_MODULES, [n for _, n in slices] * 3, dtype, seed)
    x = (torch.randn(T, K, generator=torch.Generator().manual_seed(seed + 1))).to(dtype).to(DEVICE)
    return x, pool, a_off, b_off, ranks_t, scaling, slots


def segments(slots: np.ndarray):
    """Runs of equal slots -> (seg_starts, seg_slots, max_len), as the engine's per-sequence segments."""
    starts = [0] + [i for i in range(1, len(slots)) if slots[i] != slots[i - 1]] + [len(slots)]
    seg_slots = [int(slots[s]) for s in starts[:-1]]
    t = lambda v: torch.tensor(v, dtype=torch.int32, device=DEVICE)  # noqa: E731
    return t(starts), t(seg_slots), max(b - a for a, b in zip(starts, starts[1:]))


def valid(y, slots, ranks, mod0, n):
    """Mask of the y entries the kernels define: rows with an adapter, ranks below the slice's rank."""
    m = torch.zeros_like(y, dtype=torch.bool)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            for i in range(n):
                m[t, i, :int(ranks[s, mod0 + i])] = True
    return m


# Each case covers other ranks (seeds rotate through RANKS); the interpreter is slow, so few cases.
@pytest.mark.parametrize("kind,T,seed,dtype,mod0,n_slices", [
    ("identical", 5, 0, torch.float32, 0, 3), ("distinct", 7, 1, torch.bfloat16, 3, 1),
    ("zipf", 23, 2, torch.bfloat16, 0, 3), ("skewed", 37, 3, torch.float32, 4, 2),
    ("mixed", 19, 4, torch.bfloat16, 0, 3), ("mixed", 1, 5, torch.bfloat16, 6, 1)], ids=str)
def test_shrink_expand(kind, T, seed, dtype, mod0, n_slices):
    slices = ((0, 40), (40, 24), (64, 24))[:n_slices]
    x, pool, a_off, b_off, ranks, scaling, slots_np = case(kind, T, seed, dtype)
    slots = torch.tensor(slots_np, dtype=torch.int32, device=DEVICE)
    y_ref = lora_shrink_ref(x, pool, a_off, ranks, slots, mod0, n_slices)
    m = valid(y_ref, slots, ranks, mod0, n_slices)
    starts, seg_slots, max_len = segments(slots_np)
    y_b = bgmv_shrink(x, pool, a_off, ranks, slots, mod0, n_slices)
    y_s = sgmv_shrink(x, pool, a_off, ranks, starts, seg_slots, max_len, mod0, n_slices)
    # tl.dot rounds its inputs to the model dtype; the references and BGMV multiply in float32
    torch.testing.assert_close(y_b[m], y_ref[m], **TOL[dtype])
    torch.testing.assert_close(y_s[m], y_ref[m], **TOL[dtype])

    base = torch.randn(T, sum(n for _, n in slices), generator=torch.Generator().manual_seed(9)).to(dtype).to(DEVICE)
    y = torch.where(m, y_ref, torch.full_like(y_ref, float("nan")))    # entries outside m must not be read
    outs = [base.clone() for _ in range(3)]
    lora_expand_ref(outs[0], y_ref, pool, b_off, ranks, scaling, slots, mod0, slices)
    bgmv_expand(outs[1], y, pool, b_off, ranks, scaling, slots, mod0, slices)
    sgmv_expand(outs[2], y, pool, b_off, ranks, scaling, starts, seg_slots, max_len, mod0, slices)
    scale = outs[0].float().abs().max().item()            # bf16: one rounding of out, at its magnitude
    for o in outs[1:]:
        torch.testing.assert_close(o.float(), outs[0].float(), atol=TOL[dtype]["atol"] * max(1.0, scale),
                                   rtol=TOL[dtype]["rtol"])
    no_adapter = torch.from_numpy(slots_np < 0).to(DEVICE)
    assert torch.equal(outs[1][no_adapter], base[no_adapter])        # slot -1 rows are left as they were


def test_ranks_are_not_padded():
    """A rank-r adapter's kernel touches exactly r rows of A: rows past r hold NaN and change nothing."""
    x, pool, a_off, b_off, ranks, scaling, _ = case("identical", 3, 0, torch.float32)
    slots = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    r = int(ranks[0, 0])
    poisoned = pool.clone()
    used = a_off[0, 0, :r].long()
    mask = torch.ones_like(poisoned, dtype=torch.bool)
    for o in used.tolist():
        mask[o:o + x.shape[1]] = False
    poisoned[mask] = float("nan")
    y = bgmv_shrink(x, poisoned, a_off, ranks, slots, 0, 1)
    assert torch.isfinite(y[:, 0, :r]).all()
    torch.testing.assert_close(y[:, 0, :r], lora_shrink_ref(x, pool, a_off, ranks, slots, 0, 1)[:, 0, :r])
