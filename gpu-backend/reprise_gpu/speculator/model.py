"""The FP8 speculator: predicts every layer's K (after RoPE) and V for the new tokens of a batch.

It runs one layer at a time so a decoder can interleave it with decoding:

    run = spec.start([SeqInput(token_ids, start, past_kv), ...])
    for layer in range(n_layers):
        preds = run.predict(layer)          # per sequence: float32 [2, KH, n_new, D] (K after RoPE, V)
        run.observe(layer, exact)           # per sequence: the true K/V of those tokens (decoded or known)

Layer l (recipe "w8a8-kvx"; the plain "w8a8" skips the marked steps):
    n = rmsnorm(h) -> FP8 per token;  [k|v] = n W_kv (two-term FP8*)     -> prediction: rope(k), v
    observe: r = [unrope(K) - k | V - v];  h += rms(h) * (r G)*            (ridge correction)
    q = rmsnorm(h) W_q (FP8);  o = attention(q, exact K/V* of positions <= own)
    h += o W_o;  h += silu(g) * u W_down with [g|u] = rmsnorm(h) W_gate_up   (all FP8)
Row-invariant arithmetic (cpu_ops on the CPU, cuda_ops on CUDA) makes each sequence's predictions
independent of batching and of how its tokens are split across calls.

With a LoRA adapter (`lora`: speculator/lora.py) every targeted projection adds scaling * x A^T B^T, x
being that projection's input before FP8 rounding (recomputed exactly: cpu_ops.rms_norm, silu_mul).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import cpu_ops
from .lora import SpecLora
from .quantize import SpecWeights
from .recipe import fingerprint


@dataclass
class SeqInput:
    token_ids: torch.Tensor             # [n] int64, the new tokens
    start: int                          # position of token_ids[0]
    past_kv: torch.Tensor | None = None  # [L, 2, KH, start, D]: exact KV (exact-KV recipes) or the speculator's own


class Speculator:
    def __init__(self, weights: SpecWeights, device: torch.device | str = "cpu", ops: str = "auto"):
        """ops: "auto" (cpu_ops on the CPU, cuda_ops on CUDA) or "cuda" (the CUDA path on CPU tensors:
        Triton interpreter smoke tests only)."""
        self.device = torch.device(device)
        self.w = weights.to(self.device)
        self.args, self.recipe = weights.args, weights.recipe
        if self.device.type == "cuda" or ops == "cuda":
            from . import cuda_ops as ops
            ops.setup(self.device)
        else:
            ops = cpu_ops
        self.ops = ops
        self.fingerprint = fingerprint(weights.digest, self.recipe, ops.backend_name(self.device))

    def start(self, seqs: list[SeqInput], lora: SpecLora | None = None) -> "Run":
        return Run(self, seqs, lora)

    def predict_all(self, seqs: list[SeqInput], exact: list[torch.Tensor] | None = None,
                    fp8_cache: bool = False, lora: SpecLora | None = None) -> list[torch.Tensor]:
        """Encoder side: predictions [L, 2, KH, n, D] per sequence given the true K/V `exact` of the same
        shape (needed by exact-KV recipes; plain "w8a8" may pass None). With `fp8_cache`, `exact` holds
        the FP8 cache's values and each is replaced by the point of its FP8 cell nearest the prediction."""
        run = self.start(seqs, lora)
        out = [[] for _ in seqs]
        for layer in range(self.args.n_layers):
            preds = run.predict(layer)
            for o, p in zip(out, preds):
                o.append(p)
            obs = None if exact is None else [e[layer] for e in exact]
            if fp8_cache and obs is not None:
                obs = [fp8_observation(p, e) for p, e in zip(preds, obs)]
            run.observe(layer, obs)
        return [torch.stack(o) for o in out]


def fp8_observation(pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The point of each FP8 cache value's rounding cell [v - u/2, v + u/2] closest to the prediction.

    values: the dequantized cache (code * 2^e per row of the last axis); u = the e4m3 step at v, whose
    subnormal floor 2^(e - 9) uses the row exponent implied by the row's own maximum. An FP8 value says
    only that the truth lay in its cell, so a prediction inside the cell is kept as it is.
    """
    from ..codec.fp8cache import row_exponents
    v = values.to(pred.device).float()
    e_row = torch.from_numpy(row_exponents(v.abs().amax(dim=-1).cpu().numpy()).astype("int32")).to(v.device)
    _, ex = torch.frexp(v)                                  # |v| in [2^(ex-1), 2^ex)
    step = torch.ldexp(torch.ones_like(v), torch.maximum(ex - 4, e_row[..., None] - 9))
    return torch.minimum(torch.maximum(pred.float(), v - step / 2), v + step / 2)


class Run:
    def __init__(self, spec: Speculator, seqs: list[SeqInput], lora: SpecLora | None = None):
        self.spec, self.seqs = spec, seqs
        self.lora = None if lora is None else lora.to(spec.device)
        a, dev = spec.args, spec.device
        self.lens = [int(s.token_ids.numel()) for s in seqs]
        ids = torch.cat([s.token_ids.reshape(-1).to(dev) for s in seqs])
        self.pos = torch.cat([torch.arange(s.start, s.start + n, device=dev) for s, n in zip(seqs, self.lens)])
        self.cs = spec.w.rope[self.pos].contiguous()                      # [T, D]: cos then sin
        self.h = spec.w.embed[ids].float()
        self.kv = spec.ops.KVStore(a, seqs, self.lens, dev, window=spec.recipe.window)
        self.fast = spec.recipe.fast_accum
        self.layer = 0
        self.pending = None

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x, self.lens))

    def predict(self, layer: int) -> list[torch.Tensor]:
        assert layer == self.layer and self.pending is None, "predict(l) then observe(l), in layer order"
        a, w, ops, r = self.spec.args, self.spec.w.layers[layer], self.spec.ops, self.spec.recipe
        T, KH, D, q_size = self.h.shape[0], a.n_kv_heads, a.head_dim, a.q_size
        nq, dq, rms = ops.norm_quant(self.h, w["g1"], a.norm_eps, r.kv_split)
        q = None
        if r.kv_split:
            kv = ops.kv_split_linear(nq, dq, w["kv"], w["kv_s"], w["kv_r"], w["kv_rs"], fast=self.fast)
        else:
            qkv = ops.linear(nq, w["qkv"], w["qkv_s"], fast=self.fast)
            q, kv = qkv[:, :q_size], qkv[:, q_size:]
        n = None
        if self.lora is not None:            # LoRA reads the normalized input before its FP8 rounding
            n = cpu_ops.rms_norm(self.h, w["g1"], a.norm_eps)[0]
            kv = self.lora.add(kv, layer, ("k_proj", "v_proj"), n, (KH * D, KH * D))
            if q is not None:
                q = self.lora.add(q, layer, ("q_proj",), n, (q_size,))
        k_pre = kv[:, : KH * D].reshape(T, KH, D)
        v = kv[:, KH * D:].reshape(T, KH, D)
        k = ops.rope(k_pre, self.cs)
        self.pending = dict(nq=nq, rms=rms, q=q, k_pre=k_pre, k=k, v=v, n=n)
        return [torch.stack([kk.transpose(0, 1), vv.transpose(0, 1)]) for kk, vv in zip(self._split(k), self._split(v))]

    def observe(self, layer: int, exact: list[torch.Tensor] | None) -> None:
        assert layer == self.layer and self.pending is not None
        a, w, ops, r, p = self.spec.args, self.spec.w.layers[layer], self.spec.ops, self.spec.recipe, self.pending
        T, H, KH, D = self.h.shape[0], a.n_heads, a.n_kv_heads, a.head_dim
        self.pending, self.layer = None, layer + 1
        if r.exact_kv_attention or r.correction:
            if exact is None:
                raise ValueError(f"recipe {r.name} needs the exact K/V of every layer")
            ex = torch.cat([e.to(self.spec.device).float().permute(2, 0, 1, 3) for e in exact])   # [T, 2, KH, D]
            k_ex, v_ex = ex[:, 0], ex[:, 1]
        if r.exact_kv_attention:
            self.kv.append(layer, k_ex, v_ex)
        else:
            self.kv.append(layer, p["k"], p["v"])
        if layer == a.n_layers - 1:
            return                                                        # nothing after the last K/V is needed
        q, nq, n, lora = p["q"], p["nq"], p["n"], self.lora
        if r.correction:
            res = torch.cat([(ops.rope(k_ex, self.cs, inverse=True) - p["k_pre"]).reshape(T, -1),
                             (v_ex - p["v"]).reshape(T, -1)], dim=1)
            du = ops.linear(ops.quant_rows(res), w["corr"], w["corr_s"], fast=self.fast)
            self.h = self.h + du * p["rms"]
            nq, _, _ = ops.norm_quant(self.h, w["g1"], a.norm_eps, False)
            n = None if lora is None else cpu_ops.rms_norm(self.h, w["g1"], a.norm_eps)[0]
            q = None
        if q is None:
            wq, sq = (w["q"], w["q_s"]) if "q" in w else (w["qkv"][: a.q_size], w["qkv_s"][: a.q_size])
            q = ops.linear(nq, wq, sq, fast=self.fast)
            if lora is not None:
                q = lora.add(q, layer, ("q_proj",), n, (a.q_size,))
        q = ops.rope(q.reshape(T, H, D), self.cs, out_dtype=ops.ATTN_DTYPE)
        o = self.kv.attend(layer, q, self.pos).reshape(T, H * D)
        attn_out = ops.linear(ops.quant_rows(o), w["o"], w["o_s"], fast=self.fast)
        if lora is not None:
            attn_out = lora.add(attn_out, layer, ("o_proj",), o.float(), (a.dim,))
        self.h = self.h + attn_out
        nq2, _, _ = ops.norm_quant(self.h, w["g2"], a.norm_eps, False)
        gu = ops.linear(nq2, w["gate_up"], w["gate_up_s"], wide=True, fast=self.fast)
        F = a.ffn_dim
        if lora is not None:
            n2 = cpu_ops.rms_norm(self.h, w["g2"], a.norm_eps)[0]
            gu = lora.add(gu, layer, ("gate_proj", "up_proj"), n2, (F, F))
        mlp_out = ops.linear(ops.silu_mul_quant(gu, F), w["down"], w["down_s"], fast=self.fast)
        if lora is not None:
            act = cpu_ops.silu_mul(gu[:, :F].float(), gu[:, F:].float())
            mlp_out = lora.add(mlp_out, layer, ("down_proj",), act, (a.dim,))
        self.h = self.h + mlp_out

    def own_past(self, i: int) -> torch.Tensor:
        """[L, 2, KH, n, D]: the K/V this run attended with for sequence i's new tokens (a next call's past_kv)."""
        return self.kv.new_kv(i)


class SpeculatorPredictor:
    """Adapts a one-sequence Run to the codec's Predictor protocol: NumPy in and out, or with
    `tensors=True` float32 tensors on the speculator's device (codec.decode_torch)."""

    def __init__(self, run: Run, fp8_cache: bool = False, tensors: bool = False):
        assert len(run.seqs) == 1
        self.run, self.fp8_cache, self.tensors, self.last = run, fp8_cache, tensors, None

    def predict(self, layer: int):
        self.last = self.run.predict(layer)[0]
        return self.last if self.tensors else self.last.cpu().numpy()

    def observe(self, layer: int, values) -> None:
        obs = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))
        if self.fp8_cache:
            obs = fp8_observation(self.last, obs)
        self.run.observe(layer, [obs])
