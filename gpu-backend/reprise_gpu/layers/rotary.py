"""Rotary position embedding (Su et al., RoFormer 2021) in HF's "rotate_half" layout.

Channel i of a head is paired with channel i + D/2 (the GGUF loader un-permutes llama.cpp's
interleaved layout to this one). The cos/sin table is float32, built on the CPU and indexed by
position on the device: a gather, so no host sync and nothing data-dependent (CUDA-graph safe).
"""

from __future__ import annotations

import torch
from torch import nn


def rope_table(head_dim: int, max_seq_len: int, theta: float) -> torch.Tensor:
    """[max_seq_len, head_dim] float32: cos of the D/2 frequencies, then sin."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32, device="cpu"), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; cos, sin: [T, 1, D/2] float32 -> x rotated, in x's dtype (math in float32)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.register_buffer("cos_sin", rope_table(head_dim, max_seq_len, theta), persistent=False)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) must not round the table: rebuild it in float32 wherever it went.
        super()._apply(fn, recurse)
        if self.cos_sin.device.type != "meta":
            self.cos_sin = rope_table(self.head_dim, self.max_seq_len, self.theta).to(self.cos_sin.device)
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] int64 < max_seq_len -> (cos, sin), each [T, 1, D/2] float32."""
        cos, sin = self.cos_sin[positions].unsqueeze(1).chunk(2, dim=-1)
        return cos, sin
