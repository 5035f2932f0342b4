"""tokenizer.json (byte-level BPE) -> the compact tokenizer file the Worker reads (src/edge-model/bpe.ts).

The Worker's budget is 128 MB; tokenizer.json parsed by @huggingface/tokenizers holds ~22 MiB of
JS objects (vocab and merges as strings, maps of both). The edge needs only ids: each byte's token,
each merge as (left id, right id, merged id) in rank order, each token's bytes (to decode), and the
special tokens. Format "RPTK" version 1, little-endian, 4-byte aligned sections:
    magic RPTK, u16 version 1, u16 0, u32 vocab V, u32 merges M, u32 specials S, u32 blob bytes B,
    u32 unk id
    u32 byte_ids[256]          the token of each single byte (GPT-2's byte -> printable char map), or
                               0xFFFFFFFF for the bytes SmolLM2 has no token for (they become unk;
                               consecutive ones in a word fuse into one, as fuse_unk does)
    u32 merges[M][3]           left, right, merged token ids, rank order
    u32 offsets[V + 1]         token i's bytes are blob[offsets[i] : offsets[i+1]]
    u8  blob[B], padded to 4
    u32 specials[S]            ids of the special (added) tokens, matched in text before BPE
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes map to themselves, the others to U+0100 upwards."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_tokenizer_file(tokenizer_json: Path, out: Path) -> None:
    tj = json.loads(tokenizer_json.read_text())
    model = tj["model"]
    assert model["type"] == "BPE" and tj["pre_tokenizer"]["type"] == "ByteLevel" and tj["pre_tokenizer"]["use_regex"]
    assert not tj["pre_tokenizer"]["add_prefix_space"] and not tj["normalizer"]["normalizers"], "the Worker's BPE assumes these"
    vocab: dict[str, int] = model["vocab"]
    b2u = byte_to_unicode()
    u2b = {c: b for b, c in b2u.items()}
    V = max(vocab.values()) + 1
    byte_ids = [vocab.get(b2u[b], 0xFFFFFFFF) for b in range(256)]
    assert model["fuse_unk"] and not any(t["content"] == "<0x00>" for t in tj["added_tokens"])
    merges = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        merges.append((vocab[a], vocab[b], vocab[a + b]))
    pieces = [b""] * V
    for s, i in vocab.items():
        pieces[i] = bytes(u2b[c] for c in s) if all(c in u2b for c in s) else s.encode()
    specials = []
    for t in tj["added_tokens"]:
        assert not (t["lstrip"] or t["rstrip"] or t["normalized"] or t["single_word"]), t
        pieces[t["id"]] = t["content"].encode()
        specials.append(t["id"])
    blob = b"".join(pieces)
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    pad = (-len(blob)) % 4
    out.write_bytes(b"".join([
        b"RPTK", struct.pack("<HHIIIII", 1, 0, V, len(merges), len(specials), len(blob), vocab[model["unk_token"]]),
        np.array(byte_ids, "<u4").tobytes(), np.array(merges, "<u4").reshape(-1).tobytes(), offsets.tobytes(),
        blob + b"\0" * pad, np.array(specials, "<u4").tobytes()]))
