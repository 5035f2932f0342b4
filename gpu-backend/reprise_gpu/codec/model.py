"""The probability model of one segment (one layer's K or V): parameters, symbols, raw fields.

Per value (target x, prediction p; both in the target format's units):
    S_v  = S[head, channel] - SCALE_STEPS * e          # header scale, quarter-octaves; e = FP8 scale exponent (0 for BF16)
    G    = max(exponent of p, floor so that sigma/u <= 2^20), clamped to [1, exp_max]
    P    = p / u(G) in eighths of a grid step;  C = S_v - 4 (G - B)   (sigma / u in quarter-octaves)
    narrow (C < CLASS_WIDE): table (C, phase of P), offset k - c0 coded directly
    wide: shift s = (C - CLASS_WIDE) // 4 + 1, bucket (k - c0) >> s coded, its s low bits raw
Then per value, in order: the symbol (rANS), the s low bits (wide), j refinement bits (x below p's
binade) — or, after ESCAPE, the target's raw bits.

Two models share this machinery:
    baseline ("a", as published): per-channel Gaussian with fitted variance + wide Gaussian + uniform
        floor, fixed mixture, centre rounded to the grid (no phase).
    improved ("b"): centre kept to 1/4 ulp (phase tables), mixture chosen per segment and per-channel
        scales refined by exact code length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import (CLASS_MIN, CLASS_WIDE, ESCAPE, GRID_FRAC_BITS, MAX_REL_SCALE, N_NARROW, N_SYMBOLS, N_TABLES,
                     PROB_BITS, SCALE_STEPS, WINDOW)
from .grid import FloatFormat, pred_center, pred_exponent, refinement_len, to_grid
from .tables import COST_FRAC_BITS, cost_table_q

MODELS = {"baseline": 0, "improved": 1}
BASELINE_MIX = (8, 8, 1, 0)          # a_w = 8/256 at 4x sigma, floor 1/256, no extra escape mass
REFINE_DELTAS = (-2, -1, 0, 1, 2)
MIX_CANDIDATES = [(a_w, k_w, a_f, 0) for a_w in (0, 3, 8, 20) for k_w in (6, 10) for a_f in (0, 1)]


@dataclass
class SegmentParams:
    mix: tuple[int, int, int, int]   # a_w, k_w, a_f, a_e
    scale: np.ndarray                # int8 [kv_heads * head_dim], quarter-octaves of the residual scale


@dataclass
class Layout:
    """Per-value quantities that depend only on the prediction and the parameters (known to the decoder)."""
    G: np.ndarray       # grid exponent
    c0: np.ndarray      # centre cell
    tid: np.ndarray     # table id
    shift: np.ndarray   # raw low bits of a wide bucket


def layout(p: np.ndarray, S_v: np.ndarray, fmt: FloatFormat, phase: bool) -> Layout:
    """p: sanitized float32 [n] in target units; S_v: int64 [n] per-value scale (quarter-octaves)."""
    G = grid_exponent(pred_exponent(p, fmt), S_v, fmt)
    return layout_at(pred_center(p, G, fmt), G, S_v, fmt, phase)


def grid_exponent(G0: np.ndarray, S_v: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """G: the prediction's exponent, raised so that sigma / u stays <= 2^20."""
    floor = fmt.B + ((S_v - MAX_REL_SCALE + SCALE_STEPS - 1) >> 2)
    return np.minimum(np.maximum(np.maximum(G0, floor), 1), fmt.exp_max)   # np.clip's dispatch costs more here


def layout_at(P: np.ndarray, G: np.ndarray, S_v: np.ndarray, fmt: FloatFormat, phase: bool) -> Layout:
    """layout() given G and the prediction's centre P = pred_center(p, G)."""
    C = np.minimum(np.maximum(S_v - SCALE_STEPS * (G - fmt.B), CLASS_MIN), MAX_REL_SCALE + SCALE_STEPS - 1)
    wide = C >= CLASS_WIDE
    nph = 1 << GRID_FRAC_BITS
    if phase:
        c0 = np.where(wide, (P + nph // 2) >> GRID_FRAC_BITS, P >> GRID_FRAC_BITS)
        ph = np.where(wide, 0, P & (nph - 1))
    else:
        c0 = (P + nph // 2) >> GRID_FRAC_BITS
        ph = np.zeros_like(P)
    tid = np.where(wide, N_NARROW * nph + ((C - CLASS_WIDE) & 3), (np.minimum(C, CLASS_WIDE - 1) - CLASS_MIN) * nph + ph)
    shift = np.where(wide, ((C - CLASS_WIDE) >> 2) + 1, 0)
    return Layout(G, c0, tid, shift)


@dataclass
class Symbols:
    sym: np.ndarray       # [n] 0 .. ESCAPE
    low: np.ndarray       # raw low bits of wide buckets
    low_len: np.ndarray
    ref: np.ndarray       # refinement bits, or the escaped raw value
    ref_len: np.ndarray


def symbolize(x_bits: np.ndarray, lay: Layout, fmt: FloatFormat, grid=None) -> Symbols:
    """grid: to_grid(x_bits, lay.G, fmt) if the caller has it already."""
    k, ref, j, esc = to_grid(x_bits, lay.G, fmt) if grid is None else grid
    r = k - lay.c0
    b = r >> lay.shift
    esc = esc | (b < -WINDOW) | (b > WINDOW)
    low = r & ((np.int64(1) << lay.shift) - 1)
    sym = np.where(esc, ESCAPE, b + WINDOW)
    return Symbols(sym=sym, low=np.where(esc, 0, low), low_len=np.where(esc, 0, lay.shift),
                   ref=np.where(esc, x_bits.astype(np.int64), ref), ref_len=np.where(esc, fmt.raw_bits, j))


def code_cost_q(cost_q: np.ndarray, lay: Layout, s: Symbols) -> np.ndarray:
    """code_bits in fixed point (1/2^COST_FRAC_BITS bit, int64) under cost_table_q's table."""
    return cost_q[lay.tid, s.sym] + ((s.low_len + s.ref_len) << COST_FRAC_BITS)


def code_bits(freq: np.ndarray, lay: Layout, s: Symbols) -> np.ndarray:
    """Exact cost in bits of each value under `freq` [N_TABLES, N_SYMBOLS] (for the encoder's search)."""
    return (PROB_BITS - np.log2(freq))[lay.tid, s.sym] + s.low_len + s.ref_len


def histogram(lay: Layout, s: Symbols) -> np.ndarray:
    """Counts of (table, symbol) pairs [N_TABLES, N_SYMBOLS]."""
    return np.bincount(lay.tid * N_SYMBOLS + s.sym, minlength=N_TABLES * N_SYMBOLS).reshape(N_TABLES, N_SYMBOLS)


def fit_scale(x_val: np.ndarray, p: np.ndarray, e_shift: np.ndarray, groups: int) -> np.ndarray:
    """Initial per-channel scale: round(4 log2 rms(x - p)) in unscaled units; x_val/p/e_shift: [groups, m]."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = (x_val.astype(np.float64) - p.astype(np.float64)) * np.exp2(e_shift.astype(np.float64))
        r = np.where(np.isfinite(r) & (np.abs(r) < 1e300), r, 0.0)
    rms = np.sqrt(np.mean(r * r, axis=1)) if r.shape[1] else np.zeros(groups)
    S = np.where(rms > 0, np.round(SCALE_STEPS * np.log2(np.maximum(rms, 1e-300))), -128)
    return np.clip(S, -128, 127).astype(np.int8)


def choose_params(x_bits: np.ndarray, x_val: np.ndarray, p: np.ndarray, e: np.ndarray, fmt: FloatFormat,
                  model: str, groups: int) -> SegmentParams:
    """Encoder-side fit. Arrays are [groups, m] (group = head*channel, m values each); e = FP8 scale exponents."""
    S = fit_scale(x_val, p, e, groups)
    if model == "baseline":
        return SegmentParams(BASELINE_MIX, S)
    xf, pf, ef = x_bits.reshape(-1), p.reshape(-1), e.reshape(-1).astype(np.int64)
    gidx = np.repeat(np.arange(groups), x_bits.shape[1])
    at_g = _AtExponent(xf, pf, fmt)

    def per_value_cost(S_try: np.ndarray, cost_q: np.ndarray) -> np.ndarray:
        lay, grid = at_g.layout(S_try.astype(np.int64)[gidx] - SCALE_STEPS * ef)
        return code_cost_q(cost_q, lay, symbolize(xf, lay, fmt, grid))

    lay, grid = at_g.layout(S.astype(np.int64)[gidx] - SCALE_STEPS * ef)
    sy = symbolize(xf, lay, fmt, grid)
    hist = histogram(lay, sy)
    # integer costs: exact sums, so a GPU encoder that adds them in another order picks the same (first) minimum
    best = min(MIX_CANDIDATES, key=lambda mix: int((hist * cost_table_q(*mix)).sum()))
    cost_q = cost_table_q(*best)
    # per-channel scale refinement by exact code length (quarter-octave steps)
    deltas = REFINE_DELTAS
    costs = np.stack([_group_sums(gidx, per_value_cost(np.clip(S.astype(np.int64) + d, -128, 127), cost_q), groups)
                      for d in deltas])
    S = np.clip(S.astype(np.int64) + np.array(deltas)[np.argmin(costs, axis=0)], -128, 127).astype(np.int8)
    return SegmentParams(best, S)


def _group_sums(gidx: np.ndarray, v: np.ndarray, groups: int) -> np.ndarray:
    """Exact int64 sums of v per group: bincount adds in float64, exact while every partial sum stays
    below 2^53 (a value costs < 2^22 here, a group holds < 2^24 values)."""
    return np.bincount(gidx, v.astype(np.float64), minlength=groups).astype(np.int64)


class _AtExponent:
    """The encoder's search tries several scales per segment; a value's grid position and centre depend on
    the scale only through G, which most values keep. Computed once, then redone only where G moves."""

    def __init__(self, x_bits: np.ndarray, p: np.ndarray, fmt: FloatFormat):
        self.x, self.p, self.fmt = x_bits, p, fmt
        self.G0 = pred_exponent(p, fmt)
        self.G = self.G0
        self.P = pred_center(p, self.G0, fmt)
        self.grid = to_grid(x_bits, self.G0, fmt)

    def layout(self, S_v: np.ndarray, phase: bool = True):
        """-> (layout(p, S_v), to_grid(x, its G)), identical to computing them from scratch."""
        G = grid_exponent(self.G0, S_v, self.fmt)
        moved = G != self.G
        P, grid = self.P, self.grid
        if moved.any():
            P = P.copy()
            P[moved] = pred_center(self.p[moved], G[moved], self.fmt)
            grid = tuple(a.copy() for a in grid)
            for a, sub in zip(grid, to_grid(self.x[moved], G[moved], self.fmt)):
                a[moved] = sub
        return layout_at(P, G, S_v, self.fmt, phase), grid


def reconstruct_lengths(sym: np.ndarray, low: np.ndarray, lay: Layout, fmt: FloatFormat):
    """Decoder: from symbols and low bits -> (k, refinement length incl. escapes, escape mask)."""
    esc = sym == ESCAPE
    b = sym - WINDOW
    k = lay.c0 + (b << lay.shift) + low
    j = refinement_len(k, lay.G, fmt)
    return k, np.where(esc, fmt.raw_bits, j), esc
