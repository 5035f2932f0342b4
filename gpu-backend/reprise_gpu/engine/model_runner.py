"""Turns a scheduled batch into model inputs, runs the model and samples the next tokens.

Mixed and prefill steps run eagerly. On CUDA, pure-decode steps replay a CUDA graph captured per
batch size in GRAPH_BATCH_SIZES (the batch is padded up to the next size; padded rows read and write
only the reserved block 0). A graph computes the logits and their argmax, so an all-greedy decode
step reads back B token ids and nothing else. Inputs reach a graph through two pinned host buffers and
two H2D copies: ids, positions, slots and context lengths in one; the block tables, from a host mirror
that rewrites a row only when its sequence or table length changed, in the other.

With a LoRA pool (enable_lora), two more sets of decode graphs are captured: LoRA kernels in every
projection, and in q, k, v, o only (a batch whose adapters all leave the MLP alone launches no MLP LoRA
kernels: at the 8B shape their empty grids cost ~1.5 ms per step). They serve any batch in which some
sequence has an adapter, whatever the adapters: the
per-token adapter slots, the tokens sorted by slot and their tile table (kernels/lora_tiles.py: T rows,
so the grid is fixed) are graph inputs in _d64, and the pool's tables are read in place. Batches
without adapters keep replaying the plain graphs.

A CUDA graph holds raw device addresses and keeps nothing alive: every tensor a graph reads must be
owned by the runner for the graph's life. They all live in four runner buffers (_d64: ids, positions,
slots, context lengths; _dbt: block tables; _dcu: the constant cu_seqlens 0..bs), and each DecodeGraph
also holds the exact input objects it was captured with. (H200 run 2: cu_seqlens was made per capture
and dropped after it; the caching allocator handed its freed bytes to later eager steps, so replays
read their data as sequence offsets: wrong tokens, then an illegal memory access at batch 64.)
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels.lora_tiles import build_tiles
from ..lora.batch import step_metadata
from ..layers.linear import ALL_MODULES, ATTN_MODULES
from ..models.llama import AttnMetadata, LoraMetadata, alloc_kv_cache
from .block_manager import NULL_BLOCK
from .sampling import make_generator, sample
from .scheduler import ScheduledBatch
from .sequence import Sequence

log = logging.getLogger(__name__)

GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class DecodeGraph:
    graph: object               # torch.cuda.CUDAGraph, or EagerReplay off CUDA
    logits: torch.Tensor        # [bs, vocab] float32, written by replay()
    tokens: torch.Tensor        # [bs] int64, argmax of logits
    inputs: tuple               # (ids, positions, AttnMetadata[, LoraMetadata]) read by replay(): kept alive here


def lora_graph_words(bs: int) -> int:
    """int64 words of a LoRA graph's extra inputs: slots [bs], order [bs], tiles [bs, 3] (int32 each)."""
    return 2 * ((bs + 1) // 2) + (3 * bs + 1) // 2


def lora_graph_views(buf32, bs: int):
    """(token slots [bs], order [bs], tiles [bs, 3]): int32 views of a graph input buffer (int64 words, seen
    as int32; numpy or torch), after a size-bs graph's ids | positions | slots | context lengths."""
    half = (bs + 1) // 2
    a = 2 * (3 * bs + half)
    b = a + 2 * half
    c = b + 2 * half
    return buf32[a:a + bs], buf32[b:b + bs], buf32[c:c + 3 * bs].reshape(bs, 3)


def module_mask(seqs) -> int:
    """The union of the running adapters' module masks (LoraMetadata.modules)."""
    m = 0
    for s in seqs:
        if s.lora_slot >= 0:
            m |= s.adapter.module_mask
    return m


class GraphInputFreed(RuntimeError):
    pass


class EagerReplay:
    """Stands in for a CUDA graph off CUDA: replay() reruns the step on the same static input tensors,
    so the CPU tests exercise the graph path's input packing, padding and outputs.

    Like a CUDA graph, it does not keep its inputs alive (it holds weak references): if the owner lets
    one go, replay() raises GraphInputFreed where a CUDA graph would read freed memory."""

    def __init__(self, fn, *inputs):
        self.fn, self._inputs = fn, [weakref.ref(x) for x in inputs]
        self.outputs = fn(*inputs)

    def replay(self) -> None:
        inputs = [r() for r in self._inputs]
        if any(x is None for x in inputs):
            raise GraphInputFreed("a graph input was freed after capture; the runner must keep it alive")
        for out, new in zip(self.outputs, self.fn(*inputs)):
            out.copy_(new)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, *, num_blocks: int, block_size: int, max_model_len: int,
                 max_num_seqs: int, dtype: torch.dtype, device: torch.device | str, cuda_graphs: bool = True,
                 compile_decode: bool = False):
        self.model = model
        self.args = model.args
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.kv_cache = alloc_kv_cache(self.args, num_blocks, block_size, dtype, self.device)
        self.graphs: dict[int, DecodeGraph] = {}
        self.lora_graphs: dict[int, DecodeGraph] = {}           # LoRA in every projection
        self.lora_attn_graphs: dict[int, DecodeGraph] = {}      # LoRA in q, k, v, o only: no MLP launches
        self.lora_pool = None
        # torch.compile may fuse what is left between the GEMMs and the Triton kernels; it falls back to
        # the eager step if compilation fails.
        self.compiled = compile_decode
        self._decode_fn = torch.compile(self.decode_step, dynamic=True) if compile_decode else self.decode_step
        if cuda_graphs and self.device.type == "cuda":
            self.capture_graphs(max_num_seqs)

    def enable_lora(self, pool) -> None:
        """Serve adapters from `pool` (lora/pool.py); with decode graphs, capture their LoRA twins."""
        self.lora_pool = pool
        if self.graphs:
            self.capture_graphs(None, lora=True)

    # ---- inputs ---------------------------------------------------------------------------------
    def _host_inputs(self, batch: ScheduledBatch, pad_to: int | None = None):
        """(i64 [ids | positions | slots], i32 [cu_seqlens | context_lens], block_tables [B, width]) on the host.

        Padded rows (pad_to > len(batch)): one token each at position 0, slot 0 (block 0), context 1.
        """
        bs, seqs, new = self.block_size, batch.seqs, batch.num_new
        nseq = len(seqs)
        B = nseq if pad_to is None else pad_to
        if batch.is_decode:
            T = B
            pos = [s.num_cached for s in seqs]
            ids = [s.token_ids[p] for s, p in zip(seqs, pos)]
            slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, pos)]
            cu = range(B + 1)
        else:
            T = sum(new)
            ids, pos, slots, cu = [], [], [], [0]
            for s, n in zip(seqs, new):
                start = s.num_cached
                p = range(start, start + n)
                ids += s.token_ids[start:start + n]
                pos += p
                slots += [s.block_table[q // bs] * bs + q % bs for q in p]
                cu.append(cu[-1] + n)
        i64 = np.zeros(3 * T, dtype=np.int64)
        i64[:len(ids)] = ids
        i64[T:T + len(pos)] = pos
        i64[2 * T:2 * T + len(slots)] = slots
        i32 = np.ones(2 * B + 1, dtype=np.int32)
        i32[:len(cu)] = cu
        i32[len(cu):B + 1] = np.arange(cu[-1] + 1, cu[-1] + 1 + B + 1 - len(cu))
        i32[B + 1:B + 1 + nseq] = [s.num_cached + n for s, n in zip(seqs, new)]
        width = max(len(s.block_table) for s in seqs)
        bt = np.full((B, width), NULL_BLOCK, dtype=np.int32)
        for b, s in enumerate(seqs):
            bt[b, :len(s.block_table)] = s.block_table
        return i64, i32, bt

    def _eager_inputs(self, batch: ScheduledBatch):
        i64, i32, bt = self._host_inputs(batch)
        lora = step_metadata(self.lora_pool, [s.lora_slot for s in batch.seqs], batch.num_new, self.device,
                             modules=module_mask(batch.seqs))
        T, B = len(i64) // 3, len(batch)
        dev = self.device
        i64_d = torch.from_numpy(i64).to(dev, non_blocking=True)
        i32_d = torch.from_numpy(i32).to(dev, non_blocking=True)
        attn = AttnMetadata(cu_seqlens_q=i32_d[:B + 1], context_lens=i32_d[B + 1:],
                            block_tables=torch.from_numpy(bt).to(dev, non_blocking=True),
                            slot_mapping=i64_d[2 * T:], max_seqlen_q=max(batch.num_new),
                            max_context_len=int(i32[B + 1:].max()))
        return i64_d[:T], i64_d[T:2 * T], attn, lora

    # ---- run ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int | None]:
        """Run one step; returns the sampled token for each seq that reached its end, None for the others."""
        n = len(batch)
        sampling = [i for i, (s, k) in enumerate(zip(batch.seqs, batch.num_new)) if s.num_cached + k == len(s)]
        graph_bs = self._graph_size(batch)
        if graph_bs is not None:
            g = self._replay(batch, graph_bs)
            if len(sampling) == n and all(s.params.greedy for s in batch.seqs):
                return g.tokens[:n].tolist()
            logits = g.logits[:n]
        else:
            ids, pos, attn, lora = self._eager_inputs(batch)
            hidden = self.model(ids, pos, attn, self.kv_cache, lora)
            if not sampling:
                return [None] * len(batch)
            last = np.cumsum(batch.num_new) - 1
            idx = torch.from_numpy(last[sampling]).to(self.device, non_blocking=True)
            logits = self.model.compute_logits(hidden.index_select(0, idx))
        if graph_bs is not None and len(sampling) < len(batch):
            logits = logits[sampling]
        seqs = [batch.seqs[i] for i in sampling]
        for s in seqs:
            if s.generator is None and not s.params.greedy:
                s.generator = make_generator(s.params.seed, self.device)
        tokens = sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
        out: list[int | None] = [None] * len(batch)
        for i, tok in zip(sampling, tokens):
            out[i] = tok
        return out

    def forward_logits(self, ids: torch.Tensor, pos: torch.Tensor, attn: AttnMetadata,
                       lora: LoraMetadata | None = None) -> torch.Tensor:
        """Logits of every row."""
        return self.model.compute_logits(self.model(ids, pos, attn, self.kv_cache, lora))

    def decode_step(self, ids: torch.Tensor, pos: torch.Tensor, attn: AttnMetadata,
                    lora: LoraMetadata | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, greedy tokens) of every row: what a decode graph computes."""
        logits = self.forward_logits(ids, pos, attn, lora)
        return logits, logits.argmax(dim=-1)

    def _graph_size(self, batch: ScheduledBatch) -> int | None:
        if not self.graphs or not batch.is_decode:
            return None
        if not self.lora_graphs and any(s.lora_slot >= 0 for s in batch.seqs):
            return None                      # adapters but no LoRA graphs: the eager step
        return next((s for s in self.graphs if s >= len(batch)), None)

    def _replay(self, batch: ScheduledBatch, bs: int) -> DecodeGraph:
        """Pack a decode batch, padded to bs rows, into the graph's inputs and replay it."""
        seqs, n, blk = batch.seqs, len(batch), self.block_size
        h64, ctx = self._h64_np, self._h32_np[6 * bs:7 * bs]       # int64 [ids | pos | slots | ctx | lora: slots, order, tiles]
        lora_slots = [s.lora_slot for s in seqs]
        use_lora = self.lora_graphs and any(x >= 0 for x in lora_slots)
        if use_lora:  # the tokens' slots, and the same tokens sorted into adapter tiles (kernels/lora_tiles.py)
            ls, order, tiles = lora_graph_views(self._h32_np, bs)
            ls[:n] = lora_slots
            ls[n:] = -1
            build_tiles(ls, order, tiles)
        pos = [s.num_cached for s in seqs]
        h64[:n] = [s.token_ids[p] for s, p in zip(seqs, pos)]
        h64[bs:bs + n] = pos
        h64[2 * bs:2 * bs + n] = [s.block_table[p // blk] * blk + p % blk for s, p in zip(seqs, pos)]
        ctx[:n] = pos
        ctx[:n] += 1
        if n < bs:  # padding rows: token 0 at position 0 into slot 0 (block 0), context 1
            for k in range(3):
                h64[k * bs + n:(k + 1) * bs] = 0
            ctx[n:] = 1
        w = self._sync_block_tables(seqs)
        stage = self._hbt_np[:bs * w].reshape(bs, w)
        stage[:] = self._bt_mirror[:bs, :w]
        m = 3 * bs + (bs + 1) // 2 + (lora_graph_words(bs) if use_lora else 0)
        self._d64[:m].copy_(self._h64[:m], non_blocking=True)
        self._dbt[:bs, :w].copy_(self._hbt[:bs * w].view(bs, w), non_blocking=True)
        if not use_lora:
            g = self.graphs[bs]
        elif self.lora_attn_graphs and not module_mask(seqs) & ~ATTN_MODULES:
            g = self.lora_attn_graphs[bs]
        else:
            g = self.lora_graphs[bs]
        g.graph.replay()
        return g

    def _sync_block_tables(self, seqs: list[Sequence]) -> int:
        """Bring the host mirror's rows [0, len(seqs)) up to the sequences' block tables -> widest table.

        A row is rewritten only when its sequence's table is another list object (another sequence, or
        one freed and re-allocated) or has grown (only its new tail is written): the BlockManager only
        appends to a table or replaces it. Rows past len(seqs) keep stale but valid block ids; padding
        rows read only their column 0 and their output is discarded.
        """
        rows, lens, mirror = self._bt_rows, self._bt_lens, self._bt_mirror
        w = 1
        for b, s in enumerate(seqs):
            t = s.block_table
            k = len(t)
            if rows[b] is not t or k < lens[b]:
                mirror[b, :k] = t
                rows[b], lens[b] = t, k
            elif k != lens[b]:
                mirror[b, lens[b]:k] = t[lens[b]:]
                lens[b] = k
            if k > w:
                w = k
        return w

    # ---- CUDA graphs ----------------------------------------------------------------------------
    def capture_graphs(self, max_num_seqs: int | None, lora: bool = False) -> None:
        """A decode graph per batch size up to max_num_seqs (off CUDA: EagerReplay stand-ins, for tests);
        with `lora`, the LoRA twins of the sizes already captured."""
        if lora:
            sizes = list(self.graphs)
        else:
            sizes = [s for s in GRAPH_BATCH_SIZES if s < max_num_seqs]
            sizes.append(next((s for s in GRAPH_BATCH_SIZES if s >= max_num_seqs), GRAPH_BATCH_SIZES[-1]))
            self._alloc_graph_inputs(max(sizes))
        dev, on_cuda = self.device, self.device.type == "cuda"
        # LoRA: one set with every projection's kernels, one with q, k, v, o only (the common adapter)
        for mask, into in ((ALL_MODULES, self.lora_graphs), (ATTN_MODULES, self.lora_attn_graphs)) if lora else \
                ((None, self.graphs),):
            for bs in sorted(sizes, reverse=True):
                into[bs] = self._capture(bs, mask, on_cuda)
        self.graphs = dict(sorted(self.graphs.items()))
        self.lora_graphs = dict(sorted(self.lora_graphs.items()))
        self.lora_attn_graphs = dict(sorted(self.lora_attn_graphs.items()))
        if on_cuda:
            torch.cuda.synchronize(dev)

    def _capture(self, bs: int, lora_modules: int | None, on_cuda: bool) -> DecodeGraph:
        """One decode graph of size bs; lora_modules: None for the plain graph, else the LoRA modules it runs."""
        ids, pos, slots = self._d64[:bs], self._d64[bs:2 * bs], self._d64[2 * bs:3 * bs]
        half = (bs + 1) // 2
        ctx = self._d64[3 * bs:3 * bs + half].view(torch.int32)[:bs]
        self._d64[:3 * bs].zero_()
        ctx.fill_(1)
        attn = AttnMetadata(cu_seqlens_q=self._dcu[:bs + 1], context_lens=ctx,
                            block_tables=self._dbt[:bs], slot_mapping=slots, max_seqlen_q=1,
                            max_context_len=self.max_model_len)
        inputs = (ids, pos, attn)
        if lora_modules is not None:
            token_slots, order, tiles = lora_graph_views(self._d64.view(torch.int32), bs)
            token_slots.fill_(-1)
            order.copy_(torch.arange(bs, dtype=torch.int32))
            tiles.zero_()
            tiles[:, 2] = -1
            inputs += (self.lora_pool.metadata(token_slots, order=order, tiles=tiles, modules=lora_modules),)
        with torch.inference_mode():
            if on_cuda:
                self._warm_up(*inputs)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._graph_pool):
                    logits, tokens = self._decode_fn(*inputs)
                self._graph_pool = graph.pool()
            else:
                graph = EagerReplay(self._decode_fn, *inputs)
                logits, tokens = graph.outputs
        return DecodeGraph(graph, logits, tokens, inputs)

    def _alloc_graph_inputs(self, top: int) -> None:
        """Runner-owned graph inputs. A graph of size bs reads ids, positions, slots (int64) from [0, 3 bs),
        its context lengths (int32) from the next (bs + 1) // 2 int64 words and, if it has LoRA, the
        tokens' adapter slots, their sorted order and the tile table (int32) from the words after those
        (lora_graph_views)."""
        dev, on_cuda = self.device, self.device.type == "cuda"
        n64 = 3 * top + (top + 1) // 2 + lora_graph_words(top)
        self._d64 = torch.zeros(n64, dtype=torch.int64, device=dev)
        self._dbt = torch.zeros(top, self.max_blocks_per_seq, dtype=torch.int32, device=dev)
        self._dcu = torch.arange(top + 1, dtype=torch.int32, device=dev)  # cu_seqlens: one token per row
        self._h64 = torch.zeros(n64, dtype=torch.int64, pin_memory=on_cuda)
        self._hbt = torch.zeros(top * self.max_blocks_per_seq, dtype=torch.int32, pin_memory=on_cuda)
        self._h64_np, self._hbt_np = self._h64.numpy(), self._hbt.numpy()
        self._h32_np = self._h64_np.view(np.int32)
        self._bt_mirror = np.zeros((top, self.max_blocks_per_seq), dtype=np.int32)
        self._bt_rows: list[list[int] | None] = [None] * top
        self._bt_lens = [0] * top
        self._graph_pool = None

    def _warm_up(self, *inputs) -> None:
        """One run outside the graph: JIT-compiles the Triton kernels (and the torch.compile graph)."""
        try:
            self._decode_fn(*inputs)
        except Exception:
            if not self.compiled:
                raise
            log.exception("torch.compile of the decode step failed; capturing the eager forward instead")
            self.compiled, self._decode_fn = False, self.decode_step
            self._decode_fn(*inputs)
        torch.cuda.synchronize(self.device)
