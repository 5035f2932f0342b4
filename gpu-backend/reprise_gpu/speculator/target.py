"""The coding target: the BF16 model's K (after RoPE) and V, read back from its paged cache."""

from __future__ import annotations

import torch

from ..engine.kv_io import gather_kv
from ..models.llama import AttnMetadata, alloc_kv_cache


@torch.no_grad()
def target_kv(model, token_ids: torch.Tensor, block_size: int = 16, chunk: int = 4096) -> torch.Tensor:
    """Prefill `token_ids` [T] (positions 0..T-1) -> the cached K/V [L, 2, KH, T, D] in the model's dtype."""
    args = model.args
    dev = next(model.parameters()).device
    T = int(token_ids.numel())
    nb = max(1, -(-T // block_size))
    cache = alloc_kv_cache(args, nb, block_size, next(model.parameters()).dtype, dev)
    table = list(range(nb))
    ids = token_ids.to(dev)
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        attn = AttnMetadata.build([b - a], [b], [table], block_size, device=dev)
        model(ids[a:b], torch.arange(a, b, device=dev), attn, cache)
    return gather_kv(cache, table, 0, T)
