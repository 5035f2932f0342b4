"""FP8-cache mode: the KV cache stored lossily as FP8 e4m3 with a power-of-two scale per
(layer, K/V, head, token) — the way servers keep an FP8 cache — then coded losslessly by spec-v1.

    quantize_fp8(values float32 [L, 2, KH, T, D]) -> Fp8Kv(codes uint8 [L, 2, KH, T, D], exps int8 [L, 2, KH, T])
    dequantize: value = e4m3(code) * 2^exp

The exponent of a row is the smallest e with amax(row) <= 448 * 2^e (MX-style E8M0 scale), so the
scale is known exactly and `value / 2^e` is exact. spec-v1 codes each exponent as its difference from
the one the prediction implies, with a prefix code laid out pass by pass (see `encode_exponents`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .format import EXP_MAX, EXP_MIN, Status
from .rans import BitReader, CodecError, pack_bits

E4M3_MAX = 448.0


@dataclass
class Fp8Kv:
    codes: np.ndarray   # uint8 e4m3 bit patterns [L, 2, KH, T, D]
    exps: np.ndarray    # int8 [L, 2, KH, T]; row scale 2^exp

    def values(self) -> np.ndarray:
        return np.ldexp(fp8_values(self.codes), self.exps[..., None].astype(np.int32)).astype(np.float32)


def fp8_values(codes: np.ndarray) -> np.ndarray:
    """e4m3 bit patterns (any shape, uint8) -> float32 (NaN for the NaN codes)."""
    a = np.ascontiguousarray(codes, dtype=np.uint8)
    c = torch.from_numpy(a if a.flags.writeable else a.copy()).view(torch.float8_e4m3fn)   # torch wants writable
    return c.float().numpy()


def row_exponents(amax: np.ndarray) -> np.ndarray:
    """Smallest e in [EXP_MIN, EXP_MAX] with amax <= 448 * 2^e (exact; amax float32 >= 0, NaN -> EXP_MAX)."""
    a = np.asarray(amax, np.float64)
    a = np.where(np.isfinite(a), a, np.inf)
    _, e = np.frexp(np.where(a > 0, a / E4M3_MAX, 1.0))     # a/448 = f * 2^e, f in [0.5, 1): 2^(e-1) < a/448 <= 2^e
    e = np.where(a > 0, e, EXP_MIN)
    e = np.where(np.ldexp(E4M3_MAX, e - 1) >= a, e - 1, e)  # exact powers of two land one lower
    e = np.where(np.isinf(a), EXP_MAX, e)
    return np.clip(e, EXP_MIN, EXP_MAX).astype(np.int8)


def quantize_fp8(values: np.ndarray) -> Fp8Kv:
    """float32 [L, 2, KH, T, D] -> Fp8Kv: per-row power-of-two scale, round-to-nearest-even, saturating."""
    v = np.asarray(values, np.float32)
    exps = row_exponents(np.abs(v).max(axis=-1) if v.shape[-1] else np.zeros(v.shape[:-1], np.float32))
    scaled = np.ldexp(v, -exps[..., None].astype(np.int32)).astype(np.float32)
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0), -E4M3_MAX, E4M3_MAX)
    codes = torch.from_numpy(scaled).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    return Fp8Kv(codes, exps)


def predicted_exponents(pred: np.ndarray) -> np.ndarray:
    """Exponents the prediction implies: [..., T, D] -> [..., T] int8."""
    p = np.abs(np.nan_to_num(np.asarray(pred, np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    return row_exponents(p.max(axis=-1) if p.shape[-1] else np.zeros(p.shape[:-1], np.float32))


# Exponent code, per segment, pass by pass so both sides vectorize:
#   pass 1: one bit per row, 0 = "same as predicted"
#   pass 2: one bit per row still open, 0 = "+1"
#   pass 3: one bit per row still open, 0 = "-1"
#   pass 4: the exponent as 8 raw bits (two's complement) for every row still open
def exponent_fields(e: np.ndarray, e_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = e.astype(np.int64).reshape(-1) - e_pred.astype(np.int64).reshape(-1)
    b1 = d != 0
    b2 = b1 & (d != 1)
    b3 = b2 & (d != -1)
    vals = [b1.astype(np.int64), b2[b1].astype(np.int64), b3[b2].astype(np.int64),
            (e.astype(np.int64).reshape(-1)[b3]) & 0xFF]
    lens = [np.ones(b1.size, np.int64), np.ones(int(b1.sum()), np.int64), np.ones(int(b2.sum()), np.int64),
            np.full(int(b3.sum()), 8, np.int64)]
    return np.concatenate(vals), np.concatenate(lens)


def encode_exponents(exps: np.ndarray, pred: np.ndarray | None, e_pred: np.ndarray | None = None) -> bytes:
    """exps [L, 2, KH, T], pred [L, 2, KH, T, D] (or its predicted_exponents as e_pred) -> the exponent
    section (segments in layer, K/V order)."""
    L = exps.shape[0]
    e_pred = predicted_exponents(pred) if e_pred is None else e_pred
    fields = [exponent_fields(exps[layer, kind], e_pred[layer, kind]) for layer in range(L) for kind in range(2)]
    if not fields:
        return b""
    return pack_bits(np.concatenate([f[0] for f in fields]).astype(np.uint64), np.concatenate([f[1] for f in fields]))


def read_exponents(reader: BitReader, e_pred: np.ndarray) -> np.ndarray:
    """Inverse of one segment's exponent_fields."""
    n = e_pred.size
    ep = e_pred.astype(np.int64).reshape(-1)
    b1 = reader.read(np.ones(n, np.int64)).astype(bool)
    b2 = np.zeros(n, bool)
    b2[b1] = reader.read(np.ones(int(b1.sum()), np.int64)).astype(bool)
    b3 = np.zeros(n, bool)
    b3[b2] = reader.read(np.ones(int(b2.sum()), np.int64)).astype(bool)
    raw = reader.read(np.full(int(b3.sum()), 8, np.int64)).astype(np.int64)
    e = ep.copy()
    e[b1 & ~b2] += 1
    e[b2 & ~b3] -= 1
    e[b3] = np.where(raw >= 128, raw - 256, raw)
    if np.any((e < EXP_MIN) | (e > EXP_MAX)):
        raise CodecError(Status.CORRUPT, "FP8 scale exponent out of range")
    return e.astype(np.int8).reshape(e_pred.shape)
