"""Exact maps between a float format's bit patterns and integer positions on a prediction's grid.

A target value x (BF16, or FP8 e4m3 in FP8-cache mode) is coded relative to a float32 prediction p on
the grid of p's own ulp: u = 2^(G - B), G = p's exponent field in the target format (>= 1), B = bias +
mantissa bits. Every finite x is m * 2^(E' - B) with E' = max(E, 1) and integer m (m >= 2^MB when
E >= 1, where MB = mantissa bits), so on that grid

    E' >= G:  k = sign * m << (E' - G)          exact; x is a grid point
    E' <  G:  k = sign * (m >> j), j = G - E'   x lies in cell k; its j low mantissa bits are sent raw

k = 0 (|x| < u), NaN, inf and cells out of reach are escapes (the raw bits of x are sent instead).
The decoder recovers x from (k, G, refinement bits); `from_grid` also rejects k that no encoder emits.
All integer arithmetic (int64), so a wasm or GPU port matches bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import GRID_FRAC_BITS, MAX_GRID_SHIFT


@dataclass(frozen=True)
class FloatFormat:
    name: str
    mant_bits: int      # explicit mantissa bits
    exp_max: int        # largest exponent field of a finite value
    bias: int
    raw_bits: int       # width of a code word (escapes send it raw)
    nan_mant: int       # e4m3 has no inf: exponent 15 with mantissa 7 is NaN; -1 for IEEE-style formats

    @property
    def B(self) -> int:
        return self.bias + self.mant_bits

    @property
    def max_finite(self) -> float:
        top = (1 << (self.mant_bits + 1)) - 1 - (1 if self.nan_mant >= 0 else 0)
        return float(top) * 2.0 ** (self.exp_max - self.B)


BF16 = FloatFormat("bf16", 7, 254, 127, 16, -1)
E4M3 = FloatFormat("e4m3", 3, 15, 7, 8, 7)


def sanitize_prediction(p: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """float32 copy with NaN/inf -> 0, -0 -> +0 and |p| clamped to the format's largest finite value."""
    p = np.asarray(p, dtype=np.float32)
    p = np.where(np.isfinite(p), p, np.float32(0))
    m = np.float32(fmt.max_finite)
    p = np.clip(p, -m, m)
    return p + np.float32(0)  # -0 + 0 = +0


def pred_exponent(p: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Exponent field of p in `fmt` (int64, clamped to [1, exp_max]); p already sanitized."""
    e32 = ((p.view(np.uint32) >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
    return np.clip(np.maximum(e32, 1) - 127 + fmt.bias, 1, fmt.exp_max)


def pred_center(p: np.ndarray, G: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """p / u(G) in fixed point with GRID_FRAC_BITS fraction bits, truncated toward zero (int64)."""
    b = p.view(np.uint32)
    e32 = ((b >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
    mant = (b & np.uint32(0x7FFFFF)).astype(np.int64) | np.where(e32 > 0, 1 << 23, 0)
    # |p| = mant * 2^(max(e32,1) - 150);  u = 2^(G - B)
    sh = 150 - fmt.B + G - GRID_FRAC_BITS - np.maximum(e32, 1)
    mag = mant >> np.clip(sh, 0, 63)
    return np.where((b >> np.uint32(31)) != 0, -mag, mag)


def split_bits(x_bits: np.ndarray, fmt: FloatFormat):
    """-> (neg bool, E int64, m int64 with the implicit bit, special bool: NaN/inf)."""
    x = x_bits.astype(np.int64)
    mb = fmt.mant_bits
    neg = (x >> (fmt.raw_bits - 1)) & 1 == 1
    E = (x >> mb) & ((1 << (fmt.raw_bits - 1 - mb)) - 1)
    frac = x & ((1 << mb) - 1)
    if fmt.nan_mant < 0:
        special = E > fmt.exp_max
    else:
        special = (E == fmt.exp_max) & (frac == fmt.nan_mant)
    m = frac | np.where(E > 0, 1 << mb, 0)
    return neg, E, m, special


def to_grid(x_bits: np.ndarray, G: np.ndarray, fmt: FloatFormat):
    """Target bits -> (k int64, ref value, ref length j, escape bool) on the grid of exponent G."""
    neg, E, m, special = split_bits(x_bits, fmt)
    Ep = np.maximum(E, 1)
    up = Ep - G
    j = np.where(up < 0, -up, 0)
    K = np.where(up >= 0, m << np.clip(up, 0, MAX_GRID_SHIFT), m >> np.clip(j, 0, 63))
    esc = special | (K == 0) | (up > MAX_GRID_SHIFT)
    ref = m & ((np.int64(1) << np.clip(j, 0, 62)) - 1)
    k = np.where(neg, -K, K)
    return np.where(esc, 0, k), np.where(esc, 0, ref), np.where(esc, 0, j), esc


def bitlen(K: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 < 2^53 (frexp is exact there); 0 for 0."""
    return np.frexp(K.astype(np.float64))[1].astype(np.int64)


def refinement_len(k: np.ndarray, G: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Raw bits the decoder reads after k: j = min(MB + 1 - bitlen(|k|), G - 1) when |k| < 2^MB, else 0."""
    K = np.abs(k)
    small = (K > 0) & (K < (1 << fmt.mant_bits))
    return np.where(small, np.minimum(fmt.mant_bits + 1 - bitlen(K), G - 1), 0)


def from_grid(k: np.ndarray, ref: np.ndarray, G: np.ndarray, fmt: FloatFormat):
    """(k, refinement bits, G) -> (target bits as int64, valid bool). Invalid = no encoder emits it."""
    mb = fmt.mant_bits
    K = np.abs(k)
    big = K >= (1 << mb)
    # E' >= G: K = m << s with m in [2^MB, 2^(MB+1)): s = bitlen(K) - MB - 1
    s = np.maximum(bitlen(K) - mb - 1, 0)
    j = refinement_len(k, G, fmt)
    Ep = np.where(big, G + s, G - j)
    m = np.where(big, K >> s, (K << j) | ref)
    valid = (K > 0) & (Ep <= fmt.exp_max) & (Ep >= 1)
    valid &= ~big | ((K & ((np.int64(1) << s) - 1)) == 0)
    sub = (Ep == 1) & (m < (1 << mb))       # subnormal: exponent field 0
    Efield = np.where(sub, 0, Ep)
    if fmt.nan_mant >= 0:
        valid &= ~((Efield == fmt.exp_max) & ((m & ((1 << mb) - 1)) == fmt.nan_mant))
    bits = (Efield << mb) | (m & ((1 << mb) - 1))
    bits = bits | np.where(k < 0, 1 << (fmt.raw_bits - 1), 0)
    return np.where(valid, bits, 0), valid
