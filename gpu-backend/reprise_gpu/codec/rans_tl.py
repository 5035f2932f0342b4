"""spec-v2 on the GPU: the encoder's and the decoder's Triton kernels side by side.

Reference: spec2.py + blocks.py (NumPy); tests hold these kernels to its bytes and values. A program owns
BLOCKS rANS blocks (docs/kv-codec-format.md, spec-v2) as a [BLOCKS, 32] tensor, one block per warp row:

    decode, per step s = 0 .. steps-1 of every block at once:
        p = pred[value]; (G, c0, table, shift) = layout(p, scale)          # model_tl
        rANS: symbol from the slot; state update; renormalizing lanes read words[ptr + warp prefix]
        low bits at low cursor + warp prefix; k; refinement/escape bits at the ref cursor + prefix
        bits = from_grid(k, ref, G); out[value] = bits; hash += mix64(index << 16 | bits)
    encode, per step s = steps-1 .. 0: symbolize, emit words (written from the end of the block's slot
        of a scratch buffer), state update; a second kernel runs the steps forwards and ORs the raw fields
        into big-endian u32 words at their block offsets
    cost (encoder search): per tile of one head, the code length under 16 mixtures (MODE 0) or under 5
        scale deltas of each channel (MODE 1), summed in int64 and added atomically (exact in any order)

Memory per value: decode reads 4 B of prediction + ~0.7 B of stream and writes 2 B; encode reads 2 B of
target + 4 B of prediction per pass (cost x2, rANS, pack) and writes ~0.7 B. Nothing returns to the host
between kernels; the host only sizes the output once at the end.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .model_tl import from_grid, layout, mix64, read_bits, refinement_len, sanitize, symbolize

# Table geometry in the kernels: 196 tables (N_TABLES) x 82 symbols (N_SYMBOLS), 2^15 slots (PROB_BITS).


@triton.jit
def _value_layout(pred_ptr, rowexp_ptr, scale_ptr, seg, vi, act, n_seg, TD, KHD,
                  D: tl.constexpr, FP8: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr,
                  MAXF: tl.constexpr, PHASE: tl.constexpr):
    """Prediction and per-value scale of values vi of segments seg -> layout(...)."""
    p = sanitize(tl.load(pred_ptr + seg.to(tl.int64) * n_seg + vi, mask=act, other=0.0), MAXF)
    h = vi // TD
    S_v = tl.load(scale_ptr + seg * KHD + h * D + vi % D, mask=act, other=0)
    if FP8:
        S_v -= 4 * tl.load(rowexp_ptr + (seg.to(tl.int64) * n_seg + vi) // D, mask=act, other=0)
    return layout(p, S_v, MB, BIAS, EXP_MAX, PHASE)


# ---- decode -------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["n_blocks", "nb_seg", "n_seg", "TD", "KHD", "steps", "seg0", "raw_bits"])
def _decode_kernel(
        # per value: predictions (float32, FP8: already / 2^e) and row exponents of the launched segments
        pred_ptr, rowexp_ptr,
        # per segment: scales int32 [., KH*D], table set index int32 [.]
        scale_ptr, mix_ptr, lut_ptr, freq_ptr, cum_ptr,
        # per block (int64): states [., 32], word base and count, low-bit base/count, ref count
        states_ptr, wbase_ptr, nwords_ptr, rbase_ptr, nlow_ptr, nref_ptr, words_ptr, raw_ptr,
        # outputs: target bits of the launched segments; per block status and values-hash part
        out_ptr, status_ptr, hash_ptr,
        # sizes; every per-segment and per-block pointer starts at the launch's first segment seg0
        n_blocks, nb_seg, n_seg, TD, KHD, steps, seg0, raw_bits,
        # meta
        D: tl.constexpr, FP8: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr,
        RAW: tl.constexpr, NAN_MANT: tl.constexpr, MAXF: tl.constexpr, PHASE: tl.constexpr, BLOCKS: tl.constexpr,
        SEARCH: tl.constexpr):
    lb = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    okb = lb < n_blocks
    seg_l = lb // nb_seg                     # segment within this launch (seg0 + seg_l in the chunk)
    gb = lb
    lanes = tl.arange(0, 32)
    x = tl.load(states_ptr + gb[:, None] * 32 + lanes[None, :], mask=okb[:, None], other=65536)
    wbase = tl.load(wbase_ptr + gb, mask=okb, other=0)
    nw = tl.load(nwords_ptr + gb, mask=okb, other=0)
    lowc = tl.load(rbase_ptr + gb, mask=okb, other=0)
    refc = lowc + tl.load(nlow_ptr + gb, mask=okb, other=0)
    ref_end = refc + tl.load(nref_ptr + gb, mask=okb, other=0)
    low_end = refc
    tb0 = tl.load(mix_ptr + seg_l, mask=okb, other=0) * 196
    wptr = tl.zeros([BLOCKS], tl.int64)
    err = tl.max((x < 65536).to(tl.int32), axis=1)      # initial states below 2^16: no encoder writes them
    hsum = tl.zeros([BLOCKS], tl.uint64)
    s = tl.program_id(0) * 0                 # loop-carried tensor: the interpreter cannot range() a runtime bound
    while s < steps:
        vi = (lb % nb_seg)[:, None] * (32 * steps) + s * 32 + lanes[None, :]
        act = okb[:, None] & (vi < n_seg)
        G, c0, tid, shift = _value_layout(pred_ptr, rowexp_ptr, scale_ptr, seg_l[:, None], vi, act, n_seg, TD, KHD,
                                          D, FP8, MB, BIAS, EXP_MAX, MAXF, PHASE)
        tb = tb0[:, None] + tid
        slot = x & 0x7FFF
        if SEARCH:      # the last symbol whose start <= slot: 7 halvings of the 82 starts
            sym = tl.zeros_like(tid)
            for k in tl.static_range(7):
                cand = sym + (64 >> k)
                st = tl.load(cum_ptr + tb * 82 + cand, mask=act & (cand < 82), other=1 << 30)
                sym = tl.where(st <= slot, cand, sym)
        else:
            sym = tl.load(lut_ptr + tb.to(tl.int64) * 32768 + slot, mask=act, other=0).to(tl.int32)
        f = tl.load(freq_ptr + tb * 82 + sym, mask=act, other=1).to(tl.int64)
        c = tl.load(cum_ptr + tb * 82 + sym, mask=act, other=0).to(tl.int64)
        xn = f * (x >> 15) + slot - c
        need = act & (xn < 65536)
        ni = need.to(tl.int32)
        widx = wptr[:, None] + (tl.cumsum(ni, axis=1) - ni)
        over = need & (widx >= nw[:, None])
        w = tl.load(words_ptr + wbase[:, None] + widx, mask=need & ~over, other=0).to(tl.int64)
        x = tl.where(need, (xn << 16) | w, tl.where(act, xn, x))
        wptr += tl.sum(ni, axis=1)
        esc = sym == 81
        low_len = tl.where(esc | ~act, 0, shift)
        off = lowc[:, None] + (tl.cumsum(low_len, axis=1) - low_len)
        over = over | (act & (off + low_len > raw_bits))
        low = read_bits(raw_ptr, off, low_len, act)
        lowc += tl.sum(low_len, axis=1)
        k = c0 + (sym - 40) * (1 << shift) + low
        ref_len = tl.where(act, tl.where(esc, RAW, refinement_len(tl.abs(k), G, MB)), 0)
        off = refc[:, None] + (tl.cumsum(ref_len, axis=1) - ref_len)
        over = over | (act & (off + ref_len > raw_bits))
        ref = read_bits(raw_ptr, off, ref_len, act)
        refc += tl.sum(ref_len, axis=1)
        bits, valid = from_grid(tl.where(esc, 1, k), ref, G, MB, EXP_MAX, RAW, NAN_MANT)
        v = tl.where(esc, ref, bits)
        bad = over | (act & ~esc & ~valid)
        err = tl.maximum(err, tl.max(bad.to(tl.int32), axis=1))
        oidx = seg_l[:, None].to(tl.int64) * n_seg + vi
        if FP8:
            tl.store(out_ptr + oidx, v.to(tl.uint8), mask=act)
        else:
            tl.store(out_ptr + oidx, v.to(tl.int16), mask=act)
        z = (((seg0 + seg_l)[:, None].to(tl.int64) * n_seg + vi).to(tl.uint64) << 16) | (v & 0xFFFF).to(tl.uint64)
        hsum += tl.sum(tl.where(act, mix64(z), tl.zeros_like(z)), axis=1)
        s += 1
    done = (wptr == nw) & (tl.max((x != 65536).to(tl.int32), axis=1) == 0) & (lowc == low_end) & (refc == ref_end)
    tl.store(status_ptr + gb, tl.where(done & (err == 0), 0, 1), mask=okb)
    tl.store(hash_ptr + gb, hsum.to(tl.int64, bitcast=True), mask=okb)



@triton.jit(do_not_specialize=["n_blocks", "nb_seg", "n_seg", "TD", "KHD", "steps", "seg0", "raw_bits"])
def _decode_kernel_pipelined(
        # per value: predictions (float32, FP8: already / 2^e) and row exponents of the launched segments
        pred_ptr, rowexp_ptr,
        # per segment: scales int32 [., KH*D], table set index int32 [.]
        scale_ptr, mix_ptr, lut_ptr, freq_ptr, cum_ptr,
        # per block (int64): states [., 32], word base and count, low-bit base/count, ref count
        states_ptr, wbase_ptr, nwords_ptr, rbase_ptr, nlow_ptr, nref_ptr, words_ptr, raw_ptr,
        # outputs: target bits of the launched segments; per block status and values-hash part
        out_ptr, status_ptr, hash_ptr,
        # sizes; every per-segment and per-block pointer starts at the launch's first segment seg0
        n_blocks, nb_seg, n_seg, TD, KHD, steps, seg0, raw_bits,
        # meta
        D: tl.constexpr, FP8: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr,
        RAW: tl.constexpr, NAN_MANT: tl.constexpr, MAXF: tl.constexpr, PHASE: tl.constexpr, BLOCKS: tl.constexpr,
        SEARCH: tl.constexpr):
    """The same decode as _decode_kernel, software-pipelined (a variant the benchmark times)."""
    lb = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    okb = lb < n_blocks
    seg_l = lb // nb_seg                     # segment within this launch (seg0 + seg_l in the chunk)
    lanes = tl.arange(0, 32)
    x = tl.load(states_ptr + lb[:, None] * 32 + lanes[None, :], mask=okb[:, None], other=65536)
    err = tl.max((x < 65536).to(tl.int32), axis=1)      # initial states below 2^16: no encoder writes them
    wbase = tl.load(wbase_ptr + lb, mask=okb, other=0)
    nw = tl.load(nwords_ptr + lb, mask=okb, other=0)
    lowc = tl.load(rbase_ptr + lb, mask=okb, other=0)
    refc = lowc + tl.load(nlow_ptr + lb, mask=okb, other=0)
    ref_end = refc + tl.load(nref_ptr + lb, mask=okb, other=0)
    low_end = refc
    tb0 = tl.load(mix_ptr + seg_l, mask=okb, other=0) * 196
    wptr = tl.zeros([BLOCKS], tl.int64)
    hsum = tl.zeros([BLOCKS], tl.uint64)
    vb = (lb % nb_seg)[:, None] * (32 * steps) + lanes[None, :]
    # Two-stage pipeline: iteration s runs the rANS step s (three dependent gathers: slot table, freq/start,
    # words) interleaved with the raw-bit reads and reconstruction of step s-1 (two dependent reads), so the
    # two chains' memory latencies overlap. Iteration `steps` only finishes the last step.
    act = okb[:, None] & (vb < n_seg) & (steps > 0)
    G, c0, tid, shift = _value_layout(pred_ptr, rowexp_ptr, scale_ptr, seg_l[:, None], vb, act, n_seg, TD, KHD,
                                      D, FP8, MB, BIAS, EXP_MAX, MAXF, PHASE)
    act_p = act & False
    vi_p, sym_p, G_p, c0_p, shift_p = vb, tid * 0, G, c0, shift
    s = tl.program_id(0) * 0                 # loop-carried tensor: the interpreter cannot range() a runtime bound
    while s <= steps:
        vi = vb + s * 32
        # stage 1, step s: the symbol (gather 1)
        tb = tb0[:, None] + tid
        slot = x & 0x7FFF
        if SEARCH:      # the last symbol whose start <= slot: 7 halvings of the 82 starts
            sym = tl.zeros_like(tid)
            for k in tl.static_range(7):
                cand = sym + (64 >> k)
                st = tl.load(cum_ptr + tb * 82 + cand, mask=act & (cand < 82), other=1 << 30)
                sym = tl.where(st <= slot, cand, sym)
        else:
            sym = tl.load(lut_ptr + tb.to(tl.int64) * 32768 + slot, mask=act, other=0).to(tl.int32)
        # stage 2, step s-1: its wide buckets' low bits (read 1)
        esc_p = sym_p == 81
        low_len = tl.where(esc_p | ~act_p, 0, shift_p)
        off = lowc[:, None] + (tl.cumsum(low_len, axis=1) - low_len)
        over = act_p & (off + low_len > raw_bits)
        low = read_bits(raw_ptr, off, low_len, act_p)
        lowc += tl.sum(low_len, axis=1)
        # stage 1: frequency and start (gather 2)
        f = tl.load(freq_ptr + tb * 82 + sym, mask=act, other=1).to(tl.int64)
        c = tl.load(cum_ptr + tb * 82 + sym, mask=act, other=0).to(tl.int64)
        # stage 2: the value's grid position, then its refinement/escape bits (read 2)
        k = c0_p + (sym_p - 40) * (1 << shift_p) + low
        ref_len = tl.where(act_p, tl.where(esc_p, RAW, refinement_len(tl.abs(k), G_p, MB)), 0)
        off = refc[:, None] + (tl.cumsum(ref_len, axis=1) - ref_len)
        over = over | (act_p & (off + ref_len > raw_bits))
        ref = read_bits(raw_ptr, off, ref_len, act_p)
        refc += tl.sum(ref_len, axis=1)
        # stage 1: state update and renormalization (gather 3)
        xn = f * (x >> 15) + slot - c
        need = act & (xn < 65536)
        ni = need.to(tl.int32)
        widx = wptr[:, None] + (tl.cumsum(ni, axis=1) - ni)
        over_w = need & (widx >= nw[:, None])
        w = tl.load(words_ptr + wbase[:, None] + widx, mask=need & ~over_w, other=0).to(tl.int64)
        # stage 2: the value
        bits, valid = from_grid(tl.where(esc_p, 1, k), ref, G_p, MB, EXP_MAX, RAW, NAN_MANT)
        v = tl.where(esc_p, ref, bits)
        bad = over | over_w | (act_p & ~esc_p & ~valid)
        err = tl.maximum(err, tl.max(bad.to(tl.int32), axis=1))
        oidx = seg_l[:, None].to(tl.int64) * n_seg + vi_p
        if FP8:
            tl.store(out_ptr + oidx, v.to(tl.uint8), mask=act_p)
        else:
            tl.store(out_ptr + oidx, v.to(tl.int16), mask=act_p)
        z = (((seg0 + seg_l)[:, None].to(tl.int64) * n_seg + vi_p).to(tl.uint64) << 16) | (v & 0xFFFF).to(tl.uint64)
        hsum += tl.sum(tl.where(act_p, mix64(z), tl.zeros_like(z)), axis=1)
        x = tl.where(need, (xn << 16) | w, tl.where(act, xn, x))
        wptr += tl.sum(ni, axis=1)
        # next: step s becomes stage 2's; step s+1's layout (its prediction loads do not wait for the state)
        act_p, vi_p, sym_p, G_p, c0_p, shift_p = act, vi, sym, G, c0, shift
        act = okb[:, None] & (vi + 32 < n_seg) & (s + 1 < steps)
        G, c0, tid, shift = _value_layout(pred_ptr, rowexp_ptr, scale_ptr, seg_l[:, None], vi + 32, act, n_seg, TD,
                                          KHD, D, FP8, MB, BIAS, EXP_MAX, MAXF, PHASE)
        s += 1
    done = (wptr == nw) & (tl.max((x != 65536).to(tl.int32), axis=1) == 0) & (lowc == low_end) & (refc == ref_end)
    tl.store(status_ptr + lb, tl.where(done & (err == 0), 0, 1), mask=okb)
    tl.store(hash_ptr + lb, hsum.to(tl.int64, bitcast=True), mask=okb)


# ---- encode -------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["n_blocks", "nb_seg", "n_seg", "TD", "KHD", "steps"])
def _encode_kernel(
        x_ptr, pred_ptr, rowexp_ptr, scale_ptr, mix_ptr, start_ptr, freq_ptr,
        # outputs per block: final states [., 32], words (scratch [., 32*steps], filled from the end), counts
        states_ptr, scratch_ptr, nwords_ptr, nlow_ptr, nref_ptr, hash_ptr,
        n_blocks, nb_seg, n_seg, TD, KHD, steps,
        D: tl.constexpr, FP8: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr,
        RAW: tl.constexpr, NAN_MANT: tl.constexpr, MAXF: tl.constexpr, PHASE: tl.constexpr, BLOCKS: tl.constexpr):
    lb = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    okb = lb < n_blocks
    seg = lb // nb_seg
    lanes = tl.arange(0, 32)
    cap = 32 * steps
    tb0 = tl.load(mix_ptr + seg, mask=okb, other=0) * 196
    x = tl.full([BLOCKS, 32], 65536, tl.int64)
    wcur = tl.zeros([BLOCKS], tl.int64) + cap
    nlow = tl.zeros([BLOCKS], tl.int64)
    nref = tl.zeros([BLOCKS], tl.int64)
    hsum = tl.zeros([BLOCKS], tl.uint64)
    s = steps - 1 + tl.program_id(0) * 0
    while s >= 0:
        vi = (lb % nb_seg)[:, None] * cap + s * 32 + lanes[None, :]
        act = okb[:, None] & (vi < n_seg)
        G, c0, tid, shift = _value_layout(pred_ptr, rowexp_ptr, scale_ptr, seg[:, None], vi, act, n_seg, TD, KHD,
                                          D, FP8, MB, BIAS, EXP_MAX, MAXF, PHASE)
        xv = tl.load(x_ptr + seg[:, None].to(tl.int64) * n_seg + vi, mask=act, other=0).to(tl.int32) & ((1 << RAW) - 1)
        sym, low, low_len, ref, ref_len = symbolize(xv, G, c0, shift, MB, EXP_MAX, RAW, NAN_MANT)
        tb = tb0[:, None] + tid
        f = tl.load(freq_ptr + tb * 82 + sym, mask=act, other=1).to(tl.int64)
        st = tl.load(start_ptr + tb * 82 + sym, mask=act, other=0).to(tl.int64)
        emit = act & (x >= (f << 17))                       # 32 - PROB_BITS
        ei = emit.to(tl.int32)
        cnt = tl.sum(ei, axis=1)
        pos = (wcur - cnt)[:, None] + (tl.cumsum(ei, axis=1) - ei)
        tl.store(scratch_ptr + lb[:, None].to(tl.int64) * cap + pos, (x & 0xFFFF).to(tl.int16), mask=emit)
        wcur -= cnt
        xs = tl.where(emit, x >> 16, x)                      # < 2^32: a 32-bit division
        q = (xs.to(tl.uint32) // f.to(tl.uint32)).to(tl.int64)
        x = tl.where(act, (q << 15) + (xs - q * f) + st, x)
        nlow += tl.sum(tl.where(act, low_len, 0), axis=1)
        nref += tl.sum(tl.where(act, ref_len, 0), axis=1)
        z = ((seg[:, None].to(tl.int64) * n_seg + vi).to(tl.uint64) << 16) | xv.to(tl.uint64)
        hsum += tl.sum(tl.where(act, mix64(z), tl.zeros_like(z)), axis=1)
        s -= 1
    tl.store(states_ptr + lb[:, None] * 32 + lanes[None, :], x, mask=okb[:, None])
    tl.store(nwords_ptr + lb, cap - wcur, mask=okb)
    tl.store(nlow_ptr + lb, nlow, mask=okb)
    tl.store(nref_ptr + lb, nref, mask=okb)
    tl.store(hash_ptr + lb, hsum.to(tl.int64, bitcast=True), mask=okb)


@triton.jit
def _or_field(w_ptr, off, n, v, mask):
    """OR the n-bit field v (n <= 32) into big-endian u32 words (int32 bit patterns) at bit offset off."""
    q = (off & 31).to(tl.int32)
    wi = off >> 5
    m = mask & (n > 0)
    v = v.to(tl.int64)
    first = tl.where(q + n <= 32, v << tl.maximum(32 - q - n, 0), v >> tl.maximum(q + n - 32, 0))
    tl.atomic_or(w_ptr + wi, (first & 0xFFFFFFFF).to(tl.uint32).to(tl.int32, bitcast=True), mask=m)
    second = (v << tl.minimum(tl.maximum(64 - q - n, 0), 63).to(tl.int64)) & 0xFFFFFFFF
    tl.atomic_or(w_ptr + wi + 1, second.to(tl.uint32).to(tl.int32, bitcast=True), mask=m & (q + n > 32))


@triton.jit(do_not_specialize=["n_blocks", "nb_seg", "n_seg", "TD", "KHD", "steps"])
def _pack_kernel(x_ptr, pred_ptr, rowexp_ptr, scale_ptr, rbase_ptr, nlow_ptr, words_ptr,
                 n_blocks, nb_seg, n_seg, TD, KHD, steps,
                 D: tl.constexpr, FP8: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr,
                 RAW: tl.constexpr, NAN_MANT: tl.constexpr, MAXF: tl.constexpr, PHASE: tl.constexpr,
                 BLOCKS: tl.constexpr):
    lb = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    okb = lb < n_blocks
    seg = lb // nb_seg
    lanes = tl.arange(0, 32)
    lowc = tl.load(rbase_ptr + lb, mask=okb, other=0)
    refc = lowc + tl.load(nlow_ptr + lb, mask=okb, other=0)
    s = tl.program_id(0) * 0
    while s < steps:
        vi = (lb % nb_seg)[:, None] * (32 * steps) + s * 32 + lanes[None, :]
        act = okb[:, None] & (vi < n_seg)
        G, c0, tid, shift = _value_layout(pred_ptr, rowexp_ptr, scale_ptr, seg[:, None], vi, act, n_seg, TD, KHD,
                                          D, FP8, MB, BIAS, EXP_MAX, MAXF, PHASE)
        xv = tl.load(x_ptr + seg[:, None].to(tl.int64) * n_seg + vi, mask=act, other=0).to(tl.int32) & ((1 << RAW) - 1)
        sym, low, low_len, ref, ref_len = symbolize(xv, G, c0, shift, MB, EXP_MAX, RAW, NAN_MANT)
        low_len = tl.where(act, low_len, 0)
        ref_len = tl.where(act, ref_len, 0)
        _or_field(words_ptr, lowc[:, None] + tl.cumsum(low_len, axis=1) - low_len, low_len, low, act)
        _or_field(words_ptr, refc[:, None] + tl.cumsum(ref_len, axis=1) - ref_len, ref_len, ref, act)
        lowc += tl.sum(low_len, axis=1)
        refc += tl.sum(ref_len, axis=1)
        s += 1


@triton.jit(do_not_specialize=["T", "n_seg", "TD", "KHD"])
def _cost_kernel(x_ptr, pred_ptr, rowexp_ptr, scale_ptr, mix_ptr, costq_ptr, out_ptr,
                 T, n_seg, TD, KHD,
                 MODE: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, FP8: tl.constexpr,
                 MB: tl.constexpr, BIAS: tl.constexpr, EXP_MAX: tl.constexpr, RAW: tl.constexpr,
                 NAN_MANT: tl.constexpr, MAXF: tl.constexpr):
    """grid (segments, heads, token tiles). MODE 0: out[seg, 16] += table cost under each mixture
    candidate at the fitted scales. MODE 1: out[seg, 5, KH*D] += cost of each channel at scale + (-2..2)."""
    seg = tl.program_id(0)
    h = tl.program_id(1)
    t = tl.program_id(2) * BT + tl.arange(0, BT)
    d = tl.arange(0, BD)
    act = (t[:, None] < T) & (d[None, :] < D)
    vi = h * TD + t[:, None] * D + d[None, :]
    base = seg.to(tl.int64) * n_seg
    p = sanitize(tl.load(pred_ptr + base + vi, mask=act, other=0.0), MAXF)
    xv = tl.load(x_ptr + base + vi, mask=act, other=0).to(tl.int32) & ((1 << RAW) - 1)
    S0 = tl.load(scale_ptr + seg * KHD + h * D + d, mask=d < D, other=0)[None, :]
    e4 = tl.zeros([BT, BD], tl.int32)
    if FP8:
        e4 = 4 * tl.load(rowexp_ptr + (base + vi) // D, mask=act, other=0)
    if MODE == 0:
        G, c0, tid, shift = layout(p, S0 - e4, MB, BIAS, EXP_MAX, True)
        sym, low, low_len, ref, ref_len = symbolize(xv, G, c0, shift, MB, EXP_MAX, RAW, NAN_MANT)
        for m in tl.static_range(16):
            cq = tl.load(costq_ptr + (m * 196 + tid) * 82 + sym, mask=act, other=0).to(tl.int64)
            tl.atomic_add(out_ptr + seg * 16 + m, tl.sum(tl.sum(cq, axis=1), axis=0))
    else:
        mix = tl.load(mix_ptr + seg)
        for di in tl.static_range(5):
            S_try = tl.minimum(tl.maximum(S0 + (di - 2), -128), 127)
            G, c0, tid, shift = layout(p, S_try - e4, MB, BIAS, EXP_MAX, True)
            sym, low, low_len, ref, ref_len = symbolize(xv, G, c0, shift, MB, EXP_MAX, RAW, NAN_MANT)
            cq = tl.load(costq_ptr + (mix * 196 + tid) * 82 + sym, mask=act, other=0).to(tl.int64)
            cq += (low_len + ref_len).to(tl.int64) << 16       # COST_FRAC_BITS
            col = tl.sum(tl.where(act, cq, 0), axis=0)
            tl.atomic_add(out_ptr + (seg * 5 + di) * KHD + h * D + d, col, mask=d < D)
