"""The edge model conversion (scripts/convert_edge_model.py, scripts/edge_model/): block repacking is
exact, and the converted model, when present, decodes the fixture's tokens with and without its KV
cache. The fixtures hold token ids, never a file hash, so a fresh conversion on any machine is
compared with them as it is."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from edge_model import weights as ew  # noqa: E402
from edge_model.files import stem  # noqa: E402

FIXTURE = REPO / "test" / "fixtures" / "edge-greedy.json"


def random_q4_1(rng, rows, blocks):
    """Random Q4_1 rows: per block d f16, m f16, 16 bytes of nibbles; plus the values they encode."""
    d = (rng.standard_normal((rows, blocks)) * 0.02).astype(np.float16)
    d[0, 0] = 0  # a flat block
    m = (rng.standard_normal((rows, blocks)) * 0.1).astype(np.float16)
    q = rng.integers(0, 16, (rows, blocks, 32), dtype=np.uint8)
    qs = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
    raw = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8), qs], axis=-1)
    ref = d.astype(np.float32)[..., None] * q + m.astype(np.float32)[..., None]
    return raw.reshape(rows, -1), ref.reshape(rows, -1)


def test_q4_1_repack_reproduces_ggml_values():
    raw, ref = random_q4_1(np.random.default_rng(0), 7, 5)
    packed, d, m = ew.q4_1_blocks(raw)
    assert d.dtype == np.float16 and m.dtype == np.float16  # kept as the GGUF stores them
    np.testing.assert_allclose(ew.nbits_dequant(packed, d, ew.offsets(d, m)), ref, rtol=0, atol=1e-6)


def test_q8_0_repack_reproduces_ggml_values():
    rng = np.random.default_rng(1)
    d = (rng.random((3, 4)) * 0.01).astype(np.float16)
    q = rng.integers(-128, 128, (3, 4, 32)).astype(np.int8)
    raw = np.concatenate([d[..., None].view(np.uint8), q.view(np.uint8)], axis=-1).reshape(3, -1)
    np.testing.assert_array_equal(ew.q8_dequant(*ew.q8_0_blocks(raw)), (d.astype(np.float32)[..., None] * q).reshape(3, -1))


def test_q4_1_requantization_stays_within_half_a_step():
    w = np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32)
    packed, d, m = ew.requantize_q4_1(w)
    err = np.abs(ew.nbits_dequant(packed, d, ew.offsets(d, m)) - w).reshape(5, 2, 32)
    assert np.all(err <= d.astype(np.float32)[..., None] * 0.5 + 1e-3)


@pytest.mark.parametrize("n_head", [3, 9])
def test_unpermute_inverts_llama_cpp_permute(n_head):
    w = np.arange(n_head * 64 * 5).reshape(n_head * 64, 5)
    # llama.cpp convert_hf_to_gguf.py: reshape(n_head, 2, rows/n_head/2, ...).swapaxes(1, 2)
    permuted = w.reshape(n_head, 2, w.shape[0] // n_head // 2, 5).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(ew.unpermute_rows(permuted, n_head), w)


def test_edge_model_decodes_fixture_tokens_with_and_without_kv_cache():
    fx = json.loads(FIXTURE.read_text())
    manifest = REPO / ".models" / "edge" / f"{stem(fx['variant'])}.json"
    if not manifest.exists():
        pytest.skip("run scripts/convert_edge_model.py first")
    from edge_model.runner import EdgeLM

    case = fx["cases"][0]
    lm = EdgeLM(manifest)
    n = 4
    assert lm.greedy(case["prompt_ids"], n, fx["eos_id"]) == case["onnx_greedy_ids"][:n]
    assert lm.greedy_full(case["prompt_ids"], n, fx["eos_id"]) == case["onnx_greedy_ids"][:n]
    assert lm.greedy(case["prompt_ids"], n, fx["eos_id"], split=5) == case["onnx_greedy_ids"][:n]
