"""Session chunks coded with spec-v1 and spec-v2: exported by one turn, decoded by the next, bit for bit
(tiny model, CPU: the NumPy coders; on CUDA spec-v2 runs on the GPU coder)."""

import hashlib
import json
import struct

import pytest
import torch

from engine_util import tiny_engine
from test_kv_io import parse
from reprise_gpu.config import Config
from reprise_gpu.engine import kv_io
from reprise_gpu.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0)


def run_turn(eng, prompt, chunks=()):
    seq = eng.add_request(prompt, GREEDY, kv_chunks=list(chunks), export_kv=True)
    while eng.has_work():
        eng.step()
    return seq


def header(chunk: bytes) -> dict:
    return parse(chunk)[2]


def rewrap(chunk: bytes, payload: bytes) -> bytes:
    """The same container header around another payload, with a valid container checksum."""
    h = header(chunk)
    h.update(payload_bytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    hb = json.dumps(h).encode()
    return struct.pack("<4sHI", kv_io.MAGIC, kv_io.VERSION, len(hb)) + hb + payload


@pytest.fixture(scope="module", params=["spec-v1", "spec-v2"])
def three_turns(request):
    """Turns 1-2 export coded chunks [0, a) and [a, b); a raw engine on the same weights gives the truth."""
    eng = tiny_engine(kv_codec=request.param)
    t1 = run_turn(eng, [5, 6, 7, 8, 9, 10, 11])
    t2 = run_turn(eng, t1.token_ids + [3, 1, 4], [t1.kv_chunk])
    return eng, t1, t2


def test_spec_chunks_decode_to_the_exact_cache(three_turns):
    eng, t1, t2 = three_turns
    h1, h2 = header(t1.kv_chunk), header(t2.kv_chunk)
    codec = eng.config.kv_codec
    assert (h1["codec"], h1["token_start"], h1["token_end"]) == (codec, 0, len(t1) - 1)
    assert (h2["codec"], h2["token_start"], h2["token_end"]) == (codec, len(t1) - 1, len(t2) - 1)
    raw = tiny_engine()                                   # same weights, raw chunks: the values to match
    r2 = raw.add_request(t2.token_ids, SamplingParams(max_tokens=1, temperature=0), export_kv=True)
    while raw.has_work():
        raw.step()
    truth = raw.kv.parse(r2.kv_chunk).kv.view(torch.int16)      # [L, 2, KH, len(t2), D]
    got = eng.kv.verify([t1.kv_chunk, t2.kv_chunk], t2.token_ids + [1]).chunks
    assert [(c.token_start, c.token_end) for c in got] == [(0, len(t1) - 1), (len(t1) - 1, len(t2) - 1)]
    for c in got:
        assert torch.equal(c.kv.view(torch.int16), truth[:, :, :, c.token_start:c.token_end])


def test_third_turn_resumes_from_two_spec_chunks_and_matches_recompute(three_turns):
    eng, t1, t2 = three_turns
    follow = t2.token_ids + [2, 7, 1]
    full = eng.generate([follow], GREEDY)[0]["token_ids"]
    t3 = run_turn(eng, follow, [t1.kv_chunk, t2.kv_chunk])
    assert t3.num_restored == len(t2) - 1
    assert t3.completion_token_ids == full
    assert eng.block_manager.num_used == 0


@pytest.mark.parametrize("damage", ["payload_bit", "other_tokens"])
def test_undecodable_spec_chunk_ends_the_prefix_and_tokens_are_recomputed(three_turns, damage):
    eng, t1, t2 = three_turns
    follow = t2.token_ids + [2, 7, 1]
    chunk2 = t2.kv_chunk
    if damage == "payload_bit":                           # container checksum valid, spec-v1 payload not
        h = header(chunk2)
        payload = bytearray(chunk2[-h["payload_bytes"]:])
        payload[len(payload) // 2] ^= 0x04
        chunk2 = rewrap(chunk2, bytes(payload))
    else:                                                 # the prompt's tokens differ inside chunk 2's range
        follow = follow[:len(t1)] + [(t + 1) % 50 for t in follow[len(t1):]]
    full = eng.generate([follow], GREEDY)[0]["token_ids"]
    t3 = run_turn(eng, follow, [t1.kv_chunk, chunk2])
    assert t3.num_restored == len(t1) - 1                 # chunk 1 still restores
    assert t3.completion_token_ids == full


def test_spec_chunk_from_another_speculator_is_refused(three_turns):
    eng, t1, _ = three_turns
    other = tiny_engine(kv_codec="spec-v1", seed=1)       # other weights: producer differs, refused at parse
    assert other.kv.verify([t1.kv_chunk], t1.token_ids).chunks == []
    raw = tiny_engine()                                    # a raw-only backend does not take spec-v1 chunks
    assert raw.kv.verify([t1.kv_chunk], t1.token_ids).chunks == []


def test_spec_v1_needs_bf16():
    with pytest.raises(ValueError, match="bfloat16"):
        Config(model="tiny", device="cpu", dtype="float32", kv_codec="spec-v1")
    with pytest.raises(ValueError, match="kv_codec"):
        Config(model="tiny", device="cpu", kv_codec="zstd")


def test_spec_coding_runs_off_the_engine_thread(monkeypatch):
    """A finished turn's chunk is still being coded while the engine finishes another request."""
    import threading

    from reprise_gpu.codec import api as codec_api

    eng = tiny_engine(kv_codec="spec-v1")
    gate = threading.Event()
    real = codec_api.encode

    def slow_encode(*a, **k):
        gate.wait(30)
        return real(*a, **k)
    monkeypatch.setattr(codec_api, "encode", slow_encode)
    first = run_turn(eng, [5, 6, 7, 8, 9])
    assert first.kv_export is not None and not first.kv_export.done()
    other = eng.generate([[1, 2, 3]], GREEDY)[0]             # the engine is not held up by the coding
    assert len(other["token_ids"]) == GREEDY.max_tokens and not first.kv_export.done()
    gate.set()
    assert header(first.kv_chunk)["codec"] == "spec-v1"      # waits for the coder, then the bytes are there
