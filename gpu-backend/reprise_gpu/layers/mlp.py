"""SwiGLU feed-forward (Shazeer, 2020): down(silu(gate(x)) * up(x)), gate and up fused in one Linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.ffn_dim = ffn_dim
        self.gate_up_proj = nn.Linear(dim, 2 * ffn_dim, bias=False)  # rows [0, F): gate, [F, 2F): up
        self.down_proj = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, dim] -> [T, dim]."""
        gate, up = self.gate_up_proj(x).split(self.ffn_dim, dim=-1)
        return self.down_proj(F.silu(gate) * up)
