"""Turns a scheduled batch into model inputs, runs the model and samples the next tokens.

Mixed and prefill steps run eagerly. On CUDA, pure-decode steps replay a CUDA graph captured per
batch size in GRAPH_BATCH_SIZES (the batch is padded up to the next size; padded rows read and write
only the reserved block 0). Inputs reach a graph through two pinned host buffers and three H2D copies.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..models.llama import AttnMetadata, alloc_kv_cache
from . import kv_io
from .block_manager import NULL_BLOCK
from .sampling import make_generator, sample
from .scheduler import ScheduledBatch
from .sequence import Sequence

log = logging.getLogger(__name__)

GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self._weights_sha256: str | None = None
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # torch.compile fuses the elementwise ops (norms, RoPE, SwiGLU) between the GEMMs, so a decode
        # graph replays ~4x fewer kernels; it falls back to the eager forward if compilation fails.
        self.compiled = compile_decode
        self._decode_fn = torch.compile(self.forward_logits, dynamic=True) if compile_decode else self.forward_logits
        if cuda_graphs and self.device.type == "cuda":
            self.capture_graphs(max_num_seqs)

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
        T, B = len(i64) // 3, len(batch)
        dev = self.device
        i64_d = torch.from_numpy(i64).to(dev, non_blocking=True)
        i32_d = torch.from_numpy(i32).to(dev, non_blocking=True)
        attn = AttnMetadata(cu_seqlens_q=i32_d[:B + 1], context_lens=i32_d[B + 1:],
                            block_tables=torch.from_numpy(bt).to(dev, non_blocking=True),
                            slot_mapping=i64_d[2 * T:], max_seqlen_q=max(batch.num_new),
                            max_context_len=int(i32[B + 1:].max()))
        return i64_d[:T], i64_d[T:2 * T], attn

    # ---- run ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int | None]:
        """Run one step; returns the sampled token for each seq that reached its end, None for the others."""
        sampling = [i for i in range(len(batch)) if batch.samples(i)]
        graph_bs = self._graph_size(batch)
        if graph_bs is not None:
            logits = self._replay(batch, graph_bs)[:len(batch)]
        else:
            ids, pos, attn = self._eager_inputs(batch)
            hidden = self.model(ids, pos, attn, self.kv_cache)
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

    def forward_logits(self, ids: torch.Tensor, pos: torch.Tensor, attn: AttnMetadata) -> torch.Tensor:
        """Logits of every row (what a decode graph computes)."""
        return self.model.compute_logits(self.model(ids, pos, attn, self.kv_cache))

    def _graph_size(self, batch: ScheduledBatch) -> int | None:
        if not self.graphs or not batch.is_decode:
            return None
        return next((s for s in self.graphs if s >= len(batch)), None)

    def _replay(self, batch: ScheduledBatch, bs: int) -> torch.Tensor:
        i64, i32, bt = self._host_inputs(batch, pad_to=bs)
        self._h64[:3 * bs].numpy()[:] = i64
        self._h32[:2 * bs + 1].numpy()[:] = i32
        w = bt.shape[1]
        self._hbt[:bs * w].numpy()[:] = bt.reshape(-1)
        self._d64[:3 * bs].copy_(self._h64[:3 * bs], non_blocking=True)
        self._d32[:2 * bs + 1].copy_(self._h32[:2 * bs + 1], non_blocking=True)
        self._dbt[:bs, :w].copy_(self._hbt[:bs * w].view(bs, w), non_blocking=True)
        graph, logits = self.graphs[bs]
        graph.replay()
        return logits

    # ---- CUDA graphs ----------------------------------------------------------------------------
    def capture_graphs(self, max_num_seqs: int) -> None:
        sizes = [s for s in GRAPH_BATCH_SIZES if s < max_num_seqs]
        sizes.append(next((s for s in GRAPH_BATCH_SIZES if s >= max_num_seqs), GRAPH_BATCH_SIZES[-1]))
        top = max(sizes)
        dev = self.device
        # Packed device inputs; a graph of size bs uses the first 3*bs / 2*bs+1 entries.
        self._d64 = torch.zeros(3 * top, dtype=torch.int64, device=dev)
        self._d32 = torch.zeros(2 * top + 1, dtype=torch.int32, device=dev)
        self._dbt = torch.zeros(top, self.max_blocks_per_seq, dtype=torch.int32, device=dev)
        self._h64 = torch.zeros(3 * top, dtype=torch.int64).pin_memory()
        self._h32 = torch.zeros(2 * top + 1, dtype=torch.int32).pin_memory()
        self._hbt = torch.zeros(top * self.max_blocks_per_seq, dtype=torch.int32).pin_memory()
        pool = None
        for bs in sorted(sizes, reverse=True):
            self._d32[:bs + 1] = torch.arange(bs + 1, dtype=torch.int32, device=dev)
            self._d32[bs + 1:2 * bs + 1] = 1
            ids, pos = self._d64[:bs], self._d64[bs:2 * bs]
            attn = AttnMetadata(cu_seqlens_q=self._d32[:bs + 1], context_lens=self._d32[bs + 1:2 * bs + 1],
                                block_tables=self._dbt[:bs], slot_mapping=self._d64[2 * bs:3 * bs],
                                max_seqlen_q=1, max_context_len=self.max_model_len)
            with torch.inference_mode():
                self._warm_up(ids, pos, attn)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = self._decode_fn(ids, pos, attn)
            pool = graph.pool()
            self.graphs[bs] = (graph, logits)
        self.graphs = dict(sorted(self.graphs.items()))
        torch.cuda.synchronize(dev)

    def _warm_up(self, ids, pos, attn) -> None:
        """One run outside the graph: JIT-compiles the Triton kernels (and the torch.compile graph)."""
        try:
            self._decode_fn(ids, pos, attn)
        except Exception:
            if not self.compiled:
                raise
            log.exception("torch.compile of the decode step failed; capturing the eager forward instead")
            self.compiled, self._decode_fn = False, self.forward_logits
            self._decode_fn(ids, pos, attn)
        torch.cuda.synchronize(self.device)

    # ---- KV in and out --------------------------------------------------------------------------
    @property
    def producer(self) -> str:
        if self._weights_sha256 is None:
            self._weights_sha256 = kv_io.weights_sha256(self.model)
        return kv_io.producer_fingerprint(self._weights_sha256, self.dtype, self.device)

    def decode_chunk(self, data: bytes) -> kv_io.KvChunk:
        a = self.args
        return kv_io.decode_chunk(data, producer=self.producer, layers=a.n_layers, kv_heads=a.n_kv_heads,
                                  head_dim=a.head_dim, dtype=self.dtype)

    def restore(self, seq: Sequence) -> None:
        kv_io.restore(self.kv_cache, seq.block_table, seq.restored, seq.num_restored)

    def export(self, seq: Sequence, start: int, end: int) -> bytes:
        return kv_io.encode_chunk(kv_io.gather_kv(self.kv_cache, seq.block_table, start, end), start,
                                  self.producer)
