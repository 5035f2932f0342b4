"""Weights for `models.llama.Llama`: from a llama-architecture GGUF, or random for any preset.

GGUF -> our state dict: each tensor is dequantized to float32 (`gguf.quants.dequantize`), attn_q and
attn_k are un-permuted from llama.cpp's RoPE layout back to HF's, q/k/v and gate/up are stacked into
the fused projections, and everything is cast to the requested dtype. The dequantized values cast to
BF16 are "the BF16 model".
"""

from __future__ import annotations

import numpy as np
import torch

from .config import ModelArgs

_NAMES = {  # GGUF tensor name in block i -> our name in layer i (the fused q/k/v and gate/up handled apart)
    "attn_norm.weight": "input_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's convert-time permutation of a q/k projection [n_heads * D, dim].

    llama.cpp stores each head's rows in interleaved pairs (2i, 2i+1) for its RoPE; HF pairs row i
    with row i + D/2. Per head, GGUF row 2i+j holds HF row j * D/2 + i.
    """
    out_features, dim = w.shape
    half = out_features // n_heads // 2
    return w.reshape(n_heads, half, 2, dim).transpose(1, 2).reshape(out_features, dim)


def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `unpermute_rope`: HF layout -> llama.cpp layout."""
    out_features, dim = w.shape
    half = out_features // n_heads // 2
    return w.reshape(n_heads, 2, half, dim).transpose(1, 2).reshape(out_features, dim)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_model_args(reader) -> ModelArgs:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r}: only 'llama' is supported")
    dim = int(_field(reader, "llama.embedding_length"))
    n_heads = int(_field(reader, "llama.attention.head_count"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return ModelArgs(
        n_layers=int(_field(reader, "llama.block_count")),
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.attention.key_length", dim // n_heads)),
        ffn_dim=int(_field(reader, "llama.feed_forward_length")),
        vocab_size=int(vocab),
        # stored as float32: round back to the decimal the model was configured with (1e-5, not 9.9999997e-6)
        rope_theta=float(f"{_field(reader, 'llama.rope.freq_base', 10000.0):.7g}"),
        norm_eps=float(f"{_field(reader, 'llama.attention.layer_norm_rms_epsilon'):.7g}"),
        tie_embeddings="output.weight" not in tensor_names,
        max_seq_len=int(_field(reader, "llama.context_length", 8192)),
    )


def load_gguf(path: str, dtype: torch.dtype = torch.bfloat16,
              device: torch.device | str = "cpu") -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read a llama GGUF -> (ModelArgs from its metadata, state dict in our naming, `dtype`, on `device`)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    args = gguf_model_args(reader)

    def get(t) -> torch.Tensor:
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        return torch.from_numpy(w if w.flags.writeable else w.copy())  # F32 tensors are views of the mmap

    raw = {t.name: t for t in reader.tensors}
    sd: dict[str, torch.Tensor] = {}

    def put(name: str, w: torch.Tensor):
        sd[name] = w.to(device=device, dtype=dtype)

    put("embed_tokens.weight", get(raw["token_embd.weight"]))
    put("norm.weight", get(raw["output_norm.weight"]))
    if not args.tie_embeddings:
        put("lm_head.weight", get(raw["output.weight"]))
    for i in range(args.n_layers):
        blk, ours = f"blk.{i}.", f"layers.{i}."
        for g, o in _NAMES.items():
            put(ours + o, get(raw[blk + g]))
        q = unpermute_rope(get(raw[blk + "attn_q.weight"]), args.n_heads)
        k = unpermute_rope(get(raw[blk + "attn_k.weight"]), args.n_kv_heads)
        put(ours + "self_attn.qkv_proj.weight", torch.cat([q, k, get(raw[blk + "attn_v.weight"])]))
        put(ours + "mlp.gate_up_proj.weight",
            torch.cat([get(raw[blk + "ffn_gate.weight"]), get(raw[blk + "ffn_up.weight"])]))
    assert sd["embed_tokens.weight"].shape == (args.vocab_size, args.dim), sd["embed_tokens.weight"].shape
    assert sd["layers.0.self_attn.qkv_proj.weight"].shape == (args.q_size + 2 * args.kv_size, args.dim)
    return args, sd


def to_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our names -> HF LlamaForCausalLM names (model.*, q/k/v_proj and gate/up_proj split)."""
    hf = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"],
          "lm_head.weight": sd.get("lm_head.weight", sd["embed_tokens.weight"])}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        q, k, v = sd[p + "self_attn.qkv_proj.weight"].split([args.q_size, args.kv_size, args.kv_size])
        gate, up = sd[p + "mlp.gate_up_proj.weight"].split(args.ffn_dim)
        hf.update({
            f"model.{p}input_layernorm.weight": sd[p + "input_layernorm.weight"],
            f"model.{p}post_attention_layernorm.weight": sd[p + "post_attention_layernorm.weight"],
            f"model.{p}self_attn.q_proj.weight": q, f"model.{p}self_attn.k_proj.weight": k,
            f"model.{p}self_attn.v_proj.weight": v,
            f"model.{p}self_attn.o_proj.weight": sd[p + "self_attn.o_proj.weight"],
            f"model.{p}mlp.gate_proj.weight": gate, f"model.{p}mlp.up_proj.weight": up,
            f"model.{p}mlp.down_proj.weight": sd[p + "mlp.down_proj.weight"],
        })
    return hf


def random_state_dict(args: ModelArgs, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Random weights of `args`' shapes (seeded per device; never zeros), for speed and scale studies.

    Linear weights ~ N(0, 1/in_features) keep activations at unit scale; o_proj and down_proj are
    further scaled by 1/sqrt(2 * n_layers) so the residual stream stays O(1) over depth (GPT-2's
    init); norm weights ~ 1 + N(0, 0.02^2); embeddings ~ N(0, 1/dim), so tied or not the logits are O(1)
    (every use of the residual stream goes through an RMSNorm, so the embeddings' scale is free).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    residual_scale = (2 * args.n_layers) ** -0.5

    def normal(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        # generated in float32 one tensor at a time, so the peak extra memory is one fp32 tensor
        w = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)
        return (w * std + mean).to(dtype)

    def linear(out_f: int, in_f: int, scale: float = 1.0) -> torch.Tensor:
        return normal(out_f, in_f, std=scale * in_f ** -0.5)

    sd = {"embed_tokens.weight": normal(args.vocab_size, args.dim, std=args.dim ** -0.5),
          "norm.weight": normal(args.dim, std=0.02, mean=1.0)}
    if not args.tie_embeddings:
        sd["lm_head.weight"] = linear(args.vocab_size, args.dim)
    for i in range(args.n_layers):
        p = f"layers.{i}."
        sd[p + "input_layernorm.weight"] = normal(args.dim, std=0.02, mean=1.0)
        sd[p + "self_attn.qkv_proj.weight"] = linear(args.q_size + 2 * args.kv_size, args.dim)
        sd[p + "self_attn.o_proj.weight"] = linear(args.dim, args.q_size, residual_scale)
        sd[p + "post_attention_layernorm.weight"] = normal(args.dim, std=0.02, mean=1.0)
        sd[p + "mlp.gate_up_proj.weight"] = linear(2 * args.ffn_dim, args.dim)
        sd[p + "mlp.down_proj.weight"] = linear(args.dim, args.ffn_dim, residual_scale)
    return sd
