"""Continuous batching with chunked prefill.

Every step: each running decode gets its one token first, then running prefills and newly admitted
requests share what is left of the token budget, a chunk at a time, oldest first. Admission is FIFO
and never skips the head of the queue, so nothing starves. When a decode needs a block and none is
free, the newest running sequence is preempted: its blocks are freed and it goes back to the front
of the queue to be recomputed.

A request with a LoRA adapter is admitted only once its adapter is resident in the pool (`lora`:
lora/pool.py); until then the requests behind it may go first, so a load never stalls the others.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


class QueueFull(Exception):
    pass


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)      # tokens [seq.num_cached, +n) run this step
    admitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new)

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.num_new)

    def samples(self, i: int) -> bool:
        """Whether seq i reaches its last token this step (so its next token is sampled)."""
        return self.seqs[i].num_cached + self.num_new[i] == len(self.seqs[i])


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 prefill_chunk_size: int, max_queue: int, max_model_len: int, lora=None):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_chunk_size = prefill_chunk_size
        self.max_queue = max_queue
        self.max_model_len = max_model_len
        self.lora = lora
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []      # admission order, oldest first

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def check_fits(self, seq: Sequence) -> None:
        """Refuse a request that could never run, whatever else is happening."""
        if len(seq) >= self.max_model_len:
            raise ValueError(f"prompt has {len(seq)} tokens; the model takes at most {self.max_model_len - 1}")
        total = min(len(seq) + seq.params.max_tokens, self.max_model_len)
        if self.bm.blocks_for(total) > self.bm.num_usable:
            raise ValueError(f"request needs {self.bm.blocks_for(total)} KV blocks; the pool has {self.bm.num_usable}")

    def add(self, seq: Sequence) -> None:
        self.check_fits(seq)
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests waiting")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        for seq in [s for s in self.running if not s.is_prefill]:
            if seq.status is not SequenceStatus.RUNNING:
                continue                                    # preempted earlier in this loop
            while not self.bm.ensure(seq, seq.num_cached + 1):
                victim = self.running[-1]
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new.append(1)
                budget -= 1
        for seq in self.running:
            if budget == 0:
                break
            if seq.is_prefill:
                n = min(seq.num_uncomputed, self.prefill_chunk_size, budget, _split_room(seq))
                if n == 0:
                    continue                                # a split restore waits for its loaded half
                batch.seqs.append(seq)
                batch.num_new.append(n)
                budget -= n
        i = 0
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[i]
            if seq.adapter is not None and not self.lora.ready(seq.adapter):
                i += 1                                      # its adapter is loading: the next one goes first
                continue
            if not self.bm.ensure(seq, len(seq)):
                break
            del self.waiting[i]
            if seq.adapter is not None:
                seq.lora_slot = self.lora.acquire(seq.adapter)
            seq.status = SequenceStatus.RUNNING
            seq.num_cached = 0 if seq.restore_at else seq.num_restored
            self.running.append(seq)
            batch.admitted.append(seq)
            n = min(seq.num_uncomputed, self.prefill_chunk_size, budget, _split_room(seq))
            batch.seqs.append(seq)
            batch.num_new.append(n)
            budget -= n
        return batch

    def _release_adapter(self, seq: Sequence) -> None:
        if seq.lora_slot >= 0:
            self.lora.release(seq.adapter)
            seq.lora_slot = -1

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self._release_adapter(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take `seq` out of the queue or the batch and free every block it holds."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release_adapter(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason


def _split_room(seq: Sequence) -> int:
    """Tokens a split-restore sequence may prefill before its loaded half must be in place."""
    if not seq.restore_at or seq.num_cached >= seq.restore_at:
        return seq.num_uncomputed if not (seq.restore_pending and seq.num_cached == seq.restore_at) else 0
    return seq.restore_at - seq.num_cached
