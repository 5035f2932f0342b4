"""GQA self-attention over the paged KV cache: projections, RoPE + K/V store (one kernel), paged attention.

Kernels are picked in layers/ops.py (Triton on CUDA, the float32 PyTorch references elsewhere);
`paged_attention_fn` follows it. `KVCacheWriter` is the one module that writes K (after RoPE) and V into
the cache; a forward hook on it sees exactly the values stored (the KV codec and the speculator use
this). With `attn.slot_mapping` and `attn.max_seqlen_q` fixed, the CUDA path has no host sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.kv_store import store_kv
from ..kernels.paged_attention import paged_attention, paged_attention_ref
from . import ops
from .linear import LoraLinear, LoraMetadata
from .rotary import apply_rope


@dataclass
class AttnMetadata:
    """One step of a flattened batch of B sequences, T new tokens in all."""
    cu_seqlens_q: torch.Tensor   # [B+1] int32, offsets of each sequence's new tokens in the flat batch
    context_lens: torch.Tensor   # [B] int32, tokens in cache for the sequence after this step (past + new)
    block_tables: torch.Tensor   # [B, max_blocks] int32 (pad with 0)
    slot_mapping: torch.Tensor   # [T] int64, flat slot block*block_size+offset where each new token's K/V goes
    max_seqlen_q: int
    max_context_len: int

    @classmethod
    def build(cls, new_lens: list[int], context_lens: list[int], block_tables: list[list[int]],
              block_size: int, device: torch.device | str = "cpu") -> AttnMetadata:
        """From host lists: sequence b has new_lens[b] new tokens, ending at context_lens[b], in pages block_tables[b]."""
        B = len(new_lens)
        assert len(context_lens) == B and len(block_tables) == B and B > 0
        width = max(1, max(len(t) for t in block_tables))
        slots = []
        for n, ctx, table in zip(new_lens, context_lens, block_tables):
            assert 0 < n <= ctx <= len(table) * block_size, (n, ctx, len(table), block_size)
            slots += [table[p // block_size] * block_size + p % block_size for p in range(ctx - n, ctx)]
        cu = [0]
        for n in new_lens:
            cu.append(cu[-1] + n)
        return cls(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32,
                                      device=device),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            max_seqlen_q=max(new_lens),
            max_context_len=max(context_lens),
        )


def paged_attention_fn(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, attn: AttnMetadata,
                       scale: float) -> torch.Tensor:
    """q [T, H, D] -> [T, H, D]: the Triton kernel on CUDA (and on CPU in ops mode "triton"), else the reference."""
    fn = paged_attention if ops.use_triton_attention(q) else paged_attention_ref
    return fn(q, k_cache, v_cache, attn.cu_seqlens_q, attn.context_lens, attn.block_tables, attn.max_seqlen_q,
              scale=scale)


class KVCacheWriter(nn.Module):
    """Writes the new tokens' K (after RoPE) and V at attn.slot_mapping; hook this to capture them.

    With `q` and `rope` given, k arrives before RoPE: q and k are rotated in place and K/V stored in one
    kernel, so when forward returns, k (the hook's inp[0]) holds exactly what was stored. Use a forward
    hook, not a pre-hook: a pre-hook would see k before RoPE.
    """

    def forward(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                slot_mapping: torch.Tensor, *, q: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if rope is None:
            store_kv(k, v, k_cache, v_cache, slot_mapping)
        else:
            ops.rope_store_kv(q, k, v, *rope, k_cache, v_cache, slot_mapping)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, layer: int = 0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_size, self.kv_size = n_heads * head_dim, n_kv_heads * head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        # rows [0, q_size): q, then k, then v (kv_size each); HF's q_proj/k_proj/v_proj stacked
        q, kv = self.q_size, self.kv_size
        self.qkv_proj = LoraLinear(dim, q + 2 * kv, layer=layer, mod0=0, slices=((0, q), (q, kv), (q + kv, kv)))
        self.o_proj = LoraLinear(q, dim, layer=layer, mod0=3, slices=((0, dim),))
        self.kv_writer = KVCacheWriter()

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """x [T, dim] -> q [T, H, D], k [T, KH, D] (both after RoPE), v [T, KH, D]. (forward fuses this.)"""
        T = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rope(q.view(T, self.n_heads, self.head_dim), *rope)
        k = apply_rope(k.view(T, self.n_kv_heads, self.head_dim), *rope)
        return q, k, v.reshape(T, self.n_kv_heads, self.head_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: AttnMetadata,
                kv_cache: torch.Tensor, lora: LoraMetadata | None = None) -> torch.Tensor:
        """x [T, dim]; kv_cache: this layer's [2, num_blocks, block_size, KH, D] -> [T, dim]."""
        T = x.shape[0]
        q, k, v = self.qkv_proj(x, lora).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k, v = (t.view(T, -1, self.head_dim) for t in (q, k, v))  # views of one [T, q + 2 kv] buffer
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        self.kv_writer(k, v, k_cache, v_cache, attn.slot_mapping, q=q, rope=rope)
        o = paged_attention_fn(q, k_cache, v_cache, attn, self.scale)
        return self.o_proj(o.view(T, self.q_size), lora)
