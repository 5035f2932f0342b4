"""Write the new tokens' K and V into the paged cache: cache[slot_mapping[t]] = kv[t].

Plain PyTorch indexing (`index_copy_`), not a Triton kernel, on purpose: the op is a pure scatter of
T x KH x D elements, memory-bound (read T*KH*D*2, write the same), and `index_copy_` already issues one
coalesced kernel per tensor with no host sync, so it is CUDA-graph capturable. A custom kernel could
only fuse the K and V launches into one (two ~2 us launches per layer, which a CUDA graph hides) or skip
padding slots; instead, padding tokens of a captured batch must point at a scratch slot the engine
reserves (e.g. block 0), because a negative slot is not skipped: it would index from the end.
"""

from __future__ import annotations

import torch


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k_cache.view(-1, KH, D)[slot_mapping[t]] = k[t] (same for v), in place.

    k, v: [T, KH, D]; k_cache, v_cache: [num_blocks, block_size, KH, D] contiguous, k's dtype;
    slot_mapping: [T] int64, slot = block * block_size + offset, unique, in [0, num_blocks * block_size).
    """
    T, KH, D = k.shape
    assert v.shape == k.shape and slot_mapping.shape == (T,) and slot_mapping.dtype == torch.int64
    assert k_cache.shape[2:] == (KH, D) and v_cache.shape == k_cache.shape and k_cache.dtype == k.dtype
    k_cache.view(-1, KH, D).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, KH, D).index_copy_(0, slot_mapping, v)


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """Same as `store_kv`, one token at a time through (block, offset)."""
    block_size = k_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        k_cache[slot // block_size, slot % block_size] = k[t]
        v_cache[slot // block_size, slot % block_size] = v[t]
