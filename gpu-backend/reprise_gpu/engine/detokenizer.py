"""Incremental detokenization with stop strings.

Text is released token by token; an incomplete UTF-8 sequence waits for its next bytes, and a suffix
that could still grow into a stop string is held back until it cannot.
"""

from __future__ import annotations

import os
from typing import Protocol


class Tokenizer(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class ByteTokenizer:
    """Token id = one byte (ids >= 256 wrap): the tokenizer of the byte-sized test vocabulary."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return None


def load_tokenizer(path: str | None, vocab_size: int):
    """tokenizer.json through `tokenizers`; the byte tokenizer for a vocabulary of at most 256 ids."""
    if path is not None and os.path.isfile(path):
        from tokenizers import Tokenizer as HfTokenizer
        return HfTokenizer.from_file(path)
    if vocab_size <= 256:
        return ByteTokenizer()
    raise FileNotFoundError(f"tokenizer.json not found at {path!r} (run the setup that writes .models/hf/)")


class Detokenizer:
    CONTEXT = 4   # prompt tokens decoded ahead of the first new one, so word-leading spaces come out right

    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str]):
        self.tok = tokenizer
        self.ids = list(prompt_ids[-self.CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = stop
        self.text = ""       # generated text so far (cut at a stop string)
        self.sent = 0        # chars of self.text already released
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Append one generated token; sets `stopped` when a stop string appears (the text is cut before it)."""
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
            self.text += new
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True

    def release(self, final: bool = False) -> str:
        """Text not yet released, minus a suffix that could begin a stop string (unless final or stopped)."""
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held_back()
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out

    def _held_back(self) -> int:
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held
