"""RMSNorm (Zhang & Sennrich, 2019), computed in float32 like HF's LlamaRMSNorm, optionally fused with
the residual add before it (kernels/rmsnorm.py on CUDA, its PyTorch reference elsewhere)."""

from __future__ import annotations

import torch
from torch import nn

from . import ops


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x: [T, dim] -> weight * x / rms(x), the normalization in float32, the scaling in x's dtype.

        With `residual` [T, dim]: r = x + residual (in x's dtype) -> (norm(r), r), in one kernel on CUDA.
        """
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.add_rms_norm(x, residual, self.weight, self.eps)
