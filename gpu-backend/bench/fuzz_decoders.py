"""Fuzz every KV chunk decoder with mutated chunks: NumPy spec-v1 and spec-v2, the spec-v1 tensor decoder and
the spec-v2 GPU decoder (Triton; the interpreter on a machine without CUDA).

    python bench/fuzz_decoders.py [--cases 2000] [--gpu-cases 150] [--atheris-runs 3000] [--out fuzz.json]

Seeds: tests/fuzz_corpus/ (small chunks of both versions and modes; `--write-corpus` regenerates them from
the deterministic inputs in SEEDS, whose predictions and targets the harness rebuilds to check values).
Each case mutates a seed (hypothesis: 1-3 of bit flips, byte sets, truncation, extension, splices of two
seeds, header and block-table fields set to edge values) and decodes it with every decoder, each under a
watchdog (SIGALRM). A case is a crash if a decoder raises, a hang if it outlives the watchdog, a wrong
decode if it returns OK with values that differ from the seed's target in any bit. Then atheris (libFuzzer,
coverage-guided over the codec package) mutates the same corpus against the NumPy decoders.
Prints and writes {cases, crashes, hangs, wrong_decodes, per_decoder, atheris}; exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np

if "--atheris-child" not in sys.argv:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
CORPUS = os.path.join(HERE, "..", "tests", "fuzz_corpus")
FP = "fuzz"
# name: (version, fp8, L, KH, T, D, seed); small enough for the Triton interpreter
SEEDS = {"v1-bf16": (1, False, 2, 2, 6, 8, 1), "v1-fp8": (1, True, 1, 2, 5, 8, 2),
         "v2-bf16": (2, False, 2, 2, 6, 8, 3), "v2-fp8": (2, True, 1, 2, 5, 8, 4), "v2-bf16-steps1": (2, False, 1, 1, 9, 8, 5)}


class Hang(Exception):
    pass


def inputs(fp8, L, KH, T, D, seed):
    """Deterministic (target, prediction) of a seed, with a few special values."""
    from reprise_gpu.codec.fp8cache import quantize_fp8
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 1.5, (L, 2, KH, 1, D)))
    x = (rng.standard_normal((L, 2, KH, T, D)) * scale).astype(np.float32)
    pred = (x + 0.03 * scale * rng.standard_normal(x.shape)).astype(np.float32)
    x.reshape(-1)[:3] = [0.0, 1e30, -1e-30]
    u = x.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if fp8:
        return quantize_fp8((bits.astype(np.uint32) << 16).view(np.float32)), pred
    return bits, pred


def encode_seed(name):
    from reprise_gpu.codec import api
    version, fp8, L, KH, T, D, seed = SEEDS[name]
    target, pred = inputs(fp8, L, KH, T, D, seed)
    kw = dict(block_steps=1) if name.endswith("steps1") else {}
    return api.encode(target, pred, fingerprint=FP, token_start=3, version=version, **kw), target, pred


def load_corpus():
    cases = []
    for name in SEEDS:
        data = open(os.path.join(CORPUS, name + ".chunk"), "rb").read()
        _, fp8, L, KH, T, D, seed = SEEDS[name]
        target, pred = inputs(fp8, L, KH, T, D, seed)
        cases.append(dict(name=name, data=data, target=target, pred=pred, shape=(L, KH, T, D)))
    return cases


def same(values, target) -> bool:
    import torch
    from reprise_gpu.codec.fp8cache import Fp8Kv
    if isinstance(target, Fp8Kv):
        if isinstance(values, tuple):
            values = Fp8Kv(values[0].cpu().numpy(), values[1].cpu().numpy())
        return np.array_equal(values.codes, target.codes) and np.array_equal(values.exps, target.exps)
    if isinstance(values, torch.Tensor):
        values = values.cpu().numpy().view(np.uint16)
    return np.array_equal(np.asarray(values), target)


def decoders(gpu: bool):
    """name -> fn(data, case) -> Decoded."""
    import torch
    from reprise_gpu.codec.decode_torch import decode_chunk_torch
    from reprise_gpu.codec.gpu import decode_v2
    from reprise_gpu.codec.spec import FixedPredictions, decode_chunk
    from reprise_gpu.codec.spec2 import decode_chunk_v2
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    class Tensors:
        def __init__(self, pred):
            self.pred = torch.from_numpy(pred).to(dev)

        def predict(self, layer):
            return self.pred[layer]

        def observe(self, layer, values):
            pass

    def shape(c):
        L, KH, T, D = c["shape"]
        return dict(fingerprint=FP, layers=L, kv_heads=KH, head_dim=D, token_start=3, token_end=3 + T)

    out = {"numpy-v1": lambda d, c: decode_chunk(d, FixedPredictions(c["pred"]), **shape(c)),
           "numpy-v2": lambda d, c: decode_chunk_v2(d, FixedPredictions(c["pred"]), **shape(c))}
    if gpu:
        out["torch-v1"] = lambda d, c: decode_chunk_torch(d, Tensors(c["pred"]), device=dev, **shape(c))
        out["gpu-v2"] = lambda d, c: decode_v2(d, Tensors(c["pred"]), device=dev, **shape(c))
    return out


def run_case(data: bytes, case: dict, decs: dict, stats: dict, watchdog: float) -> None:
    from reprise_gpu.codec.format import Status
    stats["cases"] += 1
    for name, fn in decs.items():
        st = stats["per_decoder"].setdefault(name, dict(cases=0, ok=0, crashes=0, hangs=0, wrong_decodes=0))
        st["cases"] += 1
        signal.setitimer(signal.ITIMER_REAL, watchdog)
        try:
            res = fn(data, case)
            signal.setitimer(signal.ITIMER_REAL, 0)
            if not isinstance(res.status, Status):
                raise TypeError(f"status {res.status!r}")
            if res.ok:
                st["ok"] += 1
                if not same(res.values, case["target"]):
                    st["wrong_decodes"] += 1
                    stats["findings"].append(dict(kind="wrong", decoder=name, seed=case["name"], data=data.hex()[:400]))
        except Hang:
            st["hangs"] += 1
            stats["findings"].append(dict(kind="hang", decoder=name, seed=case["name"], data=data.hex()[:400]))
        except Exception as e:  # a crash: the decoder must return a status for any bytes
            signal.setitimer(signal.ITIMER_REAL, 0)
            st["crashes"] += 1
            stats["findings"].append(dict(kind="crash", decoder=name, seed=case["name"], error=repr(e)[:300],
                                          data=data.hex()[:400]))


def mutate(data: bytes, other: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, a, v in ops:
        if not b:
            b = bytearray(other[:8])
        i = a % len(b)
        if op == "flip":
            b[i] ^= (v % 255) + 1
        elif op == "set":
            b[i] = v % 256
        elif op == "truncate":
            del b[i:]
        elif op == "extend":
            b += bytes([v % 256]) * (1 + a % 17)
        elif op == "splice":
            j = a % max(len(other), 1)
            b[i:i + 16] = other[j:j + 16]
        elif op == "field16":           # header fields: shapes, versions, block_steps
            k = 4 + (a % 30) * 2
            if k + 2 <= len(b):
                struct.pack_into("<H", b, k, [0, 1, 0xFFFF, v % 65536][v % 4])
        elif op == "field32":           # sizes, block table entries, states
            k = 40 + (a % max(len(b) // 4, 1)) * 4
            if k + 4 <= len(b):
                struct.pack_into("<I", b, k, [0, 1, 0xFFFFFFFF, 65535, 65536, v][v % 6])
    return bytes(b)


def hypothesis_cases(cases, decs, n: int, stats, watchdog: float, seed: int):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    op = st.tuples(st.sampled_from(["flip", "set", "truncate", "extend", "splice", "field16", "field32"]),
                   st.integers(0, 1 << 20), st.integers(0, 1 << 16))

    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(cases) - 1), st.integers(0, len(cases) - 1), st.lists(op, min_size=1, max_size=3))
    def one(i, j, ops):
        run_case(mutate(cases[i]["data"], cases[j]["data"], ops), cases[i], decs, stats, watchdog)

    np.random.seed(seed)
    one()


def atheris_child(runs: int, out: str) -> None:
    """libFuzzer over the NumPy decoders: input = seed index byte + chunk bytes; a finding raises."""
    import atheris
    with atheris.instrument_imports():
        from reprise_gpu.codec import spec, spec2  # noqa: F401  (instrumented for coverage)
    cases = load_corpus()
    decs = decoders(gpu=False)
    stats = dict(cases=0, per_decoder={}, findings=[])

    def test_one(data: bytes):
        if not data:
            return
        run_case(data[1:], cases[data[0] % len(cases)], decs, stats, 10.0)
        json.dump(stats, open(out, "w"))            # libFuzzer exits without Python's atexit: write every case
        if stats["findings"]:
            raise RuntimeError(stats["findings"][-1])

    corpus = os.path.join(os.path.dirname(out), "atheris-corpus")
    os.makedirs(corpus, exist_ok=True)
    for k, c in enumerate(cases):
        open(os.path.join(corpus, f"seed{k}"), "wb").write(bytes([k]) + c["data"])
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=8192", "-seed=1", corpus], test_one)
    atheris.Fuzz()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2000, help="hypothesis cases for the NumPy decoders")
    ap.add_argument("--gpu-cases", type=int, default=150, help="of those, how many also go to the tensor/GPU decoders")
    ap.add_argument("--atheris-runs", type=int, default=3000)
    ap.add_argument("--watchdog", type=float, default=60.0, help="seconds before a decode counts as a hang")
    ap.add_argument("--out", default=None)
    ap.add_argument("--write-corpus", action="store_true")
    ap.add_argument("--atheris-child", default=None)
    a = ap.parse_args(argv)
    if a.atheris_child:
        atheris_child(a.atheris_runs, a.atheris_child)
        return 0
    if a.write_corpus:
        os.makedirs(CORPUS, exist_ok=True)
        for name in SEEDS:
            open(os.path.join(CORPUS, name + ".chunk"), "wb").write(encode_seed(name)[0])
        print(f"wrote {len(SEEDS)} seeds to {CORPUS}")
        return 0

    def on_alarm(signum, frame):
        raise Hang()
    signal.signal(signal.SIGALRM, on_alarm)
    cases = load_corpus()
    t0 = time.time()
    stats = dict(cases=0, per_decoder={}, findings=[])
    for c in cases:                                   # every seed decodes as it is, with every decoder
        run_case(c["data"], c, decoders(gpu=True), stats, a.watchdog)
    seeds_ok = {k: v["ok"] for k, v in stats["per_decoder"].items()}
    hypothesis_cases(cases, decoders(gpu=True), a.gpu_cases, stats, a.watchdog, 1)
    hypothesis_cases(cases, decoders(gpu=False), max(0, a.cases - a.gpu_cases), stats, a.watchdog, 2)
    ath = None
    if a.atheris_runs:
        tmp = os.path.join("/tmp", f"atheris-{os.getpid()}", "stats.json")
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        rc = subprocess.run([sys.executable, __file__, "--atheris-child", tmp, "--atheris-runs", str(a.atheris_runs)],
                            env=env, capture_output=True, text=True).returncode
        ath = json.load(open(tmp)) if os.path.exists(tmp) else dict(cases=0, findings=[dict(kind="crash", error="no stats")])
        ath["returncode"] = rc
    tot = {k: sum(d[k] for d in stats["per_decoder"].values()) for k in ("crashes", "hangs", "wrong_decodes")}
    if ath:
        for f in ath["findings"]:
            key = {"crash": "crashes", "hang": "hangs", "wrong": "wrong_decodes"}[f["kind"]]
            tot[key] += 1
    report = dict(cases=stats["cases"] + (ath["cases"] if ath else 0), **tot, seeds_decoded_ok=seeds_ok,
                  per_decoder=stats["per_decoder"], findings=stats["findings"][:20],
                  atheris=None if ath is None else {k: v for k, v in ath.items() if k != "per_decoder"},
                  seconds=round(time.time() - t0, 1), date=time.strftime("%Y-%m-%dT%H:%M:%S"))
    print(json.dumps({k: report[k] for k in ("cases", "crashes", "hangs", "wrong_decodes")}))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        json.dump(report, open(a.out, "w"), indent=1)
    return 1 if any(tot.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
