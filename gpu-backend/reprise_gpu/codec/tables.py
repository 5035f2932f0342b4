"""Integer frequency tables of the `spec-v1` probability model, computed from header parameters.

Every table is a quantized mixture over the symbol alphabet (offsets -WINDOW..WINDOW, then ESCAPE):

    mass(j) = (1 - a_w - a_f) * N(j; sigma) + a_w * N(j; sigma * 2^(k_w/4)) + a_f * uniform + escape tail

N(j; s) is the mass of a Gaussian centred on the prediction over the bin of offset j, read from a fixed
Q30 table of the standard normal CDF with linear interpolation (`phi`). Tables differ by class (sigma
in quarter-octaves of the grid unit), by phase (the prediction's position inside its grid cell, narrow
classes only) and by the segment's mixture bytes. Only integers after the CDF table: any port that
embeds the same table (its SHA-256 is checked at import) builds the same frequencies.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np

from .format import (CLASS_MIN, CLASS_WIDE, ESCAPE, GRID_FRAC_BITS, N_NARROW, N_SYMBOLS, N_TABLES, PHI_BITS,
                     PHI_RANGE, PHI_STEP_BITS, PHI_TABLE_SHA256_EXPECTED, PROB_BITS, SCALE_STEPS, WINDOW)

_INV_QUARTER = np.array([round(65536 * 2 ** (-r / 4)) for r in range(4)], dtype=np.int64)  # 2^(-r/4) in Q16


@lru_cache(maxsize=1)
def phi_table() -> np.ndarray:
    """Q30 standard normal CDF at z = i / 2^PHI_STEP_BITS, i = 0 .. PHI_RANGE * 2^PHI_STEP_BITS (+1 guard)."""
    n = PHI_RANGE << PHI_STEP_BITS
    t = [round((0.5 + 0.5 * math.erf(i / (1 << PHI_STEP_BITS) / math.sqrt(2.0))) * (1 << PHI_BITS))
         for i in range(n + 1)]
    t.append(1 << PHI_BITS)
    arr = np.array(t, dtype=np.int64)
    digest = hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()
    if digest != PHI_TABLE_SHA256_EXPECTED:
        raise RuntimeError(f"Gaussian CDF table differs on this platform ({digest}); spec-v1 cannot be used")
    return arr


def phi(zq: np.ndarray) -> np.ndarray:
    """Q30 CDF of the standard normal at z = zq / 2^16 (int64 in, int64 out)."""
    t = phi_table()
    a = np.abs(zq)
    idx = a >> (16 - PHI_STEP_BITS)
    frac = a & ((1 << (16 - PHI_STEP_BITS)) - 1)
    top = PHI_RANGE << PHI_STEP_BITS
    inside = idx < top
    i = np.minimum(idx, top)
    v = t[i] + (((t[i + 1] - t[i]) * frac) >> (16 - PHI_STEP_BITS))
    v = np.where(inside, v, 1 << PHI_BITS)
    return np.where(zq < 0, (1 << PHI_BITS) - v, v)


def _z(n: np.ndarray, C: np.ndarray) -> np.ndarray:
    """z = (n / 2^GRID_FRAC_BITS) / 2^(C/4) in Q16, sign-magnitude rounding toward zero."""
    q = C >> 2
    r = C & 3
    a = np.abs(n) * _INV_QUARTER[r]            # n * 2^(-r/4) * 2^16
    sh = q + GRID_FRAC_BITS                    # then / 2^GRID_FRAC_BITS / 2^q
    mag = np.where(sh >= 0, a >> np.clip(sh, 0, 62), a << np.clip(-sh, 0, 30))
    return np.where(n < 0, -mag, mag)


def _gauss_mass(C: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Q30 mass of N(0, 2^(C/4)) on [lo, hi] / 2^GRID_FRAC_BITS (grid units); broadcasts."""
    return phi(_z(hi, C)) - phi(_z(lo, C))


def table_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per table id: (C = class in quarter-octaves of sigma/u, phase, wide flag)."""
    tid = np.arange(N_TABLES)
    nph = 1 << GRID_FRAC_BITS
    narrow = tid < N_NARROW * nph
    C = np.where(narrow, CLASS_MIN + tid // nph, CLASS_WIDE - SCALE_STEPS + (tid - N_NARROW * nph))
    phase = np.where(narrow, tid % nph, 0)
    return C.astype(np.int64), phase.astype(np.int64), ~narrow


@lru_cache(maxsize=64)
def build_tables(a_w: int, k_w: int, a_f: int, a_e: int) -> np.ndarray:
    """Frequencies [N_TABLES, N_SYMBOLS] int64, each row summing to 2^PROB_BITS, all >= 1.

    Cached (read-only result): the encoder's mixture search rebuilds the same 16 candidates for every
    segment, and a decoder sees a handful of distinct mixtures per chunk. The cache is bounded because
    a hostile header may name any of 2^32 mixtures.

    a_w: weight of the wide component /256; k_w: its extra scale in quarter-octaves;
    a_f: weight of the uniform floor /256; a_e: extra escape mass /2^16.
    """
    C, phase, wide = table_classes()
    j = np.arange(-WINDOW, WINDOW + 1, dtype=np.int64)[None, :]
    # bin of offset j in 1/2^GRID_FRAC_BITS grid units, relative to the centre. Narrow: [j - 1/2, j + 1/2]
    # minus the phase. Wide: bucket j covers [j, j + 1) bucket units, sigma in buckets (class CLASS_WIDE - 4 + r).
    nph = 1 << GRID_FRAC_BITS
    lo4 = np.where(wide[:, None], nph * j, nph * j - nph // 2 - phase[:, None])
    hi4 = np.where(wide[:, None], nph * j + nph, nph * j + nph // 2 - phase[:, None])
    Cn = C[:, None]
    g = ((256 - a_w - a_f) * _gauss_mass(Cn, lo4, hi4) + a_w * _gauss_mass(Cn + k_w, lo4, hi4)) >> 8
    one = 1 << PHI_BITS
    uni = np.full_like(g, ((a_f * one) >> 8) // (2 * WINDOW + 1))
    mass = g + uni
    tail = np.maximum(one - mass.sum(axis=1), 0) + (a_e << (PHI_BITS - 16))
    mass = np.concatenate([mass, tail[:, None]], axis=1)
    freq = quantize(mass)
    freq.setflags(write=False)
    return freq


@lru_cache(maxsize=64)
def cost_table(a_w: int, k_w: int, a_f: int, a_e: int) -> np.ndarray:
    """Code length in bits of every (table, symbol) under `build_tables(...)`, float64, read-only."""
    cost = PROB_BITS - np.log2(build_tables(a_w, k_w, a_f, a_e))
    cost.setflags(write=False)
    return cost


COST_FRAC_BITS = 16   # encoder search costs in 1/2^16 bit: integer sums are exact in any order (GPU atomics)


@lru_cache(maxsize=64)
def cost_table_q(a_w: int, k_w: int, a_f: int, a_e: int) -> np.ndarray:
    """`cost_table` in fixed point, int64 round(bits * 2^COST_FRAC_BITS), read-only. The encoder compares
    candidate parameters by sums of these, so every implementation picks the same ones."""
    q = np.round(cost_table(a_w, k_w, a_f, a_e) * (1 << COST_FRAC_BITS)).astype(np.int64)
    q.setflags(write=False)
    return q


def quantize(mass: np.ndarray) -> np.ndarray:
    """Rows of non-negative int64 masses -> frequencies >= 1 summing to 2^PROB_BITS (integer, deterministic).

    f = 1 + mass * (M - S) // total; the remainder goes to the row's largest frequency (first on ties).
    """
    M = 1 << PROB_BITS
    S = mass.shape[1]
    total = np.maximum(mass.sum(axis=1, keepdims=True), 1)
    f = 1 + (mass * (M - S)) // total
    rem = M - f.sum(axis=1)
    top = np.argmax(f, axis=1)
    f[np.arange(f.shape[0]), top] += rem
    return f


def cumulative(freq: np.ndarray) -> np.ndarray:
    """[T, S] -> [T, S + 1] starts (0 .. 2^PROB_BITS)."""
    return np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)], axis=1)


assert N_SYMBOLS == ESCAPE + 1
