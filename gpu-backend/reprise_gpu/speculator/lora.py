"""LoRA in the FP8 speculator: the adapter's BF16 weights applied to the UN-quantized activations.

A request served with an adapter has K/V computed by base + LoRA, so its speculator must add the same
adapter or the predictions (and the bits) degrade. The FP8 base projections stay as they are; each LoRA
delta takes the activation before its FP8 rounding (the normalized residual, the attention output, the
SiLU product), because the low-rank path amplifies input error: fed the FP8-rounded input it predicts
noticeably worse.

Arithmetic, the same bits on every device and batch shape: x and A (per row) are rounded to integers of
`bits` bits at their own exponent (cpu_ops.to_fixed), so the float64 product sums integers below 2^53
exactly in any order; likewise s = x A^T (per row) against B. delta = scaling * (s B^T), float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cpu_ops import to_fixed


def _exact_bits(k: int) -> int:
    """Bits per operand so that k products of two such integers sum below 2^52."""
    return (52 - math.ceil(math.log2(max(k, 2)))) // 2


def fixed_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [T, K] @ w [N, K]^T in float64, both rounded per row to fixed point first: deterministic, exact sum."""
    bits = _exact_bits(x.shape[1])
    xi, xs = to_fixed(x, bits)
    wi, ws = to_fixed(w, bits)
    return torch.ldexp(xi @ wi.T, -(xs + ws.T))


@dataclass
class SpecLora:
    key: str                              # the adapter's sha256 (goes into the chunk's fingerprint)
    scaling: float
    a: dict[str, torch.Tensor]            # module -> [n_layers, r, in] float32 (the served BF16 values)
    b: dict[str, torch.Tensor]            # module -> [n_layers, out, r] float32

    def to(self, device) -> "SpecLora":
        return SpecLora(self.key, self.scaling, {m: t.to(device) for m, t in self.a.items()},
                        {m: t.to(device) for m, t in self.b.items()})

    def delta(self, layer: int, module: str, x: torch.Tensor) -> torch.Tensor | None:
        """scaling * x A^T B^T for `module` of `layer` (x [T, in], float32) -> [T, out] float32; None if untargeted."""
        if module not in self.a:
            return None
        s = fixed_matmul(x.double(), self.a[module][layer].double())
        return (fixed_matmul(s, self.b[module][layer].double()) * self.scaling).float()

    def add(self, y: torch.Tensor, layer: int, modules: tuple[str, ...], x: torch.Tensor, widths) -> torch.Tensor:
        """y [T, sum(widths)] plus the deltas of `modules` (one column block each), y's dtype kept."""
        if not any(m in self.a for m in modules):
            return y
        parts = [self.delta(layer, m, x) for m in modules]
        d = torch.cat([p if p is not None else x.new_zeros(x.shape[0], w) for p, w in zip(parts, widths)], dim=1)
        return (y.float() + d).to(y.dtype)
