"""Adapters written by PEFT itself (get_peft_model + save_pretrained) for our model shapes, on the CPU.

PEFT initialises lora_B to zeros (a no-op adapter); init_lora_weights=False draws both A and B at random,
so every adapter here changes the model. The HF model is built from our ModelArgs with random weights:
only its shapes matter, the adapter files do not contain base weights.
"""

from __future__ import annotations

import functools
import os
import tempfile

import torch

from reprise_gpu.config import get_model_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # save_pretrained would look the base model up on the hub

HF_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "tiny": "tiny", "llama3-8b": "meta-llama/Meta-Llama-3-8B"}


@functools.cache
def _hf_model(preset: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    a = get_model_args(preset)
    cfg = LlamaConfig(hidden_size=a.dim, intermediate_size=a.ffn_dim, num_hidden_layers=a.n_layers,
                      num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads, head_dim=a.head_dim,
                      vocab_size=64, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.name_or_path = HF_NAMES[preset]
    return model


def peft_adapter(preset: str, r: int, targets: list[str], seed: int, alpha: float | None = None,
                 rslora: bool = False, scale: float = 1.0) -> tuple[bytes, bytes]:
    """(adapter_config.json, adapter_model.safetensors) bytes as PEFT saves them; `scale` multiplies B."""
    import copy

    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    base = copy.deepcopy(_hf_model(preset)).to_empty(device="cpu")
    cfg = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, target_modules=targets,
                     init_lora_weights=False, use_rslora=rslora, lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, save_embedding_layers=False)
        with open(os.path.join(d, "adapter_config.json"), "rb") as f:
            config = f.read()
        with open(os.path.join(d, "adapter_model.safetensors"), "rb") as f:
            weights = f.read()
    return config, weights
