"""SwiGLU feed-forward (Shazeer, 2020): down(silu(gate(x)) * up(x)), gate and up fused in one Linear."""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .linear import LoraLinear, LoraMetadata


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, layer: int = 0):
        super().__init__()
        self.ffn_dim = F = ffn_dim
        # rows [0, F): gate, [F, 2F): up
        self.gate_up_proj = LoraLinear(dim, 2 * F, layer=layer, mod0=4, slices=((0, F), (F, F)))
        self.down_proj = LoraLinear(F, dim, layer=layer, mod0=6, slices=((0, dim),))

    def forward(self, x: torch.Tensor, lora: LoraMetadata | None = None) -> torch.Tensor:
        """x: [T, dim] -> [T, dim]; silu(gate) * up in one kernel on CUDA (kernels/silu_mul.py)."""
        return self.down_proj(ops.silu_mul(self.gate_up_proj(x, lora)), lora)
