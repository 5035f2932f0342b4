"""Exact CPU arithmetic of the speculator: deterministic, and row-invariant by construction.

A row's result never depends on how many other rows (tokens, sequences) share the call, nor on the
machine, because only these are used:
  * elementwise IEEE +, -, *, /, sqrt, round, max, min, casts (correctly rounded, so any SIMD width,
    thread split or vector tail gives the same bits);
  * `tree_sum`: a reduction as a fixed pairwise tree over a power-of-two padded axis (zeros appended:
    padding further only adds exact zeros, so the result depends on the row's own values alone);
  * FP8 GEMMs in float64: e4m3 codes are integers times 2^-9 (|k| <= 448 * 512 < 2^18), so
    (512 a) . (512 b) sums products < 2^36 over K < 2^17 terms: every partial sum is an integer < 2^53
    and the float64 GEMM is exact whatever its blocking or order; the scales are applied after;
  * `exp_det`: exp from +, * and a bit-built 2^n (Cody-Waite reduction, degree-13 Taylor), so no libm.
Attention runs per sequence in float64, each query row over keys 0..pos padded to a power of two.
"""

from __future__ import annotations

import math

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
_LN2_HI = 6.93147180369123816490e-01   # fdlibm's split of ln 2: n * _LN2_HI is exact for |n| < 2^21
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_TAYLOR = [1.0 / math.factorial(k) for k in range(14)]


def tree_sum(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum over `dim` as a pairwise tree on the axis zero-padded to a power of two (first half + second half)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    if n == 0:
        return x.sum(-1)
    p = 1 << (n - 1).bit_length()
    if p != n:
        x = torch.cat([x, x.new_zeros(*x.shape[:-1], p - n)], dim=-1)
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x[..., 0]


def exp_det(x: torch.Tensor) -> torch.Tensor:
    """exp of float64 x with a fixed sequence of IEEE operations (0 below -708, clamped above 709)."""
    x = x.clamp(max=709.0)
    n = torch.round(x * _INV_LN2).clamp(-1022, 1023)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = torch.full_like(r, _TAYLOR[13])
    for c in reversed(_TAYLOR[:13]):
        p = p * r + c
    two_n = ((n.to(torch.int64) + 1023) << 52).view(torch.float64)
    return torch.where(x < -708.0, torch.zeros_like(p), p * two_n)


BACKEND = "cpu-exact"


def rms_norm(h: torch.Tensor, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h [T, dim] float32 -> (g * bf16(h / rms) rounded to BF16 as the target does, rms [T, 1] float32)."""
    hd = h.double()
    ms = tree_sum(hd * hd) / h.shape[-1]                # float32 squares are exact in float64
    rms = torch.sqrt(ms + eps)[:, None]
    n = (hd / rms).to(torch.bfloat16).float() * g       # BF16 x BF16 product is exact in float32
    return n.to(torch.bfloat16).float(), rms.float()


def quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, K] float32 -> (e4m3 codes [T, K], float32 scale [T]): dynamic per-row scale amax / 448."""
    s = x.abs().amax(dim=-1) / E4M3_MAX if x.shape[-1] else x.new_ones(x.shape[0])
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (x / s[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), s


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """(sa[:, None] * a) @ (sb[:, None] * b).T exactly accumulated -> float64 [T, N] (scales applied after)."""
    acc = (a.double() * 512.0) @ (b.double() * 512.0).T
    return (acc * (sa.double()[:, None] * 2.0 ** -18)) * sb.double()[None, :]


def backend_name(device) -> str:
    return BACKEND


def linear(xq, b, sb, wide: bool = False, fast: bool = False) -> torch.Tensor:
    """xq = (codes, scale) of the activations; b, sb the weight codes and row scales -> float32.
    (`wide` marks the gate/up output, which the CUDA path keeps in BF16; `fast` is a CUDA-only knob: the
    exact emulation has one arithmetic.)"""
    return fp8_gemm(xq[0], xq[1], b, sb).float()


def kv_split_linear(xq, dq, w, sw, r, sr, fast: bool = False) -> torch.Tensor:
    """Two-term product (x + d)(W + R)^T ~= x W + d W + x R, each term an exact FP8 GEMM -> float32."""
    return (fp8_gemm(xq[0], xq[1], w, sw) + fp8_gemm(dq[0], dq[1], w, sw) + fp8_gemm(xq[0], xq[1], r, sr)).float()


ATTN_DTYPE = torch.float32      # what `attention` wants q in


def rope(x: torch.Tensor, cos_sin: torch.Tensor, inverse: bool = False, out_dtype=torch.float32) -> torch.Tensor:
    """x [T, heads, D] float32; cos_sin [T, D] (cos then sin) -> rotated (HF rotate_half layout), float32."""
    cos, sin = cos_sin[:, None].chunk(2, dim=-1)
    x1, x2 = x.float().chunk(2, dim=-1)
    if inverse:
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g = gate.double()
    return (g / (1.0 + exp_det(-g)) * up.double()).float()


def norm_quant(h: torch.Tensor, g: torch.Tensor, eps: float, split: bool):
    """-> ((codes, scale) of n = rmsnorm(h) * g, (codes, scale) of n's own rounding error or None, rms [T, 1])."""
    n, rms = rms_norm(h, g, eps)
    nq = quant_rows(n)
    return nq, (quant_rows(n - nq[1][:, None] * nq[0].float()) if split else None), rms


def silu_mul_quant(gu: torch.Tensor, F: int):
    return quant_rows(silu_mul(gu[:, :F], gu[:, F:]))


class KVStore:
    """Per sequence and layer, the K/V attention reads: past (given) then each call's new tokens."""

    def __init__(self, args, seqs, lens, device, window: int = 0):
        self.args, self.lens, self.window = args, lens, window
        self.kv = [[None] * args.n_layers for _ in seqs]
        for i, s in enumerate(seqs):
            if s.start:
                if s.past_kv is None:
                    raise ValueError("a sequence that starts after position 0 needs past_kv")
                for layer in range(args.n_layers):
                    self.kv[i][layer] = s.past_kv[layer].to(device).float().permute(0, 2, 1, 3)   # [2, ctx, KH, D]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [T, KH, D] float32 for the new tokens of every sequence, concatenated."""
        for i, (kk, vv) in enumerate(zip(torch.split(k, self.lens), torch.split(v, self.lens))):
            new = torch.stack([kk, vv])
            old = self.kv[i][layer]
            self.kv[i][layer] = new if old is None else torch.cat([old, new], dim=1)

    def attend(self, layer: int, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out, base = [], 0
        for i, n in enumerate(self.lens):
            kv = self.kv[i][layer]
            out.append(attention(q[base:base + n], kv[0], kv[1], pos[base:base + n], self.args.head_dim ** -0.5,
                                 window=self.window))
            base += n
        return torch.cat(out) if out else q.new_zeros(q.shape)

    def new_kv(self, i: int) -> torch.Tensor:
        """[L, 2, KH, n, D]: the K/V sequence i's new tokens were attended with."""
        n = self.lens[i]
        return torch.stack([kv[:, kv.shape[1] - n:].permute(0, 2, 1, 3) for kv in self.kv[i]])


def to_fixed(x: torch.Tensor, bits: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per vector (last axis): x = xi * 2^-sh with integer-valued float64 |xi| <= 2^bits (sh from the vector's own max)."""
    amax = x.abs().amax(dim=-1, keepdim=True).double()
    _, e = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))
    sh = (bits - e).double()
    return torch.round(torch.ldexp(x.double(), sh)), sh


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float,
              key_block: int = 64, max_elems: int = 1 << 22, window: int = 0) -> torch.Tensor:
    """One sequence: q [n, H, D] at absolute positions q_pos [n]; k, v [ctx, KH, D] for positions 0..ctx-1.

    out[i, h] = softmax_j<=q_pos[i](scale * q[i, h] . k[j, h // G]) @ v[:, h // G], float64 inside, float32 out.
    Scores: q and k rounded per vector to 20-bit integers (own exponent), so the float64 GEMM sums
    products < 2^40 exactly. Weighted sum: keys in fixed blocks [64 b, 64 b + 64) of absolute position,
    a tree inside each block, blocks added in order; blocks past a row's position add exact zeros.
    """
    n, H, D = q.shape
    ctx, KH, _ = k.shape
    G = H // KH
    qi, qs = to_fixed(q)                                                # [n, H, D], [n, H, 1]
    ki, ks = to_fixed(k.repeat_interleave(G, dim=1))                    # [ctx, H, D], [ctx, H, 1]
    s = torch.matmul(qi.transpose(0, 1), ki.permute(1, 2, 0))           # [H, n, ctx], exact integers
    s = torch.ldexp(s, -(qs.permute(1, 0, 2) + ks.permute(1, 2, 0))).permute(1, 0, 2) * scale   # [n, H, ctx]
    visible = torch.arange(ctx)[None, :] <= q_pos[:, None]             # [n, ctx]
    if window > 0:                                                      # keys (pos - window, pos] only
        visible &= torch.arange(ctx)[None, :] > q_pos[:, None] - window
    s = s.masked_fill(~visible[:, None, :], -math.inf)
    m = s.amax(dim=-1, keepdim=True)
    p = exp_det(s - m).masked_fill(~visible[:, None, :], 0.0)          # [n, H, ctx]
    vd = v.double().repeat_interleave(G, dim=1)                         # [ctx, H, D]
    num = torch.zeros(n, H, D, dtype=torch.float64)
    den = torch.zeros(n, H, dtype=torch.float64)
    rows = max(1, max_elems // (H * key_block * D))
    last = int(q_pos.max()) + 1 if n else 0
    for b0 in range(0, min(ctx, last), key_block):
        vb = vd[b0:b0 + key_block]
        pad = key_block - vb.shape[0]
        pb = p[:, :, b0:b0 + key_block]
        if pad:
            vb = torch.cat([vb, vb.new_zeros(pad, H, D)])
            pb = torch.cat([pb, pb.new_zeros(n, H, pad)], dim=-1)
        den = den + tree_sum(pb, dim=-1)
        for a in range(0, n, rows):
            num[a:a + rows] = num[a:a + rows] + tree_sum(pb[a:a + rows, :, :, None] * vb.transpose(0, 1)[None], dim=-2)
    return (num / den[..., None]).float()
