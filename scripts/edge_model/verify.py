"""Checks of a converted edge model against HF fp32 (the GGUF dequantized), and the test fixtures.

Invariants (any failure stops the conversion): greedy decoding with the KV cache equals a full
recompute and a two-piece prefill. Reported: teacher-forced top-1 agreement and max |logit diff|
against HF fp32, and for a variant against the exact one (what a requantized head loses).
Fixtures (test/fixtures/edge-greedy.json, edge-tokenizer.json) are written only with --write-fixtures;
otherwise the committed ones are compared with this conversion's output, and setup never changes them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .runner import EdgeLM

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "List three colors."}],
]
# what a variant loses against the exact model: a fixed prompt set, teacher-forced on the exact model's tokens
LOSS_PROMPTS = PROMPTS + [
    [{"role": "user", "content": "Explain how a lighthouse works, in detail."}],
    [{"role": "user", "content": "Write a Python function that reverses a linked list."}],
    [{"role": "user", "content": "Give me three tips for learning a new language."}],
    [{"role": "user", "content": "Summarize the plot of Romeo and Juliet."}],
    [{"role": "user", "content": "What are the health benefits of green tea?"}],
]
GREEDY_TOKENS = 24
LOSS_TOKENS = 32
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


def log(msg: str) -> None:
    print(f"[convert {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def chat_ids(tok, messages) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def check_invariants(lm: EdgeLM, tok) -> None:
    """KV-cache decode == full recompute (first 8 tokens) == two-piece prefill, on the first prompt."""
    prompt = chat_ids(tok, PROMPTS[0])
    kv_ids = lm.greedy(prompt, GREEDY_TOKENS, EOS)
    if kv_ids[:8] != lm.greedy_full(prompt, 8, EOS):
        raise AssertionError(f"KV-cache decode {kv_ids[:8]} != full recompute")
    if kv_ids != lm.greedy(prompt, GREEDY_TOKENS, EOS, split=len(prompt) // 2):
        raise AssertionError("two-piece prefill != one-piece prefill")


def fixture_cases(lm: EdgeLM, tok) -> list[dict]:
    """Greedy decoding of the fixture prompts (what the TypeScript tests compare with)."""
    cases = []
    for messages in PROMPTS:
        prompt = chat_ids(tok, messages)
        ids = lm.greedy(prompt, GREEDY_TOKENS, EOS)
        cases.append({"messages": messages, "prompt_ids": prompt, "onnx_greedy_ids": ids, "onnx_text": tok.decode(ids, skip_special_tokens=True)})
    return cases


def vs_hf(lm: EdgeLM, tok, hf, cases: list[dict]) -> list[dict]:
    """Adds HF fp32's greedy tokens and the agreement with them to each fixture case."""
    import torch

    for case in cases:
        prompt, kv_ids = case["prompt_ids"], case["onnx_greedy_ids"]
        with torch.no_grad():
            gen = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=EOS, pad_token_id=EOS)
            hf_logits = hf(torch.tensor([prompt])).logits[0, -1].numpy()
        hf_ids = [int(i) for i in gen[0, len(prompt):]]
        messages = case["messages"]
        hits, _ = lm.teacher_forced_top1(prompt, hf_ids)
        logit_err = float(np.abs(lm.step(prompt, lm.empty_past())[0] - hf_logits).max())
        case.update({"hf_fp32_greedy_ids": hf_ids, "hf_text": tok.decode(hf_ids, skip_special_tokens=True),
                     "first_divergence_vs_hf": first_divergence(kv_ids, hf_ids), "top1_agreement": hits / len(hf_ids),
                     "max_abs_logit_diff_vs_hf": logit_err})
        log(f"verify: {messages[-1]['content']!r} -> {case['onnx_text']!r} (HF: first divergence at "
            f"{case['first_divergence_vs_hf']}/{len(hf_ids)}, top-1 {hits}/{len(hf_ids)}, max |logit diff| {logit_err:.1e})")
    return cases


def loss_vs(lm: EdgeLM, ref: EdgeLM, tok) -> dict:
    """Greedy agreement and logit error of `lm` against `ref`, teacher-forced on ref's greedy tokens."""
    hits = total = same_seq = 0
    errs = []
    for messages in LOSS_PROMPTS:
        prompt = chat_ids(tok, messages)
        ref_ids = ref.greedy(prompt, LOSS_TOKENS, EOS)
        _, ref_logits = ref.teacher_forced_top1(prompt, ref_ids)
        h, got = lm.teacher_forced_top1(prompt, ref_ids)
        hits, total = hits + h, total + len(ref_ids)
        errs += [float(np.abs(a - b).max()) for a, b in zip(got, ref_logits)]
        same_seq += lm.greedy(prompt, LOSS_TOKENS, EOS) == ref_ids
    return {"prompts": len(LOSS_PROMPTS), "tokens": total, "top1_agreement": hits / total,
            "identical_greedy_sequences": same_seq, "max_abs_logit_diff": max(errs), "mean_max_abs_logit_diff": float(np.mean(errs))}


def tokenizer_fixture(tok) -> dict:
    texts = [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in TOKENIZER_TEXTS]
    for t in texts:
        t["decoded"] = tok.decode(t["ids"], skip_special_tokens=False)
    chats = [{"messages": m, "text": tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), "ids": chat_ids(tok, m)}
             for m in CHATS]
    return {"generated_by": f"scripts/convert_edge_model.py (transformers {__import__('transformers').__version__})",
            "texts": texts, "chats": chats}


def compare_fixture(path: Path, fresh: dict, keys: list[str]) -> list[str]:
    """Differences between the committed fixture and this conversion, on the keys tests read."""
    if not path.exists():
        return [f"{path} is missing (write it with --write-fixtures)"]
    old = json.loads(path.read_text())
    return [f"{path.name}: {k} differs" for k in keys if old.get(k) != fresh.get(k)]
