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


def load_tokenizer(path: str | None, vocab_size: int, gguf_path: str | None = None):
    """tokenizer.json through `tokenizers`; else the GGUF's vocabulary (decode-only); else bytes for <= 256 ids."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer.json not found at {path!r} (the setup writes .models/hf/)")
        from tokenizers import Tokenizer as HfTokenizer
        return HfTokenizer.from_file(path)
    if gguf_path is not None:
        return tokenizer_from_gguf(gguf_path)
    if vocab_size <= 256:
        return ByteTokenizer()
    raise FileNotFoundError("no tokenizer: set Config.tokenizer_path")


def tokenizer_from_gguf(gguf_path: str):
    """A byte-level BPE `tokenizers.Tokenizer` from GGUF metadata (gpt2 models), good for decoding ids."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer as HfTokenizer, decoders, models, pre_tokenizers

    fields = GGUFReader(gguf_path).fields
    if fields["tokenizer.ggml.model"].contents() != "gpt2":
        raise NotImplementedError("only byte-level BPE (gpt2) GGUF tokenizers are supported; give a tokenizer.json")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    tok = HfTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])  # 3: CONTROL
    return tok


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
