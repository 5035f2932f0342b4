"""KV chunks: container layout, bit-exact round trips, resume == recompute, bad chunks are ignored."""

import hashlib
import json
import struct

import numpy as np
import pytest
import torch

from engine_util import tiny_engine
from reprise_gpu.engine import kv_io, kv_restore
from reprise_gpu.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=8, temperature=0)
PROMPT = [(7 * i + 3) % 256 for i in range(37)]


def parse(data: bytes):
    magic, version, hlen = struct.unpack_from("<4sHI", data)
    return magic, version, json.loads(data[10:10 + hlen]), data[10 + hlen:]


def test_container_layout_and_round_trip():
    L, KH, T, D = 3, 2, 5, 8
    kv = torch.randn(L, 2, KH, T, D).to(torch.bfloat16)
    data = kv_io.encode_chunk(kv, 11, "p")
    magic, version, h, payload = parse(data)
    assert (magic, version) == (b"RPKV", 1)
    assert h == {"producer": "p", "codec": "raw-bf16", "layers": L, "kv_heads": KH, "head_dim": D,
                 "token_start": 11, "token_end": 16, "payload_bytes": L * 2 * KH * T * D * 2,
                 "payload_sha256": hashlib.sha256(payload).hexdigest()}
    # layer 1's V, kv head 1, token 2, channel 3, read straight from the little-endian bytes
    words = np.frombuffer(payload, dtype="<u2").reshape(L, 2, KH, T, D)
    assert words[1, 1, 1, 2, 3] == kv[1, 1, 1, 2, 3].view(torch.int16).item() & 0xFFFF
    chunk = kv_io.decode_chunk(data, producer="p", layers=L, kv_heads=KH, head_dim=D, dtype=torch.bfloat16)
    assert (chunk.token_start, chunk.token_end) == (11, 16)
    assert torch.equal(chunk.kv.view(torch.int16), kv.view(torch.int16))


def test_gather_scatter_round_trip_through_pages():
    cache = torch.zeros(2, 2, 10, 4, 2, 8, dtype=torch.bfloat16)
    table = [7, 2, 5]
    kv = torch.randn(2, 2, 2, 9, 8).to(torch.bfloat16)
    kv_io.scatter_kv(cache, table, 1, kv)
    assert torch.equal(cache[:, :, 7, 1], kv[:, :, :, 0])           # token 1 lives in block 7, offset 1
    assert torch.equal(cache[:, :, 5, 1], kv[:, :, :, 8])           # token 9: block 5, offset 1
    assert torch.equal(kv_io.gather_kv(cache, table, 1, 10).view(torch.int16), kv.view(torch.int16))


@pytest.mark.parametrize("bad", ["magic", "version", "checksum", "truncated", "producer", "shape", "json"])
def test_decode_rejects(bad):
    kv = torch.randn(2, 2, 2, 3, 16).to(torch.bfloat16)
    data = bytearray(kv_io.encode_chunk(kv, 0, "me"))
    producer, kh = "me", 2
    if bad == "magic":
        data[0:4] = b"XXXX"
    elif bad == "version":
        data[4] = 2
    elif bad == "checksum":
        data[-1] ^= 1
    elif bad == "truncated":
        data = data[:-2]
    elif bad == "producer":
        producer = "someone else"
    elif bad == "shape":
        kh = 4
    elif bad == "json":
        data[10] = ord("[")
    with pytest.raises(kv_io.ChunkError):
        kv_io.decode_chunk(bytes(data), producer=producer, layers=2, kv_heads=kh, head_dim=16, dtype=torch.bfloat16)


@pytest.mark.parametrize("bad", ["magic", "version", "truncated", "producer", "shape", "json"])
def test_verified_bytes_skip_only_the_payload_hash(bad):
    """Verified(data): the whole object's SHA-256 already matched the edge's record, so only the payload's
    second SHA-256 pass is skipped; every other check still refuses (and the values are still exact)."""
    kv = torch.randn(2, 2, 2, 3, 16).to(torch.bfloat16)
    good = kv_io.encode_chunk(kv, 0, "me")
    args = dict(producer="me", layers=2, kv_heads=2, head_dim=16, dtype=torch.bfloat16)
    got = kv_io.decode_chunk(kv_io.Verified(good), **args)
    assert torch.equal(got.kv.view(torch.int16), kv.view(torch.int16))
    flipped = bytearray(good)
    flipped[-1] ^= 1                     # a payload bit: caught by the hash only when it is computed
    with pytest.raises(kv_io.ChunkError, match="checksum"):
        kv_io.decode_chunk(bytes(flipped), **args)
    assert kv_io.decode_chunk(kv_io.Verified(bytes(flipped)), **args).kv.view(torch.int16).flatten()[-1] != \
        kv.view(torch.int16).flatten()[-1]
    data = bytearray(good)
    if bad == "magic":
        data[0:4] = b"XXXX"
    elif bad == "version":
        data[4] = 2
    elif bad == "truncated":
        data = data[:-2]
    elif bad == "producer":
        args["producer"] = "someone else"
    elif bad == "shape":
        args["kv_heads"] = 4
    elif bad == "json":
        data[10] = ord("[")
    with pytest.raises(kv_io.ChunkError):
        kv_io.decode_chunk(kv_io.Verified(bytes(data)), **args)


def test_restorable_prefix():
    c = lambda a, b: kv_io.KvChunk(a, b, torch.empty(0))   # noqa: E731
    assert kv_io.restorable_prefix([c(4, 8), c(0, 4)], 100)[1] == 8
    assert kv_io.restorable_prefix([c(0, 4), c(5, 8)], 100)[1] == 4            # gap at 4
    assert kv_io.restorable_prefix([c(1, 4)], 100)[1] == 0
    assert kv_io.restorable_prefix([c(0, 50)], 20)[1] == 20                     # capped


def turn1(eng, prompt=PROMPT, params=GREEDY):
    seq = eng.add_request(prompt, params, export_kv=True)
    while eng.has_work():
        eng.step()
    return seq


def test_exported_chunk_matches_the_cache_bit_for_bit():
    eng = tiny_engine()
    seq = turn1(eng)
    _, _, h, payload = parse(seq.kv_chunk)
    n = len(seq) - 1                                        # the last sampled token has no K/V yet
    assert (h["token_start"], h["token_end"]) == (0, n)
    assert h["producer"] == eng.kv.producer and "weights=sha256:" in h["producer"]
    # the same tokens recomputed in a single prefill step give the same bits
    ref = tiny_engine(prefill_chunk_size=64)
    s2 = ref.add_request(seq.token_ids, SamplingParams(max_tokens=1, temperature=0))
    batch = ref.scheduler.schedule()
    assert batch.num_new == [n + 1]
    ref.runner.run(batch)
    full = kv_io.gather_kv(ref.runner.kv_cache, s2.block_table, 0, n).view(torch.int16)
    got = torch.from_numpy(np.frombuffer(payload, dtype="<i2").copy()).view(full.shape)
    assert torch.equal(got, full)


def test_resume_skips_prefill_and_matches_recompute():
    eng = tiny_engine()
    first = turn1(eng)
    follow_up = first.token_ids + [9, 8, 7, 6, 5]
    full = eng.generate([follow_up], GREEDY)[0]["token_ids"]
    resumed = eng.add_request(follow_up, GREEDY, kv_chunks=[first.kv_chunk], export_kv=True)
    assert resumed.num_restored == len(first) - 1
    while eng.has_work():
        eng.step()
    assert resumed.completion_token_ids == full
    _, _, h, _ = parse(resumed.kv_chunk)
    assert (h["token_start"], h["token_end"]) == (len(first) - 1, len(resumed) - 1)
    assert eng.block_manager.num_used == 0


def test_resumed_prefill_computes_only_the_new_tokens():
    eng = tiny_engine()
    first = turn1(eng)
    follow_up = first.token_ids + [1, 2, 3]
    resumed = eng.add_request(follow_up, GREEDY, kv_chunks=[first.kv_chunk])
    batch = eng.scheduler.schedule()
    assert batch.seqs == [resumed] and batch.num_new == [len(follow_up) - (len(first) - 1)]
    eng.kv.restore(resumed)


@pytest.mark.parametrize("corruption", ["flip_payload_bit", "foreign_producer", "garbage"])
def test_bad_chunk_is_ignored_and_tokens_recomputed(corruption):
    eng = tiny_engine()
    first = turn1(eng)
    follow_up = first.token_ids + [4, 4, 4]
    full = eng.generate([follow_up], GREEDY)[0]["token_ids"]
    chunk = bytearray(first.kv_chunk)
    if corruption == "flip_payload_bit":
        chunk[-100] ^= 0x10
    elif corruption == "foreign_producer":
        magic, version, h, payload = parse(bytes(chunk))
        h["producer"] = h["producer"].replace("dtype=bfloat16", "dtype=float16")
        hb = json.dumps(h).encode()
        chunk = struct.pack("<4sHI", magic, version, len(hb)) + hb + payload
    else:
        chunk = b"\x00" * 64
    seq = eng.add_request(follow_up, GREEDY, kv_chunks=[bytes(chunk)])
    assert seq.num_restored == 0
    while eng.has_work():
        eng.step()
    assert seq.completion_token_ids == full


def test_producer_without_installed_package(monkeypatch):
    """Run from a source tree (as on the GPU machine): no distribution metadata, fall back to __version__."""
    import reprise_gpu

    def missing(name):
        raise kv_restore.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(kv_restore.metadata, "version", missing)
    assert kv_restore.package_version() == reprise_gpu.__version__
    assert kv_restore.producer_fingerprint("ab", torch.bfloat16, "cpu").startswith(f"reprise-gpu/{reprise_gpu.__version__};")


def test_source_version_equals_pyproject():
    """Installed and source-tree processes must write the same producer string."""
    import pathlib
    import tomllib

    import reprise_gpu

    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == reprise_gpu.__version__
