"""rANS symbol decoding of one segment on the GPU (Triton), and its plain PyTorch reference.

Both decode `n` symbols of a spec-v1 segment (docs/kv-codec-format.md, "rANS"): steps of `lanes`
symbols, lane j of step t holds symbol t * lanes + j; per active lane

    slot = x & (M - 1);  s = lut[table, slot];  x = freq[table, s] * (x >> PROB_BITS) + slot - cum[table, s]
    if x < L: x = (x << 16) | words[ptr + (number of renormalizing lanes before this one)]

and `ptr` advances by the step's renormalizing lanes. The kernel runs every step of the segment in one
program: the steps are sequential (each needs the states the previous one left), the lanes are the
vector. A step costs a few table gathers and one prefix sum over the lanes, so a segment of 10^5
symbols is ~25 dependent steps instead of 25 x ~15 PyTorch launches.

Hostile streams: word reads past the end are masked (they read 0) and `ptr` keeps counting, so the
caller sees ptr > n_words afterwards and reports CORRUPT; nothing is read out of bounds. Slots index a
table row of exactly M entries, so any state gives a valid symbol.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .format import DEFAULT_LANES, PROB_BITS, RANS_L, RANS_WORD_BITS


# Sizes vary per chunk: without do_not_specialize Triton would compile a variant per divisibility pattern.
@triton.jit(do_not_specialize=["n", "lanes", "n_words"])
def _rans_segment_kernel(x_ptr, ptr_ptr, words_ptr, tid_ptr, lut_ptr, freq_ptr, cum_ptr, sym_ptr,
                         n, lanes, n_words,
                         S: tl.constexpr, PB: tl.constexpr, RL: tl.constexpr, WB: tl.constexpr, LANES: tl.constexpr):
    j = tl.arange(0, LANES)
    in_lanes = j < lanes
    x = tl.load(x_ptr + j, mask=in_lanes, other=0)
    ptr = tl.load(ptr_ptr)
    a = tl.program_id(0).to(tl.int64) * 0      # loop-carried: must start as a tensor, not a constexpr
    while a < n:  # a while loop: the interpreter cannot range() over a runtime bound
        active = in_lanes & (a + j < n)
        t = tl.load(tid_ptr + a + j, mask=active, other=0).to(tl.int64)
        slot = x & ((1 << PB) - 1)
        s = tl.load(lut_ptr + t * (1 << PB) + slot, mask=active, other=0).to(tl.int64)
        f = tl.load(freq_ptr + t * S + s, mask=active, other=1).to(tl.int64)
        c = tl.load(cum_ptr + t * S + s, mask=active, other=0).to(tl.int64)
        xn = f * (x >> PB) + slot - c
        need = active & (xn < RL)
        before = tl.cumsum(need.to(tl.int64), axis=0) - need.to(tl.int64)
        w = tl.load(words_ptr + ptr + before, mask=need & (ptr + before < n_words), other=0).to(tl.int64)
        xn = tl.where(need, (xn << WB) | w, xn)
        x = tl.where(active, xn, x)
        ptr += tl.sum(need.to(tl.int64), axis=0)
        tl.store(sym_ptr + a + j, s.to(tl.int32), mask=active)
        a += lanes
    tl.store(x_ptr + j, x, mask=in_lanes)
    tl.store(ptr_ptr, ptr)


def decode_segment(x: torch.Tensor, ptr: torch.Tensor, words: torch.Tensor, tid: torch.Tensor, lut: torch.Tensor,
                   freq: torch.Tensor, cum: torch.Tensor, lanes: int) -> torch.Tensor:
    """Decode len(tid) symbols; updates x (int64 [lanes] states) and ptr (int64 [1] word cursor) in place.

    words: int64 [n_words]; tid: int64 table of each symbol; lut: int16 [tables, M] slot -> symbol;
    freq, cum: int64 [tables, S] (cum without its final column). -> int32 [n] symbols.
    """
    n = tid.numel()
    sym = torch.empty(n, dtype=torch.int32, device=x.device)
    if n:
        S = freq.shape[1]
        _rans_segment_kernel[(1,)](x, ptr, words, tid, lut, freq, cum, sym, n, lanes, words.numel(),
                                   S=S, PB=PROB_BITS, RL=RANS_L, WB=RANS_WORD_BITS, LANES=_lanes_block(lanes),
                                   num_warps=8)
    return sym


def _lanes_block(lanes: int) -> int:
    """One compiled variant for every chunk spec-v1's encoder writes (<= DEFAULT_LANES lanes)."""
    return max(DEFAULT_LANES, triton.next_power_of_2(lanes))


def warm_up(device: torch.device) -> None:
    """Compile the kernel now, so the first chunk a server decodes does not wait for Triton."""
    f = torch.full((1, 2), 1 << (PROB_BITS - 1), dtype=torch.int64, device=device)
    x = torch.full((1,), RANS_L, dtype=torch.int64, device=device)
    decode_segment(x, torch.zeros(1, dtype=torch.int64, device=device), torch.zeros(1, dtype=torch.int64, device=device),
                   torch.zeros(1, dtype=torch.int64, device=device), slot_lut(f), f, torch.zeros_like(f), 1)


def decode_segment_ref(x: torch.Tensor, ptr: torch.Tensor, words: torch.Tensor, tid: torch.Tensor,
                       lut: torch.Tensor, freq: torch.Tensor, cum: torch.Tensor, lanes: int) -> torch.Tensor:
    """The same, one PyTorch op at a time (the specification's loop, vectorized over lanes)."""
    n = tid.numel()
    sym = torch.empty(n, dtype=torch.int32, device=x.device)
    mask = (1 << PROB_BITS) - 1
    safe = words if words.numel() else words.new_zeros(1)       # reads past the end are masked to 0 below
    for a in range(0, n, lanes):
        k = min(lanes, n - a)
        xs, t = x[:k], tid[a:a + k]
        slot = xs & mask
        s = lut[t, slot].long()
        xs = freq[t, s] * (xs >> PROB_BITS) + slot - cum[t, s]
        need = xs < RANS_L
        before = torch.cumsum(need.long(), 0) - need.long()
        idx = ptr + before
        ok = need & (idx < words.numel())
        w = torch.where(ok, safe[idx.clamp(0, safe.numel() - 1)], 0)
        x[:k] = torch.where(need, (xs << RANS_WORD_BITS) | w, xs)
        ptr += need.sum()
        sym[a:a + k] = s.int()
    return sym


def slot_lut(freq: torch.Tensor) -> torch.Tensor:
    """[tables, S] frequencies summing to M per row -> int16 [tables, M]: the symbol owning each slot."""
    T, S = freq.shape
    sym = torch.arange(S, device=freq.device).repeat(T)
    return torch.repeat_interleave(sym, freq.reshape(-1)).view(T, 1 << PROB_BITS).to(torch.int16)
