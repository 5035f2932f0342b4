"""Adapters in the paged KV pool (S-LoRA's unified paging): pages, slots, loads and evictions.

A KV block holds, per layer, two pages of block_size * n_kv_heads * head_dim elements (its K half and its
V half). An adapter takes whole blocks from the same BlockManager as the sequences, and in each layer's
pages it keeps its rows: the r rows of A (in_m long) and the r rows of B^T (out_m long) of each target
module, packed first-fit-decreasing so that no row crosses a page. The layout is the same in every layer,
so one offset table per slot serves all layers (LoraMetadata.a_off / b_off). Only the adapter's own rows
are stored: no rank is padded, and a rank-8 adapter takes 1/16 of the pages of a rank-128 one.

Loads run on a side CUDA stream (host -> GPU copy, scatter into the pages, table rows) while the engine
keeps stepping; a slot is used only once its copy has completed. Idle adapters (no sequence holds them)
stay resident until their blocks are wanted, by a sequence's KV (BlockManager.reclaim) or by another
adapter, least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from ..config import ModelArgs
from ..kernels.lora_shrink import R_MAX
from ..layers.linear import ALL_MODULES, LORA_MODULES, LoraMetadata
from .registry import LoraAdapter, module_shapes


@dataclass
class PackedAdapter:
    """An adapter laid out in pages, ready to copy: what the host LRU keeps."""
    key: str
    rank: int
    scaling: float
    modules: tuple[str, ...]
    ranks: np.ndarray              # int32 [len(LORA_MODULES)]: r where targeted, else 0
    pages: torch.Tensor            # [n_layers, n_pages, page_elems], model dtype (pinned on CUDA hosts)
    a_loc: np.ndarray              # int64 [len(LORA_MODULES), R_MAX]: page * page_elems + offset of A's row j
    b_loc: np.ndarray              # the same for B^T's rows

    @cached_property
    def module_mask(self) -> int:
        """Bit i set where the adapter targets LORA_MODULES[i] (LoraMetadata.modules)."""
        return sum(1 << i for i, r in enumerate(self.ranks) if r)

    @property
    def n_pages(self) -> int:
        return self.pages.shape[1]

    @property
    def nbytes(self) -> int:
        return self.pages.numel() * self.pages.element_size()


def pack(ad: LoraAdapter, args: ModelArgs, page_elems: int, dtype: torch.dtype, pin: bool = False) -> PackedAdapter:
    """Lay `ad` out in pages of page_elems elements: first-fit decreasing, no row across a page."""
    shapes = module_shapes(args)
    rows = []                                       # (length, is_b, module index, j)
    for m in ad.modules:
        i = LORA_MODULES.index(m)
        n_in, n_out = shapes[m]
        if max(n_in, n_out) > page_elems:
            raise ValueError(f"a {m} row ({max(n_in, n_out)} values) does not fit a page of {page_elems}")
        rows += [(n_in, False, i, j) for j in range(ad.rank)] + [(n_out, True, i, j) for j in range(ad.rank)]
    rows.sort(key=lambda r: -r[0])
    free: list[int] = []
    loc = np.full((2, len(LORA_MODULES), R_MAX), -1, dtype=np.int64)
    for n, is_b, i, j in rows:
        p = next((p for p, f in enumerate(free) if f >= n), None)
        if p is None:
            p = len(free)
            free.append(page_elems)
        loc[int(is_b), i, j] = p * page_elems + page_elems - free[p]
        free[p] -= n
    pages = torch.zeros(args.n_layers, len(free) * page_elems, dtype=dtype)
    for m in ad.modules:
        i = LORA_MODULES.index(m)
        a, bt = ad.a[m].to(dtype), ad.b[m].transpose(1, 2).to(dtype)        # [L, r, in], [L, r, out]
        for j in range(ad.rank):
            o = int(loc[0, i, j])
            pages[:, o:o + a.shape[2]] = a[:, j]
            o = int(loc[1, i, j])
            pages[:, o:o + bt.shape[2]] = bt[:, j]
    pages = pages.view(args.n_layers, len(free), page_elems)
    ranks = np.array([ad.rank if m in ad.modules else 0 for m in LORA_MODULES], dtype=np.int32)
    return PackedAdapter(ad.key, ad.rank, ad.scaling, ad.modules, ranks, pages.pin_memory() if pin else pages,
                         loc[0], loc[1])


@dataclass
class _Resident:
    slot: int
    blocks: list[int]
    refs: int = 0
    done: object = None            # a torch.cuda.Event while the copy may still run, else None
    last_use: int = field(default=0)


class LoraPool:
    def __init__(self, kv_cache: torch.Tensor, block_manager, max_slots: int):
        L, two, NB = kv_cache.shape[:3]
        assert two == 2
        self.kv_cache, self.bm, self.num_blocks = kv_cache, block_manager, NB
        self.page_elems = kv_cache[0, 0, 0].numel()
        self.pages = kv_cache.view(L, 2 * NB, self.page_elems)
        assert 2 * NB * self.page_elems < 2 ** 31, "pool offsets are int32"
        dev = self.device = kv_cache.device
        M = len(LORA_MODULES)
        self.a_off = torch.zeros(max_slots, M, R_MAX, dtype=torch.int32, device=dev)
        self.b_off = torch.zeros(max_slots, M, R_MAX, dtype=torch.int32, device=dev)
        self.ranks = torch.zeros(max_slots, M, dtype=torch.int32, device=dev)
        self.scaling = torch.zeros(max_slots, dtype=torch.float32, device=dev)
        self.free_slots = list(range(max_slots))
        self.resident: OrderedDict[str, _Resident] = OrderedDict()
        self.stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self.loads = self.evictions = 0
        block_manager.reclaim = self.reclaim

    def metadata(self, token_slots: torch.Tensor, seg_starts=None, seg_slots=None, max_seg_len: int = 0,
                 order=None, tiles=None, modules: int = ALL_MODULES):
        return LoraMetadata(self.kv_cache.view(self.kv_cache.shape[0], -1), self.a_off, self.b_off, self.ranks,
                            self.scaling, token_slots, seg_starts, seg_slots, max_seg_len, order, tiles, modules)

    @property
    def num_blocks_used(self) -> int:
        return sum(len(r.blocks) for r in self.resident.values())

    # ---- per sequence ---------------------------------------------------------------------------
    def ready(self, ad: PackedAdapter) -> bool:
        """Whether `ad` can run now; starts its load if it is not resident and there is room (prefetch)."""
        r = self.resident.get(ad.key)
        if r is None:
            r = self._load(ad)
            if r is None:
                return False
        self.resident.move_to_end(ad.key)
        if r.done is not None and r.done.query():
            r.done = None
        return r.done is None

    def acquire(self, ad: PackedAdapter) -> int:
        r = self.resident[ad.key]
        r.refs += 1
        return r.slot

    def release(self, ad: PackedAdapter) -> None:
        r = self.resident.get(ad.key)
        if r is not None and r.refs > 0:
            r.refs -= 1

    # ---- room -----------------------------------------------------------------------------------
    def _evict_one(self) -> bool:
        """Drop the least recently used idle adapter; False if every resident one is in use or loading."""
        for key, r in self.resident.items():
            if r.refs == 0 and (r.done is None or r.done.query()):
                del self.resident[key]
                self.bm.release(r.blocks, owner=-(r.slot + 1))
                self.ranks[r.slot].zero_()
                self.free_slots.append(r.slot)
                self.evictions += 1
                return True
        return False

    def reclaim(self, n_blocks: int) -> None:
        """BlockManager hook: free idle adapters until n_blocks more blocks are free (or none is idle)."""
        while self.bm.num_free < n_blocks and self._evict_one():
            pass

    def _load(self, ad: PackedAdapter) -> _Resident | None:
        need = -(-ad.n_pages // 2)
        if need > self.bm.num_usable:
            raise ValueError(f"adapter needs {need} KV blocks; the pool has {self.bm.num_usable}")
        while (not self.free_slots or self.bm.num_free < need) and self._evict_one():
            pass
        if not self.free_slots or self.bm.num_free < need:
            return None
        slot = self.free_slots.pop()
        blocks = self.bm.allocate(need, owner=-(slot + 1))
        page_ids = ([b for b in blocks] + [self.num_blocks + b for b in blocks])[:ad.n_pages]
        base = np.array(page_ids, dtype=np.int64) * self.page_elems
        pe = self.page_elems

        def offsets(loc: np.ndarray) -> torch.Tensor:
            ok = loc >= 0
            return torch.from_numpy(np.where(ok, base[np.where(ok, loc // pe, 0)] + loc % pe, 0).astype(np.int32))

        a_off, b_off = offsets(ad.a_loc), offsets(ad.b_loc)
        ranks = torch.from_numpy(ad.ranks)
        res = _Resident(slot, blocks)
        if self.stream is None:
            self._copy(ad, page_ids, slot, a_off, b_off, ranks)
        else:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))   # the blocks' last KV writes
            with torch.cuda.stream(self.stream):
                self._copy(ad, page_ids, slot, a_off, b_off, ranks)
                res.done = torch.cuda.Event()
                res.done.record(self.stream)
        self.resident[ad.key] = res
        self.loads += 1
        return res

    def _copy(self, ad, page_ids, slot, a_off, b_off, ranks) -> None:
        """H2D of the packed pages (read once, write once), scattered into the pool's pages; table rows."""
        dev = self.device
        idx = torch.tensor(page_ids, dtype=torch.long).to(dev, non_blocking=True)
        self.pages.index_copy_(1, idx, ad.pages.to(dev, non_blocking=True))
        self.a_off[slot].copy_(a_off, non_blocking=True)
        self.b_off[slot].copy_(b_off, non_blocking=True)
        self.ranks[slot].copy_(ranks, non_blocking=True)
        self.scaling[slot].fill_(ad.scaling)


def dense(p: PackedAdapter, args: ModelArgs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The served weights back out of the pages, float32: ({m: A [L, r, in]}, {m: B [L, out, r]})."""
    flat = p.pages.reshape(args.n_layers, -1).float()
    shapes = module_shapes(args)
    a, b = {}, {}
    for m in p.modules:
        i = LORA_MODULES.index(m)
        n_in, n_out = shapes[m]
        a[m] = flat[:, torch.from_numpy(p.a_loc[i, :p.rank])[:, None] + torch.arange(n_in)]
        b[m] = flat[:, torch.from_numpy(p.b_loc[i, :p.rank])[:, None] + torch.arange(n_out)].transpose(1, 2)
    return a, b
