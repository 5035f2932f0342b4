"""Fixed-size KV blocks: a free list and each sequence's block table.

Block 0 is never handed out: padded rows of a CUDA-graph batch write their K/V into it, so it is
scratch space that no sequence reads. LoRA adapters take blocks from the same pool (lora/pool.py, owner
ids < 0); when a sequence needs blocks and too few are free, `reclaim` (set by the LoRA pool) first
gives back idle adapters' blocks.
"""

from __future__ import annotations

from collections import deque

from .sequence import Sequence

NULL_BLOCK = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise ValueError("need at least 2 blocks (block 0 is reserved)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(1, num_blocks))
        self.owner: dict[int, int] = {}      # block id -> seq id (< 0: a LoRA adapter's slot)
        self.reclaim = None                  # callable(n): try to make n blocks free (the LoRA pool's)

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_usable - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks `seq` needs so that its table covers `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(seq.block_table))

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free

    def ensure(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq`'s table to cover `num_tokens` tokens; False (and no change) if blocks run out."""
        n = self.blocks_needed(seq, num_tokens)
        if n > self.num_free and self.reclaim is not None:
            self.reclaim(n)
        if n > self.num_free:
            return False
        for _ in range(n):
            b = self.free_blocks.popleft()
            self.owner[b] = seq.seq_id
            seq.block_table.append(b)
        return True

    def allocate(self, n: int, owner: int) -> list[int]:
        """n blocks for a non-sequence owner (a LoRA adapter); the caller checked num_free."""
        assert n <= self.num_free
        blocks = [self.free_blocks.popleft() for _ in range(n)]
        for b in blocks:
            self.owner[b] = owner
        return blocks

    def release(self, blocks: list[int], owner: int) -> None:
        for b in blocks:
            if self.owner.pop(b, None) != owner:
                raise RuntimeError(f"block {b} released by {owner} but not owned by it")
            self.free_blocks.append(b)

    def free(self, seq: Sequence) -> None:
        for b in reversed(seq.block_table):
            if self.owner.pop(b, None) != seq.seq_id:
                raise RuntimeError(f"block {b} freed by seq {seq.seq_id} but not owned by it")
            self.free_blocks.appendleft(b)
        seq.block_table = []
        seq.num_cached = 0

    def slot(self, seq: Sequence, pos: int) -> int:
        return seq.block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    def check(self) -> None:
        """Invariant: every usable block is either free or owned, never both, never twice."""
        free = set(self.free_blocks)
        assert len(free) == len(self.free_blocks), "duplicate block in free list"
        assert NULL_BLOCK not in free and NULL_BLOCK not in self.owner
        assert not free & set(self.owner), "block both free and owned"
        assert len(free) + len(self.owner) == self.num_usable, "block leaked"
