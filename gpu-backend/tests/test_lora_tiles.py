"""Decode LoRA over sorted token tiles (kernels/lora_tiles.py) vs the float32 references.

The tile table (host side) is checked as a partition of the tokens with an adapter; the split-K shrink and
the tiled expand against lora_shrink_ref / lora_expand_ref for every rank in {4, 8, 16, 32, 64, 128},
mixed and skewed batches, T = 1, 3, 17, slot -1 tokens, runs longer than a tile, several K splits; and
two runs bit for bit. Under TRITON_INTERPRET=1 on the CPU, so shapes stay small.
"""

import numpy as np
import pytest
import torch

from reprise_gpu.kernels import lora_tiles as lt
from reprise_gpu.kernels.lora_expand import lora_expand_ref
from reprise_gpu.kernels.lora_shrink import lora_shrink_ref
from test_lora_kernels import DEVICE, N_MODULES, TOL, make_pool, token_slots, valid

RANKS = (4, 8, 16, 32, 64, 128)
SLICES = ((0, 40), (40, 24), (64, 24))


@pytest.mark.parametrize("T", [0, 1, 3, 17, 40, 300])
@pytest.mark.parametrize("kind", ["mixed", "skewed", "identical", "distinct"])
def test_tile_table_partitions_the_adapter_tokens(kind, T):
    slots = token_slots(kind, T, 6, np.random.default_rng(T)).astype(np.int32)
    order, tiles = lt.build_tiles(slots)
    assert sorted(order.tolist()) == list(range(T))
    used = tiles[tiles[:, 2] >= 0]
    covered = []
    for start, end, slot in used.tolist():
        assert 0 < end - start <= lt.TILE_M
        assert (slots[order[start:end]] == slot).all()
        assert list(order[start:end]) == sorted(order[start:end])       # stable: batch order inside a tile
        covered += order[start:end].tolist()
    assert sorted(covered) == np.flatnonzero(slots >= 0).tolist()      # each adapter token in exactly one tile
    assert (tiles[len(used):, 2] == -1).all()                          # used tiles first, the rest unused


def test_tile_table_writes_into_given_views():
    buf = np.full(4 * 5, 99, dtype=np.int32)
    order, tiles = buf[:5], buf[5:].reshape(5, 3)
    lt.build_tiles(np.array([2, -1, 2, 0, 2], dtype=np.int32), order, tiles)
    assert order.tolist() == [1, 3, 0, 2, 4]
    assert tiles.tolist() == [[1, 2, 0], [2, 5, 2], [0, 0, -1], [0, 0, -1], [0, 0, -1]]


def tile_case(slots_np, ranks_per_slot, dtype, K, seed):
    rng = np.random.default_rng(seed)
    S = len(ranks_per_slot)
    ranks = np.zeros((S, N_MODULES), dtype=np.int64)
    for s, r in enumerate(ranks_per_slot):
        present = rng.random(N_MODULES) < 0.7
        present[0] = True
        ranks[s] = np.where(present, r, 0)
    pool, a_off, b_off, ranks_t, scaling = make_pool(ranks, [K] * N_MODULES, [n for _, n in SLICES] * 3, dtype, seed)
    x = torch.randn(len(slots_np), K, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(DEVICE)
    return x, pool, a_off, b_off, ranks_t, scaling


def run_tiles(x, pool, a_off, b_off, ranks, scaling, slots_np, mod0, n, base):
    order, tiles = (torch.from_numpy(v).to(DEVICE) for v in lt.build_tiles(slots_np))
    yp = lt.tile_shrink(x, pool, a_off, ranks, order, tiles, mod0, n)
    out = base.clone()
    lt.tile_expand(out, yp, pool, b_off, ranks, scaling, order, tiles, mod0, SLICES[:n])
    return lt.unsort_partials(yp, order), out


# (slots, ranks of slots 0.., dtype, K, mod0, n_slices, K_ITERS): every rank appears; K_ITERS = 1 makes
# SPLIT_K = cdiv(K, 128) > 1 at these small K, so the partials' sum is exercised
CASES = [
    ("one token", [3], (4, 8, 16, 32, 64, 128), torch.float32, 48, 0, 3, 4),
    ("three, -1", [-1, 5, 5], (128, 64, 32, 16, 8, 4), torch.bfloat16, 300, 0, 3, 1),
    ("mixed 17", "mixed", (4, 8, 16, 32, 64, 128), torch.float32, 300, 4, 2, 1),
    ("skewed 17", "skewed", (128, 4, 8, 16, 32, 64), torch.bfloat16, 48, 3, 1, 4),
    ("long run 37", "identical", (8, 16, 32, 64, 128, 4), torch.float32, 200, 0, 3, 1),   # 37 = 16 + 16 + 5
]


@pytest.mark.parametrize("name,slots,ranks,dtype,K,mod0,n,k_iters", CASES, ids=[c[0] for c in CASES])
def test_tiles_match_references(monkeypatch, name, slots, ranks, dtype, K, mod0, n, k_iters):
    monkeypatch.setattr(lt, "K_ITERS", k_iters)
    if isinstance(slots, str):
        slots = token_slots(slots, 37 if slots == "identical" else 17, len(ranks), np.random.default_rng(K))
    slots_np = np.asarray(slots, dtype=np.int32)
    x, pool, a_off, b_off, ranks_t, scaling = tile_case(slots_np, ranks, dtype, K, seed=len(name))
    T = len(slots_np)
    slots_t = torch.from_numpy(slots_np).to(DEVICE)
    y_ref = lora_shrink_ref(x, pool, a_off, ranks_t, slots_t, mod0, n)
    m = valid(y_ref, slots_t, ranks_t, mod0, n)
    base = torch.randn(T, sum(w for _, w in SLICES[:n]), generator=torch.Generator().manual_seed(9)).to(dtype)
    base = base.to(DEVICE)
    want = base.clone()
    lora_expand_ref(want, y_ref, pool, b_off, ranks_t, scaling, slots_t, mod0, SLICES[:n])

    y, out = run_tiles(x, pool, a_off, b_off, ranks_t, scaling, slots_np, mod0, n, base)
    torch.testing.assert_close(y[m], y_ref[m], **TOL[dtype])
    scale = want.float().abs().max().item()            # bf16: one rounding of out (and of y), at its magnitude
    torch.testing.assert_close(out.float(), want.float(), atol=TOL[dtype]["atol"] * max(1.0, scale),
                               rtol=TOL[dtype]["rtol"])
    no_adapter = torch.from_numpy(slots_np < 0).to(DEVICE)
    assert torch.equal(out[no_adapter], base[no_adapter])              # slot -1 rows are left as they were
    assert not torch.equal(out[~no_adapter], base[~no_adapter])        # and the others did change

    y2, out2 = run_tiles(x, pool, a_off, b_off, ranks_t, scaling, slots_np, mod0, n, base)
    assert torch.equal(y2[m].view(torch.int32), y[m].view(torch.int32))            # deterministic: same bits
    assert torch.equal(out2.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       out.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def test_expand_reads_only_written_partials():
    """Partials past a token's rank, and rows of tokens without an adapter, are never read: NaN there
    changes nothing."""
    slots_np = np.array([1, -1, 0, 1], dtype=np.int32)
    x, pool, a_off, b_off, ranks, scaling = tile_case(slots_np, (4, 16), torch.float32, 48, seed=3)
    order, tiles = (torch.from_numpy(v) .to(DEVICE) for v in lt.build_tiles(slots_np))
    yp = lt.tile_shrink(x, pool, a_off, ranks, order, tiles, 0, 1)
    poisoned = torch.full_like(yp, float("nan"))
    sorted_slots = torch.from_numpy(slots_np).to(DEVICE)[order.long()]
    keep = valid(poisoned[0], sorted_slots, ranks, 0, 1)
    poisoned[:, keep] = yp[:, keep]
    base = torch.zeros(4, 40, device=DEVICE)
    a, b = base.clone(), base.clone()
    lt.tile_expand(a, yp, pool, b_off, ranks, scaling, order, tiles, 0, SLICES[:1])
    lt.tile_expand(b, poisoned, pool, b_off, ranks, scaling, order, tiles, 0, SLICES[:1])
    assert torch.isfinite(b).all() and torch.equal(a, b)
