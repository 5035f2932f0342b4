"""SwiGLU feed-forward (Shazeer, 2020): down(silu(gate(x)) * up(x)), gate and up fused in one Linear."""

from __future__ import annotations

import torch
from torch import nn

from . import ops


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.ffn_dim = ffn_dim
        self.gate_up_proj = nn.Linear(dim, 2 * ffn_dim, bias=False)  # rows [0, F): gate, [F, 2F): up
        self.down_proj = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, dim] -> [T, dim]; silu(gate) * up in one kernel on CUDA (kernels/silu_mul.py)."""
        return self.down_proj(ops.silu_mul(self.gate_up_proj(x)))
