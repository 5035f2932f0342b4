"""An adapter merged into a copy of the base weights: W' = W + scaling * B A (the reference LoRA must match)."""

from __future__ import annotations

import torch

from ..config import ModelArgs
from .registry import LoraAdapter

# module -> (our fused weight, first row of its slice as a function of the model shape)
_ROWS = {
    "q_proj": ("self_attn.qkv_proj", lambda a: 0), "k_proj": ("self_attn.qkv_proj", lambda a: a.q_size),
    "v_proj": ("self_attn.qkv_proj", lambda a: a.q_size + a.kv_size), "o_proj": ("self_attn.o_proj", lambda a: 0),
    "gate_proj": ("mlp.gate_up_proj", lambda a: 0), "up_proj": ("mlp.gate_up_proj", lambda a: a.ffn_dim),
    "down_proj": ("mlp.down_proj", lambda a: 0),
}


def merged_state_dict(sd: dict[str, torch.Tensor], ad: LoraAdapter, args: ModelArgs) -> dict[str, torch.Tensor]:
    """A new state dict with `ad` merged in float32, then cast back to each weight's dtype."""
    out = dict(sd)
    for m in ad.modules:
        name, row0 = _ROWS[m]
        for i in range(args.n_layers):
            key = f"layers.{i}.{name}.weight"
            w = out[key].float().clone() if out[key] is sd[key] else out[key]
            delta = ad.scaling * (ad.b[m][i] @ ad.a[m][i])
            r0 = row0(args)
            w[r0:r0 + delta.shape[0]] += delta.to(w.device)
            out[key] = w
    return {k: (v.to(sd[k].dtype) if v is not sd[k] else v) for k, v in out.items()}
