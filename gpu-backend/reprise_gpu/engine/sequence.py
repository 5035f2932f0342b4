"""A request as the engine sees it: token ids, sampling knobs, status and where its KV lives."""

from __future__ import annotations

from concurrent.futures import Future

import enum
import itertools
from typing import TYPE_CHECKING

from .sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from .kv_io import KvChunk


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


class Sequence:
    """`token_ids` = prompt + generated. `num_cached` tokens have their K/V in the paged cache;
    the scheduler feeds the model tokens [num_cached, len) a chunk at a time."""

    def __init__(self, prompt_token_ids: list[int], params: SamplingParams, seq_id: int | None = None):
        if not prompt_token_ids:
            raise ValueError("prompt_token_ids must not be empty")
        self.seq_id = next(_ids) if seq_id is None else seq_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_cached = 0
        self.finish_reason: str | None = None   # "stop" | "length" | "abort"
        self.generator: torch.Generator | None = None
        # Verified KV chunks covering [0, num_restored): written into fresh blocks when admitted.
        self.restored: list[KvChunk] = []
        self.num_restored = 0
        # A split restore ("compute or load? both"): tokens [0, restore_at) are prefilled while the
        # chunks of [restore_at, num_restored) still load; at restore_at the prefill waits until they are
        # attached (restore_pending False), then jumps to num_restored.
        self.restore_at = 0
        self.restore_pending = False
        self.export_kv = False
        # The exported chunk starts here (None: at num_restored); forms to export: "raw", "coded" (): the engine's codec
        self.export_from: int | None = None
        self.export_forms: tuple[str, ...] = ()
        # exported at finish when export_kv is set; a future because spec-v1 codes it off the engine thread
        self.kv_export: Future[bytes] | None = None
        self.kv_exports: list[tuple[str, Future[bytes]]] = []     # (form, chunk) for each export form
        self.num_preemptions = 0
        # LoRA: the adapter (lora.pool.PackedAdapter) this request runs with, and its pool slot while running
        self.adapter = None
        self.lora_slot = -1

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, {self.status.value}, len={len(self)}, "
                f"cached={self.num_cached}, blocks={len(self.block_table)})")

    @property
    def kv_chunk(self) -> bytes | None:
        """The exported chunk's bytes, waiting for its encoder if it is still running."""
        return None if self.kv_export is None else self.kv_export.result()

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_cached

    @property
    def is_prefill(self) -> bool:
        return self.num_uncomputed > 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
