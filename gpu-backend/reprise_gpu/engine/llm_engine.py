"""The engine: requests in, one scheduled model step at a time, tokens (and text) out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config
from ..lora.pool import LoraPool, PackedAdapter, pack
from ..lora.registry import AdapterRegistry
from .block_manager import BlockManager
from .detokenizer import Detokenizer, load_tokenizer
from .kv_restore import KvRestore, Restored
from .model_runner import ModelRunner
from .sampling import SamplingParams
from .scheduler import QueueFull, Scheduler
from .sequence import Sequence, SequenceStatus

__all__ = ["LLMEngine", "StepOutput", "QueueFull", "load_model"]


@dataclass
class StepOutput:
    seq: Sequence
    token_id: int
    text: str                 # text this token releases (may be "" while a stop string might be forming)
    finished: bool


def load_model(config: Config, seed: int = 0) -> torch.nn.Module:
    """The config's model with its GGUF weights, or random weights of the preset's shape (seeded)."""
    from ..gguf_loader import load_gguf, random_state_dict
    from ..models.llama import build_model

    dev, dtype = torch.device(config.device), config.torch_dtype
    if config.gguf_path is not None:
        _, sd = load_gguf(config.gguf_path, dtype=dtype, device=dev)
    else:
        sd = random_state_dict(config.model_args, seed=seed, dtype=dtype, device=dev)
    return build_model(config.model_args, sd)


class LLMEngine:
    def __init__(self, config: Config, model: torch.nn.Module | None = None, tokenizer=None,
                 cuda_graphs: bool = True, compile_decode: bool = False):
        self.config = config
        args = config.model_args
        self.model = load_model(config) if model is None else model
        self.max_model_len = args.max_seq_len
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=config.max_num_batched_tokens,
                                   prefill_chunk_size=config.prefill_chunk_size, max_queue=config.max_queue,
                                   max_model_len=self.max_model_len)
        self.runner = ModelRunner(self.model, num_blocks=config.num_kv_blocks, block_size=config.block_size,
                                  max_model_len=self.max_model_len, max_num_seqs=config.max_num_seqs,
                                  dtype=config.torch_dtype, device=config.device, cuda_graphs=cuda_graphs,
                                  compile_decode=compile_decode)
        self.kv = KvRestore(self.model, self.runner.kv_cache, device=config.device, dtype=config.torch_dtype,
                            kv_codec=config.kv_codec, recipe=config.speculator_recipe,
                            derive=config.speculator_derive)
        self.lora_pool: LoraPool | None = None
        self.adapters: AdapterRegistry | None = None
        if config.max_loras:
            self.lora_pool = pool = LoraPool(self.runner.kv_cache, self.block_manager, config.max_loras)
            on_cuda = self.runner.device.type == "cuda"
            self.adapters = AdapterRegistry(args, config.model, config.lora_host_bytes, pack=lambda ad: pack(
                ad, args, pool.page_elems, config.torch_dtype, pin=on_cuda))
            self.runner.enable_lora(pool)
            self.scheduler.lora = pool
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(
            config.tokenizer_path, args.vocab_size, config.gguf_path)
        eos = getattr(self.tokenizer, "token_to_id", lambda _: None)("<|im_end|>")
        self.eos_token_ids = {eos} if eos is not None else set()
        self.seqs: dict[int, Sequence] = {}
        self.detok: dict[int, Detokenizer] = {}
        self.generated_tokens = 0
        self.idle = False

    # ---- requests -------------------------------------------------------------------------------
    def add_request(self, prompt_token_ids: list[int], params: SamplingParams | None = None, *,
                    kv_chunks: list[bytes] | Restored = (), export_kv: bool = False,
                    seq_id: int | None = None, adapter: PackedAdapter | None = None) -> Sequence:
        """Queue a request. `kv_chunks`: container bytes of the prompt's KV from an earlier turn (verified
        here), or what `self.kv.verify` made of them already; chunks that fail verification are ignored
        (their tokens are recomputed). `adapter`: a LoRA adapter from self.adapters; its load into the pool
        starts now, while other requests run. Raises QueueFull or ValueError."""
        params = params or SamplingParams()
        if adapter is not None and self.lora_pool is None:
            raise ValueError("this engine serves no LoRA adapters (max_loras=0)")
        if adapter is not None and -(-adapter.n_pages // 2) > self.block_manager.num_usable:
            raise ValueError(f"the adapter needs {-(-adapter.n_pages // 2)} KV blocks; the pool has "
                             f"{self.block_manager.num_usable}")
        vocab = self.config.model_args.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        seq = Sequence(prompt_token_ids, params, seq_id=seq_id)
        if seq.seq_id in self.seqs:
            raise ValueError(f"duplicate seq id {seq.seq_id}")
        seq.adapter = adapter
        restored = kv_chunks if isinstance(kv_chunks, Restored) else self.kv.verify(list(kv_chunks), prompt_token_ids,
                                                                                    adapter)
        seq.restored, seq.num_restored = restored.chunks, min(restored.tokens, len(seq) - 1)
        seq.export_kv = export_kv
        self.scheduler.add(seq)
        if adapter is not None:
            self.lora_pool.ready(adapter)           # prefetch
        self.seqs[seq.seq_id] = seq
        self.detok[seq.seq_id] = Detokenizer(self.tokenizer, prompt_token_ids, params.stop)
        return seq

    def abort(self, seq_id: int) -> bool:
        seq = self.seqs.get(seq_id)
        if seq is None or seq.is_finished:
            return False
        self._finish(seq, "abort")
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- one step -------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        batch = self.scheduler.schedule()
        self.idle = not batch.seqs          # nothing could run (a split restore waiting for its loaded half)
        if not batch.seqs:
            return []
        for seq in batch.admitted:
            if seq.num_restored:
                self.kv.restore(seq)
        tokens = self.runner.run(batch)
        outputs = []
        for seq, n, tok in zip(batch.seqs, batch.num_new, tokens):
            seq.num_cached += n
            self._split_jump(seq)
            if tok is None:
                continue
            seq.append_token(tok)
            self.generated_tokens += 1
            reason = self._check_stop(seq, tok)
            text = self.detok[seq.seq_id].release(final=reason is not None)
            if reason is not None:
                self._finish(seq, reason)
            outputs.append(StepOutput(seq, tok, text, reason is not None))
        return outputs

    def attach_restored(self, seq_id: int, restored: Restored) -> None:
        """The loaded half of a split restore: chunks covering [seq.restore_at, restored.tokens). Written
        into the cache now if the sequence holds its blocks (else at admission); the prefill then jumps
        over them. An empty or short `restored` only means more tokens are computed."""
        seq = self.seqs.get(seq_id)
        if seq is None or not seq.restore_pending:
            return
        seq.restored = restored.chunks
        seq.num_restored = max(seq.restore_at, min(restored.tokens, len(seq) - 1))
        seq.restore_pending = False
        if seq.status is SequenceStatus.RUNNING:
            self.kv.restore(seq)
            self._split_jump(seq)

    @staticmethod
    def _split_jump(seq: Sequence) -> None:
        if seq.restore_at and not seq.restore_pending and seq.num_cached == seq.restore_at:
            seq.num_cached = seq.num_restored

    def _check_stop(self, seq: Sequence, tok: int) -> str | None:
        p = seq.params
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in self.eos_token_ids):
            return "stop"
        detok = self.detok[seq.seq_id]
        detok.add(tok)
        if detok.stopped:
            return "stop"
        if seq.num_completion_tokens >= p.max_tokens or len(seq) >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.export_kv and reason != "abort" and seq.status is SequenceStatus.RUNNING:
            # K/V exists for every token but the last one sampled
            start = seq.num_restored if seq.export_from is None else seq.export_from
            end = len(seq) - 1
            if start < end:
                seq.kv_exports = [(f or "default", self.kv.export(seq, start, end, f)) for f in seq.export_forms or (None,)]
                seq.kv_export = seq.kv_exports[0][1]
        self.scheduler.finish(seq, reason)
        self.seqs.pop(seq.seq_id, None)
        self.detok.pop(seq.seq_id, None)

    # ---- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[dict]:
        """Run prompts to completion: [{token_ids, text, finish_reason}] in prompt order."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        seqs = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        texts = {s.seq_id: [] for s in seqs}
        while self.has_work():
            for out in self.step():
                if out.seq.seq_id in texts:
                    texts[out.seq.seq_id].append(out.text)
        return [{"token_ids": s.completion_token_ids, "text": "".join(texts[s.seq_id]),
                 "finish_reason": s.finish_reason} for s in seqs]
