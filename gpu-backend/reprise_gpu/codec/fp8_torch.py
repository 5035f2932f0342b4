"""FP8-cache pieces of spec-v1/v2 on tensors (fp8cache.py is the reference): row exponents, exact powers of
two, the exponent section read on the device. No host synchronization: a decoder calls these per layer."""

from __future__ import annotations

import torch

from .format import EXP_MAX, EXP_MIN
from .fp8cache import E4M3_MAX


def row_exponents(amax: torch.Tensor) -> torch.Tensor:
    """fp8cache.row_exponents on a tensor (float64 frexp/ldexp are exact): -> int32, same shape."""
    a = amax.double()
    a = torch.where(torch.isfinite(a), a, torch.full_like(a, float("inf")))
    _, e = torch.frexp(torch.where(a > 0, a / E4M3_MAX, torch.ones_like(a)))
    e = torch.where(a > 0, e, torch.full_like(e, EXP_MIN))
    e = torch.where(torch.ldexp(torch.full_like(a, E4M3_MAX), (e - 1).double()) >= a, e - 1, e)
    e = torch.where(torch.isinf(a), torch.full_like(e, EXP_MAX), e)
    return e.clamp(EXP_MIN, EXP_MAX).int()


def predicted_exponents(pred: torch.Tensor) -> torch.Tensor:
    """fp8cache.predicted_exponents: [..., D] -> [..., ] int32."""
    p = torch.nan_to_num(pred.float(), nan=0.0, posinf=0.0, neginf=0.0).abs()
    return row_exponents(p.amax(dim=-1) if p.shape[-1] else p.sum(dim=-1))


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e as float32 for int e in [-149, 127], built from its bits (exact, subnormals included)."""
    e = e.int()
    bits = torch.where(e >= -126, (e + 127) << 23, torch.ones_like(e) << (e + 149).clamp(0, 22))
    return bits.view(torch.float32)


def fp8_values(codes: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """e4m3 codes (uint8 [..., D]) * 2^exps ([...]) -> float32; each product is exact or correctly rounded
    like np.ldexp."""
    return codes.view(torch.float8_e4m3fn).float() * pow2(exps)[..., None]


class ExponentReader:
    """fp8cache.read_exponents, segment after segment, on the device. Reads past the end read 0 and set
    `overflow`; `finish()` (one host sync, at the end) checks the length and padding as BitReader does."""

    def __init__(self, data: bytes, device: torch.device):
        import numpy as np
        self.nbits = len(data) * 8
        bits = np.unpackbits(np.frombuffer(bytes(data), np.uint8)) if data else np.zeros(0, np.uint8)
        self.bits = torch.from_numpy(np.concatenate([bits, np.zeros(1, np.uint8)]).astype(np.int64)).to(device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.overflow = torch.zeros((), dtype=torch.bool, device=device)

    def _take(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.numel():
            self.overflow |= (idx >= self.nbits).any()
        return self.bits[idx.clamp(0, self.nbits)]          # index nbits is the zero guard

    def read(self, e_pred: torch.Tensor) -> torch.Tensor:
        """One segment: e_pred int [n rows] -> exponents int32 [n]; out-of-range ones set overflow too."""
        n = e_pred.numel()
        ar = torch.arange(n, device=e_pred.device)
        b1 = self._take(self.pos + ar).bool()
        c1 = b1.long().cumsum(0)
        p2 = self.pos + n
        b2 = b1 & self._take(p2 + c1 - 1).bool()
        c2 = b2.long().cumsum(0)
        p3 = p2 + (c1[-1] if n else 0)
        b3 = b2 & self._take(p3 + c2 - 1).bool()
        c3 = b3.long().cumsum(0)
        p4 = p3 + (c2[-1] if n else 0)
        base = p4 + 8 * (c3 - 1)
        raw = sum(self._take(base + k) << (7 - k) for k in range(8)) if n else torch.zeros_like(ar)
        self.pos = p4 + 8 * (c3[-1] if n else 0)
        e = e_pred.long().reshape(-1)
        e = torch.where(b1 & ~b2, e + 1, e)
        e = torch.where(b2 & ~b3, e - 1, e)
        e = torch.where(b3, torch.where(raw >= 128, raw - 256, raw), e)
        self.overflow |= ((e < EXP_MIN) | (e > EXP_MAX)).any() if n else self.overflow
        return e.int().reshape(e_pred.shape)

    def finish(self) -> bool:
        """True if every bit read was inside the stream and only zero padding (< 8 bits) follows."""
        pos = int(self.pos)
        if bool(self.overflow) or pos > self.nbits or self.nbits - pos >= 8:
            return False
        return not bool(self.bits[pos:self.nbits].any())
