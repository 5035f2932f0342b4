"""Coder throughput: GB/s of BF16 KV encoded and decoded, GPU spec-v2 side by side with the NumPy coders.

    python bench/bench_coder.py --out DIR [--models smollm2-135m,llama3-8b] [--tokens 256,1024,4096,16384]
                                [--numpy-max-values 20000000] [--variants] [--compile-only]

Per model shape and chunk length T: a synthetic K/V of the model's shape (per-channel scales spread over
e^N(0, 1.5), values around a prediction with residual 2^-5.4 of the channel scale: ~5.2 bits per value, the
range the speculator gives on real SmolLM2 KV) is
    - encoded by the GPU coder (encode_v2: parameter search, rANS, raw bits, bytes on the host) and decoded
      (decode_v2, all layers in one launch as a benchmark, and layer by layer as a restore does);
    - for chunks up to --numpy-max-values values, also by the NumPy spec-v2 and spec-v1 coders and the
      spec-v1 tensor decoder (decode_torch), in the same run;
    - every GPU result is checked against the NumPy bytes / values where NumPy ran, and decoded back.
GB/s = 2 bytes x values / seconds (median of --repeat runs after a warm-up). --variants also times the
decoder's block count per program, block_steps and LUT vs binary search. Rows go to DIR/coder.jsonl.
--compile-only compiles every kernel for sm_90 without a GPU (catches compile errors on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reprise_gpu.config import get_model_args  # noqa: E402

NOISE = 2 ** -5.4


def synthetic(L, KH, T, D, seed=0, device="cpu"):
    """(target int16 BF16 bits, prediction float32) [L, 2, KH, T, D] on `device`."""
    g = torch.Generator(device=device).manual_seed(seed)
    scale = torch.exp(torch.randn((L, 2, KH, 1, D), generator=g, device=device) * 1.5)
    t = torch.empty((L, 2, KH, T, D), dtype=torch.int16, device=device)
    p = torch.empty((L, 2, KH, T, D), dtype=torch.float32, device=device)
    for layer in range(L):                  # a layer at a time: the 8B shape at 16k tokens is 1G values
        x = torch.randn((2, KH, T, D), generator=g, device=device) * scale[layer]
        p[layer] = x + NOISE * scale[layer] * torch.randn((2, KH, T, D), generator=g, device=device)
        t[layer] = x.to(torch.bfloat16).view(torch.int16)
    return t, p


class Fixed:
    def __init__(self, pred, all_at_once):
        self.pred = pred
        if all_at_once:
            self.all_predictions = pred

    def predict(self, layer):
        return self.pred[layer]

    def observe(self, layer, values):
        pass


def timed(fn, repeat, sync):
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out


def run(a):
    from reprise_gpu.codec import gpu, rans_tl
    from reprise_gpu.codec.decode_torch import decode_chunk_torch
    from reprise_gpu.codec.spec import FixedPredictions, decode_chunk, encode_chunk
    from reprise_gpu.codec.spec2 import decode_chunk_v2, encode_chunk_v2

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    os.makedirs(a.out, exist_ok=True)
    rows = open(os.path.join(a.out, "coder.jsonl"), "a")
    meta = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), host=platform.node(),
                device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", torch=torch.__version__)
    table = []

    def emit(**r):
        r.update(meta)
        rows.write(json.dumps(r) + "\n")
        rows.flush()
        if "GBps" in r:
            table.append(r)
        print(json.dumps(r), flush=True)

    for name in a.models.split(","):
        args = get_model_args(name)
        L, KH, D = args.n_layers, args.n_kv_heads, args.head_dim
        for T in (int(t) for t in a.tokens.split(",")):
            x, p = synthetic(L, KH, T, D, seed=T, device=dev)
            n = x.numel()
            gb = 2 * n / 1e9
            shape = dict(fingerprint="bench", layers=L, kv_heads=KH, head_dim=D, token_start=0, token_end=T)
            base = dict(model=name, tokens=T, values=n)
            rep = a.repeat if n < 300_000_000 else 2
            t_enc, data = timed(lambda: gpu.encode_v2(x, p, fingerprint="bench", token_start=0), rep, sync)
            bits = 8 * len(data) / n
            emit(**base, coder="gpu-v2", op="encode", seconds=t_enc, GBps=gb / t_enc, bits_per_value=bits)
            for lut in (True, False):
                t_dec, res = timed(lambda: gpu.decode_v2(data, Fixed(p, True), device=dev, lut=lut, **shape),
                                   rep, sync)
                ok = bool(res.ok and torch.equal(res.values, x))
                emit(**base, coder="gpu-v2", op="decode", variant=("lut" if lut else "search") + ("" if ok else "-WRONG"),
                     seconds=t_dec, GBps=gb / t_dec, bits_per_value=bits, message=res.message)
            t_lay, res = timed(lambda: gpu.decode_v2(data, Fixed(p, False), device=dev, **shape), rep, sync)
            ok = bool(res.ok and torch.equal(res.values, x))
            emit(**base, coder="gpu-v2", op="decode", variant="per-layer" + ("" if ok else "-WRONG"), seconds=t_lay,
                 GBps=gb / t_lay, bits_per_value=bits)
            try:                    # the software-pipelined decode kernel, if it decodes right here
                gpu.PIPELINED = True
                t2, res = timed(lambda: gpu.decode_v2(data, Fixed(p, True), device=dev, **shape), rep, sync)
                ok = bool(res.ok and torch.equal(res.values, x))
                emit(**base, coder="gpu-v2", op="decode", variant="pipelined" if ok else "pipelined-WRONG",
                     seconds=t2, GBps=gb / t2, bits_per_value=bits, message=res.message)
            finally:
                gpu.PIPELINED = False
            on_dev = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)
            from reprise_gpu.codec.spec2 import parse_v2
            o_states = parse_v2(data, **shape).offsets[0]
            t2, res = timed(lambda: gpu.decode_v2(data, Fixed(p, True), device=dev, on_device=on_dev[o_states:],
                                                  **shape), rep, sync)
            ok = bool(res.ok and torch.equal(res.values, x))
            emit(**base, coder="gpu-v2", op="decode", variant="stream-on-gpu" + ("" if ok else "-WRONG"), seconds=t2,
                 GBps=gb / t2, bits_per_value=bits)
            t2, _ = timed(lambda: gpu.encode_v2(x, p, fingerprint="bench", token_start=0, as_tensor=True), rep, sync)
            emit(**base, coder="gpu-v2", op="encode", variant="stream-stays-on-gpu", seconds=t2, GBps=gb / t2,
                 bits_per_value=bits)
            if a.variants:
                for steps in (256, 1024):
                    d2 = gpu.encode_v2(x, p, fingerprint="bench", token_start=0, block_steps=steps)
                    t2, res = timed(lambda: gpu.decode_v2(d2, Fixed(p, True), device=dev, **shape), rep, sync)
                    assert res.ok and torch.equal(res.values, x)
                    emit(**base, coder="gpu-v2", op="decode", variant=f"steps={steps}", seconds=t2, GBps=gb / t2,
                         bits_per_value=8 * len(d2) / n)
                for blocks in (2, 8):
                    gpu.BLOCKS = blocks
                    t2, res = timed(lambda: gpu.decode_v2(data, Fixed(p, True), device=dev, **shape), rep, sync)
                    gpu.BLOCKS = 4
                    assert res.ok and torch.equal(res.values, x)
                    emit(**base, coder="gpu-v2", op="decode", variant=f"blocks={blocks}", seconds=t2, GBps=gb / t2,
                         bits_per_value=bits)
            if n <= a.numpy_max_values:
                xn, pn = x.cpu().numpy().view(np.uint16), p.cpu().numpy()
                t, ref = timed(lambda: encode_chunk_v2(xn, pn, fingerprint="bench", token_start=0), 1, lambda: None)
                emit(**base, coder="numpy-v2", op="encode", seconds=t, GBps=gb / t, bits_per_value=8 * len(ref) / n,
                     same_bytes_as_gpu=ref == data)
                t, res = timed(lambda: decode_chunk_v2(data, FixedPredictions(pn), **shape), 1, lambda: None)
                emit(**base, coder="numpy-v2", op="decode", seconds=t, GBps=gb / t,
                     ok=bool(res.ok and np.array_equal(res.values, xn)))
                t, d1 = timed(lambda: encode_chunk(xn, pn, fingerprint="bench", token_start=0), 1, lambda: None)
                emit(**base, coder="numpy-v1", op="encode", seconds=t, GBps=gb / t, bits_per_value=8 * len(d1) / n)
                t, res = timed(lambda: decode_chunk(d1, FixedPredictions(pn), **shape), 1, lambda: None)
                assert res.ok
                emit(**base, coder="numpy-v1", op="decode", seconds=t, GBps=gb / t)
                t, res = timed(lambda: decode_chunk_torch(d1, Fixed(p, False), device=dev, **shape), 1, sync)
                emit(**base, coder="torch-v1", op="decode", seconds=t, GBps=gb / t,
                     ok=bool(res.ok and np.array_equal(res.values, xn)))
            del x, p
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print("\nmodel          tokens  coder     op      variant     GB/s     bits/value")
    for r in table:
        print(f"{r['model']:<14} {r['tokens']:>6}  {r['coder']:<9} {r['op']:<7} {r.get('variant', ''):<11} "
              f"{r['GBps']:8.2f}  {r.get('bits_per_value', float('nan')):6.3f}")
    _ = rans_tl


def compile_only():
    """Every spec-v2 kernel for sm_90 at both formats, with the launchers' constexprs (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from reprise_gpu.codec import gpu, rans_tl
    from reprise_gpu.codec.grid import BF16, E4M3

    ptr = {"pred_ptr": "fp32", "lut_ptr": "i16", "out_ptr": "i16", "scratch_ptr": "i16"}
    i64 = {"states_ptr", "wbase_ptr", "nwords_ptr", "rbase_ptr", "nlow_ptr", "nref_ptr", "raw_ptr", "hash_ptr",
           "costq_ptr_"}

    def build(fn, const, num_warps=4, out="i16"):
        sig, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in const:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                t = "i64" if arg in i64 else ptr.get(arg, "i32")
                if arg == "out_ptr" and fn is rans_tl._cost_kernel:
                    t = "i64"
                if arg in ("out_ptr", "x_ptr") and out != "i16":
                    t = out if fn is not rans_tl._cost_kernel or arg == "x_ptr" else t
                sig[arg] = "*" + t
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[arg] = "i32"
        k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": num_warps})
        print(f"sm_90 {fn.__name__} {sorted(const.items())}: smem {k.metadata.shared} B", flush=True)

    for fmt, out in ((BF16, "i16"), (E4M3, "u8")):
        for D in (64, 128):
            meta = gpu._meta(fmt)
            base = dict(D=D, FP8=fmt is E4M3, BLOCKS=gpu.BLOCKS, **meta)
            for search in (False, True):
                build(rans_tl._decode_kernel, dict(base, SEARCH=search), out=out)
            build(rans_tl._decode_kernel_pipelined, dict(base, SEARCH=False), out=out)
            build(rans_tl._encode_kernel, base, out=out)
            build(rans_tl._pack_kernel, base, out=out)
            m = {k: v for k, v in meta.items() if k != "PHASE"}
            for mode in (0, 1):
                build(rans_tl._cost_kernel, dict(MODE=mode, D=D, BD=D, BT=32, FP8=fmt is E4M3, **m), out=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-coder")
    ap.add_argument("--models", default="smollm2-135m,llama3-8b")
    ap.add_argument("--tokens", default="256,1024,4096,16384")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numpy-max-values", type=int, default=3_500_000)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    a = ap.parse_args(argv)
    if a.compile_only:
        compile_only()
        return
    run(a)


if __name__ == "__main__":
    main()
