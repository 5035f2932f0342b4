"""Which activation quantization costs the codec bits? w8a8-kvx with chosen GEMM inputs left unquantized.

    python bench/study_activation_precision.py WORK/tNNN [--out results.jsonl]

WORK/tNNN is a transcript directory written by `bench_kv_codec.py --work WORK` (ids.npy, bf16.npy). For
each choice of GEMM inputs kept in float (q: the query projection's normed input; o: the attention
output; gu: the MLP's normed input; down: silu(gate) * up), the SmolLM2 speculator predicts the
transcript's K/V with the other activations in FP8 as usual, and the chunk is coded with spec-v1
model (b). Emulated with float GEMMs on the CPU (bench_kv_codec.EmulatedOps): bits only, no speed.
A kept-in-float input stands for what a two-term FP8 split of that activation would give (the
K/V projections already use one); its cost is one more GEMM of that shape.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kv_codec import EmulatedOps, predictions  # noqa: E402
from reprise_gpu.codec.spec import encode_chunk  # noqa: E402
from reprise_gpu.config import smollm2_gguf_path  # noqa: E402
from reprise_gpu.gguf_loader import load_gguf  # noqa: E402
from reprise_gpu.speculator.model import Speculator  # noqa: E402
from reprise_gpu.speculator.quantize import create_quantized_state_dict  # noqa: E402
from reprise_gpu.speculator.recipe import get_recipe  # noqa: E402

CHOICES = [(), ("q",), ("o",), ("gu",), ("down",), ("q", "o", "gu", "down")]


class FloatInputs(EmulatedOps):
    """FP8 everywhere except the named GEMM inputs. The norm gains tell the two normed inputs apart:
    g1 feeds the K/V and (after the correction) the query projection, g2 the MLP."""

    def __init__(self, base, keep: set[str], layers):
        super().__init__(base, a16=False, blk_weights=None)
        self.keep = keep
        self.g1 = {id(w["g1"]) for w in layers}
        self.g2 = {id(w["g2"]) for w in layers}

    def norm_quant(self, h, g, eps, split):
        if not split and ((id(g) in self.g1 and "q" in self.keep) or (id(g) in self.g2 and "gu" in self.keep)):
            n, rms = self.cpu.rms_norm(h, g, eps)
            return (n, None), None, rms
        return self.base.norm_quant(h, g, eps, split)

    def quant_rows(self, x):     # the attention output (and the correction's residual)
        return (x.float(), None) if "o" in self.keep else self.base.quant_rows(x)

    def silu_mul_quant(self, gu, F):
        if "down" not in self.keep:
            return self.base.silu_mul_quant(gu, F)
        g, u = gu[:, :F].float(), gu[:, F:].float()
        return g / (1 + torch.exp(-g)) * u, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("transcript")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    ids = torch.from_numpy(np.load(os.path.join(a.transcript, "ids.npy")))
    bits = np.load(os.path.join(a.transcript, "bf16.npy"))
    args, sd = load_gguf(smollm2_gguf_path(), dtype=torch.bfloat16, device="cpu")
    kv = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float()
    spec = Speculator(create_quantized_state_dict(sd, args, get_recipe("w8a8-kvx")), device="cpu")
    base = spec.ops
    rows = []
    for keep in CHOICES:
        t = time.time()
        spec.ops = FloatInputs(base, set(keep), spec.w.layers)
        data = encode_chunk(bits, predictions(spec, ids, kv, False), fingerprint="study", token_start=0)
        rows.append({"float_inputs": list(keep), "bits_per_value": 8 * len(data) / bits.size, "tokens": int(ids.numel()),
                     "seconds": time.time() - t})
        print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
