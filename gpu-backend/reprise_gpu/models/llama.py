"""Llama decoder (GQA, RoPE, RMSNorm, SwiGLU) over a paged KV cache, for a flat batch of sequences.

    kv_cache: [n_layers, 2, num_blocks, block_size, n_kv_heads, head_dim], model dtype (K after RoPE)
    model.forward(input_ids [T] int64, positions [T] int64, attn: AttnMetadata, kv_cache) -> hidden [T, dim]
    model.compute_logits(hidden[idx]) -> [n, vocab] float32

All Linear layers are plain nn.Linear (bias-free) so a quantizer can swap them by name.
State-dict names: embed_tokens, layers.{i}.{input_layernorm, self_attn.qkv_proj, self_attn.o_proj,
post_attention_layernorm, mlp.gate_up_proj, mlp.down_proj}, norm, lm_head (tied to embed_tokens or not).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelArgs
from ..layers.attention import Attention, AttnMetadata
from ..layers.linear import LoraMetadata
from ..layers.mlp import SwiGLU
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding

__all__ = ["AttnMetadata", "LoraMetadata", "DecoderLayer", "Llama", "build_model", "alloc_kv_cache"]


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args.dim, args.n_heads, args.n_kv_heads, args.head_dim, layer)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = SwiGLU(args.dim, args.ffn_dim, layer)

    def forward(self, h: torch.Tensor, rope, attn: AttnMetadata, kv_cache: torch.Tensor) -> torch.Tensor:
        """h [T, dim] -> the layer's output [T, dim]."""
        x, residual = self.forward_residual(h, None, rope, attn, kv_cache)
        return residual + x

    def forward_residual(self, x: torch.Tensor, residual: torch.Tensor | None, rope, attn: AttnMetadata,
                         kv_cache: torch.Tensor, lora: LoraMetadata | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer on h = residual + x (h = x when residual is None) -> (x', residual') with output residual' + x'.

        Leaving the last add to the next norm lets each residual add run inside an RMSNorm kernel.
        """
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, rope, attn, kv_cache, lora)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x, lora), residual


class Llama(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(args.head_dim, args.max_seq_len, args.rope_theta)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnMetadata,
                kv_cache: torch.Tensor, lora: LoraMetadata | None = None) -> torch.Tensor:
        """input_ids, positions: [T] int64; writes the new K/V into kv_cache -> hidden [T, dim] (final norm applied).
        With `lora`, each token's adapter (pages in kv_cache itself) is added to every projection it targets."""
        rope = self.rotary(positions)
        x, residual = self.embed_tokens(input_ids), None
        for i, layer in enumerate(self.layers):
            x, residual = layer.forward_residual(x, residual, rope, attn, kv_cache[i], lora)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [n, dim] -> [n, vocab] float32."""
        return self.lm_head(hidden).float()

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Take the tensors as they are (device and dtype included); lm_head may be absent when tied."""
        sd = dict(state_dict)
        if self.args.tie_embeddings:
            sd.setdefault("lm_head.weight", sd["embed_tokens.weight"])
        self.load_state_dict(sd, strict=True, assign=True)
        if self.args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight


def build_model(args: ModelArgs, state_dict: dict[str, torch.Tensor]) -> Llama:
    """A Llama holding the state dict's tensors (no copy), in eval mode, on their device."""
    with torch.device("meta"):
        model = Llama(args)
    model.load_weights(state_dict)
    device = state_dict["embed_tokens.weight"].device
    return model.to(device).eval().requires_grad_(False)


def alloc_kv_cache(args: ModelArgs, num_blocks: int, block_size: int, dtype: torch.dtype,
                   device: torch.device | str) -> torch.Tensor:
    """[n_layers, 2, num_blocks, block_size, n_kv_heads, head_dim], zero-filled."""
    return torch.zeros(args.n_layers, 2, num_blocks, block_size, args.n_kv_heads, args.head_dim, dtype=dtype,
                       device=device)
