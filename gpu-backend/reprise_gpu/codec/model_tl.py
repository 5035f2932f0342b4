"""The per-value arithmetic of grid.py and model.py as Triton device functions (inlined into the spec-v2
kernels of rans_tl.py). Same integer meaning as the NumPy reference, on int32 where the values allow it:

    centre  |P| < 2^11 (BF16) / 2^7 (e4m3): the grid exponent G is at least p's own exponent
    k       decoder: |c0| < 2^8, |bucket| <= 40, shift <= 18, low < 2^18  ->  |k| < 2^25
            encoder: x above p's grid by more than 20 binades (m << up >= 2^24 grid steps) is always an
            escape (its bucket is > 40 whatever the shift), so it is marked one before m << up can overflow
Format constants come in as constexprs: MB mantissa bits, BIAS, EXP_MAX, RAW (code width), NAN_MANT (-1: IEEE).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sanitize(p, MAXF: tl.constexpr):
    """grid.sanitize_prediction: NaN/inf -> 0, clamp to the format's largest finite value, -0 -> +0."""
    fin = (p == p) & (tl.abs(p) != float("inf"))
    p = tl.where(fin, p, 0.0)
    p = tl.minimum(tl.maximum(p, -MAXF), MAXF)
    return tl.where(p == 0.0, 0.0, p)                    # -0 -> +0


@triton.jit
def bitlen(K):
    """Bit length of non-negative int32 K (0 for 0): a branch-free binary search."""
    n = tl.zeros_like(K)
    b = K >= (1 << 16)
    n = tl.where(b, n + 16, n)
    K = tl.where(b, K >> 16, K)
    b = K >= (1 << 8)
    n = tl.where(b, n + 8, n)
    K = tl.where(b, K >> 8, K)
    b = K >= (1 << 4)
    n = tl.where(b, n + 4, n)
    K = tl.where(b, K >> 4, K)
    b = K >= (1 << 2)
    n = tl.where(b, n + 2, n)
    K = tl.where(b, K >> 2, K)
    b = K >= (1 << 1)
    n = tl.where(b, n + 1, n)
    K = tl.where(b, K >> 1, K)
    return n + K


@triton.jit
def layout(p, S_v, MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr, PHASE: tl.constexpr):
    """model.layout for sanitized float32 p and int32 S_v -> (G, c0, tid, shift), int32."""
    B: tl.constexpr = BIAS + MB
    b = p.to(tl.int32, bitcast=True)
    e32 = (b >> 23) & 0xFF
    e1 = tl.maximum(e32, 1)
    G0 = tl.minimum(tl.maximum(e1 - 127 + BIAS, 1), EXP_MAX)
    floor = B + ((S_v - 80 + 3) >> 2)                    # MAX_REL_SCALE = 80, SCALE_STEPS = 4
    G = tl.minimum(tl.maximum(tl.maximum(G0, floor), 1), EXP_MAX)
    mant = (b & 0x7FFFFF) | tl.where(e32 > 0, 1 << 23, 0)
    sh = tl.minimum(tl.maximum(150 - B + G - 3 - e1, 0), 31)   # GRID_FRAC_BITS = 3; >> 31 of < 2^24 is 0
    mag = mant >> sh
    P = tl.where(b < 0, -mag, mag)
    C = tl.minimum(tl.maximum(S_v - 4 * (G - B), -12), 83)     # CLASS_MIN, MAX_REL_SCALE + SCALE_STEPS - 1
    wide = C >= 12                                             # CLASS_WIDE
    if PHASE:
        c0 = tl.where(wide, (P + 4) >> 3, P >> 3)
        ph = tl.where(wide, 0, P & 7)
    else:
        c0 = (P + 4) >> 3
        ph = tl.zeros_like(P)
    tid = tl.where(wide, 192 + ((C - 12) & 3), (tl.minimum(C, 11) + 12) * 8 + ph)   # N_NARROW * 8 = 192
    shift = tl.where(wide, ((C - 12) >> 2) + 1, 0)
    return G, c0, tid, shift


@triton.jit
def symbolize(x, G, c0, shift, MB: tl.constexpr, EXP_MAX: tl.constexpr, RAW: tl.constexpr,
              NAN_MANT: tl.constexpr):
    """grid.to_grid + model.symbolize for target bits x (int32) -> (sym, low, low_len, ref, ref_len)."""
    E = (x >> MB) & ((1 << (RAW - 1 - MB)) - 1)
    frac = x & ((1 << MB) - 1)
    if NAN_MANT < 0:
        special = E > EXP_MAX
    else:
        special = (E == EXP_MAX) & (frac == NAN_MANT)
    m = frac | tl.where(E > 0, 1 << MB, 0)
    up = tl.maximum(E, 1) - G
    j = tl.where(up < 0, -up, 0)
    K = tl.where(up >= 0, m << tl.minimum(tl.maximum(up, 0), 20), m >> tl.minimum(j, 31))
    esc = special | (K == 0) | (up > 20)                 # see the module docstring: up > 20 is always an escape
    ref = m & ((1 << tl.minimum(j, 30)) - 1)
    neg = ((x >> (RAW - 1)) & 1) == 1
    r = tl.where(neg, -K, K) - c0
    bk = r >> shift
    esc = esc | (bk < -40) | (bk > 40)                   # WINDOW
    low = r & ((1 << shift) - 1)
    sym = tl.where(esc, 81, bk + 40)                     # ESCAPE
    low_len = tl.where(esc, 0, shift)
    return sym, tl.where(esc, 0, low), low_len, tl.where(esc, x, ref), tl.where(esc, RAW, j)


@triton.jit
def refinement_len(K, G, MB: tl.constexpr):
    small = (K > 0) & (K < (1 << MB))
    return tl.where(small, tl.minimum(MB + 1 - bitlen(K), G - 1), 0)


@triton.jit
def from_grid(k, ref, G, MB: tl.constexpr, EXP_MAX: tl.constexpr, RAW: tl.constexpr, NAN_MANT: tl.constexpr):
    """grid.from_grid -> (bits int32, valid)."""
    K = tl.abs(k)
    big = K >= (1 << MB)
    s = tl.maximum(bitlen(K) - MB - 1, 0)
    j = refinement_len(K, G, MB)
    Ep = tl.where(big, G + s, G - j)
    m = tl.where(big, K >> s, (K << j) | ref)
    valid = (K > 0) & (Ep <= EXP_MAX) & (Ep >= 1)
    valid = valid & (~big | ((K & ((1 << s) - 1)) == 0))
    sub = (Ep == 1) & (m < (1 << MB))
    Ef = tl.where(sub, 0, Ep)
    if NAN_MANT >= 0:
        valid = valid & ~((Ef == EXP_MAX) & ((m & ((1 << MB) - 1)) == NAN_MANT))
    bits = (Ef << MB) | (m & ((1 << MB) - 1)) | tl.where(k < 0, 1 << (RAW - 1), 0)
    return tl.where(valid, bits, 0), valid


@triton.jit
def read_bits(raw_ptr, off, n, mask):
    """Fields of n (0..32) bits at bit offsets off (int64) from big-endian u32 words (held in int64)."""
    w = off >> 5
    w0 = tl.load(raw_ptr + w, mask=mask & (n > 0), other=0)
    w1 = tl.load(raw_ptr + w + 1, mask=mask & (n > 0), other=0)
    win = (w0 << 32) | w1
    sh = tl.minimum(64 - (off & 31) - n, 63)
    return ((win >> sh) & ((tl.full(n.shape, 1, tl.int64) << n) - 1)).to(tl.int32)


@triton.jit
def mix64(z):
    """blocks.mix64 on uint64."""
    z = z + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)
