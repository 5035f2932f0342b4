"""Derive the speculator's weights from the BF16 state dict (gpt-fast `create_quantized_state_dict` style).

Per decoder layer (names in `SpecWeights.layers[i]`):
    g1, g2            RMSNorm weights, float32 (exact copies of BF16)
    q | qkv           e4m3 [rows, dim] + float32 per-row scale (qkv when K/V are not split off)
    kv, kv_r          with `kv_split`: K/V rows as s*W8 + s_r*R8, R8 = e4m3 of the residual W - s*W8
    o, gate_up, down  e4m3 + per-row scale
    corr              with `correction`: the ridge map G = W^T (W W^T + ridge I)^-1 from observed K/V
                      residuals back to the normalized residual stream, W = W_kv diag(g1), as e4m3
Quantization: scale = amax(row) / 448, code = e4m3(row / scale) (round to nearest even); all-zero rows
get scale 1. Everything is derived on the CPU in float64 / IEEE float32 so the bytes do not depend on
the device, then hashed (`digest`) into the fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..config import ModelArgs
from ..layers.rotary import rope_table
from .recipe import Recipe

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] (any float) -> (e4m3 [N, K], float32 scale [N]) with w ~= scale[:, None] * codes."""
    w = w.float()
    scale = w.abs().amax(dim=1) / E4M3_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (w / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return codes, scale


def _split(w: torch.Tensor):
    """Two-term split of w [N, K]: (codes, scale, residual codes, residual scale)."""
    c, s = quantize_rows(w)
    r = w.double() - s.double()[:, None] * c.double()
    rc, rs = quantize_rows(r)
    return c, s, rc, rs


def correction_map(w_kv: torch.Tensor, g1: torch.Tensor, ridge: float) -> torch.Tensor:
    """G [dim, 2*kv] float64: the ridge solution du = G r of W_eff du = r with W_eff = W_kv diag(g1)."""
    w = w_kv.double() * g1.double()[None, :]
    a = w @ w.T
    a = a + ridge * a.diagonal().mean() * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(a, w).T.contiguous()


@dataclass
class SpecWeights:
    args: ModelArgs
    recipe: Recipe
    embed: torch.Tensor                     # BF16 [vocab, dim] (rows are converted to float32 exactly on lookup)
    layers: list[dict[str, torch.Tensor]]
    rope: torch.Tensor                      # float32 [max_seq_len, head_dim]: cos then sin
    digest: str = field(default="")

    def to(self, device) -> "SpecWeights":
        mv = lambda t: t.to(device)  # noqa: E731
        return SpecWeights(self.args, self.recipe, mv(self.embed), [{k: mv(v) for k, v in l.items()} for l in self.layers],
                           mv(self.rope), self.digest)


def create_quantized_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs, recipe: Recipe,
                                device: torch.device | str = "cpu", hash_weights: bool = True) -> SpecWeights:
    """BF16 state dict (our names) -> the speculator's derived weights on `device`, hashed.

    Derive on the CPU (the default) for bytes that do not depend on the machine; a GPU derivation
    (fast for 8B shapes) may differ in rare last bits, which the digest, hence the fingerprint, records.
    hash_weights=False skips the digest (timing runs of random weights; such a speculator codes nothing).
    """
    cpu = {k: v.detach().to(device) for k, v in sd.items()}
    q, kv = args.q_size, args.kv_size
    layers = []
    for i in range(args.n_layers):
        p = f"layers.{i}."
        qkv = cpu[p + "self_attn.qkv_proj.weight"]
        g1 = cpu[p + "input_layernorm.weight"].float()
        lw = {"g1": g1, "g2": cpu[p + "post_attention_layernorm.weight"].float()}
        if recipe.kv_split:
            lw["q"], lw["q_s"] = quantize_rows(qkv[:q])
            lw["kv"], lw["kv_s"], lw["kv_r"], lw["kv_rs"] = _split(qkv[q:])
        else:
            lw["qkv"], lw["qkv_s"] = quantize_rows(qkv)
        for name, key in (("o", "self_attn.o_proj.weight"), ("gate_up", "mlp.gate_up_proj.weight"),
                          ("down", "mlp.down_proj.weight")):
            lw[name], lw[name + "_s"] = quantize_rows(cpu[p + key])
        if recipe.correction:
            lw["corr"], lw["corr_s"] = quantize_rows(correction_map(qkv[q:q + 2 * kv], g1, recipe.correction_ridge))
        layers.append(lw)
    sw = SpecWeights(args, recipe, cpu["embed_tokens.weight"].to(torch.bfloat16), layers,
                     rope_table(args.head_dim, args.max_seq_len, args.rope_theta).to(device))
    sw.digest = digest(sw) if hash_weights else "unhashed"
    return sw


def digest(sw: SpecWeights) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every derived tensor, the RoPE table included."""
    h = hashlib.sha256()
    items = [("embed", sw.embed), ("rope", sw.rope)]
    items += [(f"layers.{i}.{k}", v) for i, l in enumerate(sw.layers) for k, v in sorted(l.items())]
    for name, t in items:
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
