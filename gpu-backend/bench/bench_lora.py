"""Multi-LoRA serving throughput vs the number of distinct adapters, side by side with the peers.

    python bench/bench_lora.py --model llama3-8b [--out DIR]        # synthetic 8B shape, random weights
    python bench/bench_lora.py --model smollm2-135m [--out DIR]     # the real SmolLM2 weights
    python bench/bench_lora.py --model tiny --quick                 # CPU smoke run of every code path

Workload: R requests (random prompt ids, P tokens, G generated with ignore_eos), all queued at once into
the engine (continuous batching, decode in CUDA graphs). Request i uses adapter k with power-law
popularity p(k) ~ 1 / (k + 1)^alpha over N adapters; adapter k's rank is drawn from --ranks, its targets
are --modules; weights are random and non-zero. Adapters start on the host (pinned pages) and load on
demand into the paged pool while the batch runs. Variants in the same process, same GPU:
    base     the same requests without adapters (the upper bound)
    lora     our path (SGMV prefill, sorted token tiles for decode), for each N
    lora-bgmv the same with the previous decode kernels (BGMV, one token per program), for --old-kernels N
    naive    per-adapter gather + matmul loop (ops mode "reference", eager), small N
    peft     HF transformers + PEFT `generate(adapter_names=...)`, one static batch, small request count
    merged   one adapter merged into the weights in place (then restored bit for bit)
Then: merged-weights match (a mixed batch of adapters vs each adapter merged in, greedy tokens; `match`
from a float32 engine, where LoRA and merging agree exactly; `bf16_same` counts the BF16 engine's
prompts that agree anyway: BF16 rounds W + sBA once per weight, LoRA each projection's output) and cold
loads by rank: host -> GPU (pool load) and storage -> GPU (HTTP GET of the safetensors on localhost,
parse, check, pack, load; the device has no R2). Adapters of equal rank share host tensors (a bank of
--bank per rank) so 2048 of them fit in host memory; each still gets its own pages and its own load.
Writes lora_<model>.jsonl under --out; bench/summarize_lora.py builds the summary and the plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import Config, get_model_args  # noqa: E402
from reprise_gpu.engine.detokenizer import ByteTokenizer  # noqa: E402
from reprise_gpu.engine.llm_engine import LLMEngine  # noqa: E402
from reprise_gpu.engine.sampling import SamplingParams  # noqa: E402
from reprise_gpu.layers import ops  # noqa: E402
from reprise_gpu.lora.merge import merged_state_dict  # noqa: E402
from reprise_gpu.lora.pool import pack  # noqa: E402
from reprise_gpu.lora.registry import LoraAdapter, module_shapes, parse_adapter, tensor_name  # noqa: E402

MODULE_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
                "down": "down_proj"}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_adapter(args, r: int, modules, seed: int, key: str) -> LoraAdapter:
    """Random, non-zero: A ~ N(0, 1/in), B ~ N(0, 1/(4 r)); drawn on the GPU if there is one (fast at 8B)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(seed)
    shapes = module_shapes(args)
    rnd = lambda *s: torch.randn(*s, generator=g, device=dev).cpu()  # noqa: E731
    a = {m: rnd(args.n_layers, r, shapes[m][0]) / shapes[m][0] ** 0.5 for m in modules}
    b = {m: rnd(args.n_layers, shapes[m][1], r) * (0.5 / r ** 0.5) for m in modules}
    return LoraAdapter(key, r, 2.0, tuple(modules), a, b)


def peft_files(ad: LoraAdapter, args) -> tuple[bytes, bytes]:
    """The adapter as PEFT's two files (what storage holds)."""
    from safetensors.torch import save
    cfg = {"peft_type": "LORA", "r": ad.rank, "lora_alpha": ad.scaling * ad.rank, "target_modules": list(ad.modules),
           "bias": "none"}
    t = {}
    for m in ad.modules:
        for i in range(args.n_layers):
            t[tensor_name(i, m, "A")] = ad.a[m][i].to(torch.bfloat16).contiguous()
            t[tensor_name(i, m, "B")] = ad.b[m][i].to(torch.bfloat16).contiguous()
    return json.dumps(cfg).encode(), save(t)


class Bench:
    def __init__(self, a):
        self.a, self.args = a, get_model_args(a.model)
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.cfg = Config(model=a.model, device=dev, num_kv_blocks=a.kv_blocks, max_num_seqs=a.max_num_seqs,
                          max_num_batched_tokens=max(2048, a.max_num_seqs), prefill_chunk_size=512,
                          max_queue=a.requests + 8, max_loras=a.max_loras, lora_host_bytes=1 << 40,
                          block_size=16)
        self.engine = LLMEngine(self.cfg, tokenizer=ByteTokenizer())           # random ids: no text needed
        self.modules = [MODULE_NAMES[m] for m in a.modules.split(",")]
        self.ranks = [int(r) for r in a.ranks.split(",")]
        pe, on_cuda = self.engine.lora_pool.page_elems, dev == "cuda"
        self.bank = {r: [pack(random_adapter(self.args, r, self.modules, 1000 * r + j, f"bank-{r}-{j}"), self.args, pe,
                              self.cfg.torch_dtype, pin=on_cuda) for j in range(a.bank)] for r in self.ranks}
        self.out = open(os.path.join(a.out, f"lora_{a.model}.jsonl"), "a")
        self.meta = dict(model=a.model, device=torch.cuda.get_device_name() if on_cuda else "cpu",
                         torch=torch.__version__, date=time.strftime("%Y-%m-%d"), requests=a.requests,
                         prompt_len=a.prompt_len, gen=a.gen, max_num_seqs=a.max_num_seqs, modules=a.modules,
                         ranks=a.ranks, zipf=a.zipf)

    def log(self, **row):
        row = {**self.meta, **row}
        self.out.write(json.dumps(row) + "\n")
        self.out.flush()
        print(json.dumps({k: v for k, v in row.items() if k not in self.meta}), flush=True)

    def adapter(self, k: int):
        r = self.ranks[(k * 7919) % len(self.ranks)]
        return dataclasses.replace(self.bank[r][k % len(self.bank[r])], key=f"a{k}-r{r}")

    def workload(self, n_adapters: int | None, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, self.args.vocab_size, self.a.prompt_len).tolist() for _ in range(n)]
        if not n_adapters:
            return prompts, [None] * n
        p = 1.0 / np.arange(1, n_adapters + 1) ** self.a.zipf
        ks = rng.choice(n_adapters, size=n, p=p / p.sum())
        return prompts, [self.adapter(int(k)) for k in ks]

    def clear_pool(self, eng=None):
        pool = (eng or self.engine).lora_pool
        while pool._evict_one():
            pass

    def run(self, prompts, adapters, max_tokens=None, eng=None):
        """-> (tokens/s, p50 and p99 time per output token in ms, completions) through the engine."""
        eng, g = eng or self.engine, max_tokens or self.a.gen
        params = SamplingParams(max_tokens=g, temperature=0.0, ignore_eos=True)
        self.clear_pool(eng)
        sync()
        t0 = time.perf_counter()
        seqs = [eng.add_request(p, params, adapter=ad) for p, ad in zip(prompts, adapters)]
        first, last = {}, {}
        while eng.has_work():
            outs = eng.step()
            now = time.perf_counter()
            for o in outs:
                first.setdefault(o.seq.seq_id, now)
                last[o.seq.seq_id] = now
        sync()
        wall = time.perf_counter() - t0
        tpot = [(last[s.seq_id] - first[s.seq_id]) / (g - 1) * 1e3 for s in seqs if g > 1]
        total = sum(s.num_completion_tokens for s in seqs)
        return total / wall, float(np.percentile(tpot, 50)), float(np.percentile(tpot, 99)), \
            [s.completion_token_ids for s in seqs]

    # ---- variants ---------------------------------------------------------------------------------
    def throughput(self):
        a = self.a
        self.run(*self.workload(8, 16, seed=99), max_tokens=4)        # compile the prefill kernels
        self.run(*self.workload(0, a.requests))                        # and every shape the base run meets
        tps, p50, p99, _ = self.run(*self.workload(0, a.requests))
        self.log(variant="base", adapters=0, tokens_per_s=tps, p50_tpot_ms=p50, p99_tpot_ms=p99)
        for n in a.adapters:
            tps, p50, p99, _ = self.run(*self.workload(n, a.requests))
            pool = self.engine.lora_pool
            self.log(variant="lora", adapters=n, tokens_per_s=tps, p50_tpot_ms=p50, p99_tpot_ms=p99,
                     distinct=len({ad.key for ad in self.workload(n, a.requests)[1]}), loads=pool.loads,
                     decode_kernels="tiles")
        if a.old_kernels:
            self.old_kernels()

    def old_kernels(self):
        """The same LoRA runs, one lever off at a time: the tiles with every projection's kernels launched
        (no attention-only graphs), then the BGMV decode kernels (their own LoRA graphs, all projections);
        then the tiles' graphs back."""
        a, runner = self.a, self.engine.runner
        tiles_graphs, attn_graphs = dict(runner.lora_graphs), dict(runner.lora_attn_graphs)
        try:
            runner.lora_attn_graphs = {}
            for n in a.old_kernels:
                tps, p50, p99, _ = self.run(*self.workload(n, a.requests))
                self.log(variant="lora-allmod", adapters=n, tokens_per_s=tps, p50_tpot_ms=p50, p99_tpot_ms=p99,
                         decode_kernels="tiles, every projection launched")
            with ops.lora_decode("bgmv"):
                if runner.graphs:
                    runner.capture_graphs(None, lora=True)
                runner.lora_attn_graphs = {}
                for n in a.old_kernels:
                    tps, p50, p99, _ = self.run(*self.workload(n, a.requests))
                    self.log(variant="lora-bgmv", adapters=n, tokens_per_s=tps, p50_tpot_ms=p50, p99_tpot_ms=p99,
                             distinct=len({ad.key for ad in self.workload(n, a.requests)[1]}),
                             decode_kernels="bgmv")
        finally:
            runner.lora_graphs, runner.lora_attn_graphs = tiles_graphs, attn_graphs

    def naive(self):
        """The per-adapter loop (the float32 references, eager: no LoRA graphs)."""
        a = self.a
        runner, graphs, attn = self.engine.runner, self.engine.runner.lora_graphs, self.engine.runner.lora_attn_graphs
        for n in a.naive:
            runner.lora_graphs = runner.lora_attn_graphs = {}
            try:
                with ops.kernel_mode("reference"):
                    tps, p50, p99, _ = self.run(*self.workload(n, a.naive_requests))
            finally:
                runner.lora_graphs, runner.lora_attn_graphs = graphs, attn
            self.log(variant="naive", adapters=n, tokens_per_s=tps, p50_tpot_ms=p50, p99_tpot_ms=p99,
                     requests_run=a.naive_requests)

    def peft(self):
        """HF + PEFT on the same weights (no copy): one static batch per adapter count."""
        from peft import LoraConfig, PeftModel
        from bench_decode import hf_model
        a, args = self.a, self.args
        model = hf_model(args, self.engine.model.state_dict(), torch.device(self.cfg.device))
        for n in a.peft:
            prompts, ads = self.workload(n, a.peft_requests, seed=5)
            names, first = {}, None
            pm = None
            for ad in ads:
                if ad.key in names:
                    continue
                cfg = LoraConfig(r=ad.rank, lora_alpha=ad.scaling * ad.rank, target_modules=list(ad.modules),
                                 init_lora_weights=True)
                name = f"n{len(names)}"
                if pm is None:
                    pm = PeftModel(model, cfg, adapter_name=name)
                else:
                    pm.add_adapter(name, cfg)
                names[ad.key] = name
            pm = pm.to(device=self.cfg.device, dtype=torch.bfloat16).eval()
            ids = torch.tensor(prompts, device=self.cfg.device)
            kw = dict(max_new_tokens=a.peft_gen, min_new_tokens=a.peft_gen, do_sample=False, pad_token_id=0,
                      adapter_names=[names[ad.key] for ad in ads], attention_mask=torch.ones_like(ids))
            with torch.inference_mode():
                pm.generate(ids[:2], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2,
                                        "adapter_names": kw["adapter_names"][:2], "attention_mask": kw["attention_mask"][:2]})
                sync()
                t0 = time.perf_counter()
                pm.generate(ids, **kw)
                sync()
            wall = time.perf_counter() - t0
            self.log(variant="peft", adapters=n, tokens_per_s=len(prompts) * a.peft_gen / wall,
                     p50_tpot_ms=wall / a.peft_gen * 1e3, p99_tpot_ms=wall / a.peft_gen * 1e3,
                     requests_run=len(prompts), gen_run=a.peft_gen, distinct=len(names))
            model = pm.unload()                       # back to the plain model (its weights untouched)
            del pm

    def merged(self):
        """Merged-weights match in a mixed batch (BF16 engine: agreement count, and the merged throughput;
        then a float32 engine: exact greedy-token equality expected); weights restored exactly after."""
        a = self.a
        ads = [self.adapter(k) for k in range(a.match_adapters)]
        bf16, _ = self._match(self.engine, ads, throughput_of=ads[0])
        del _
        cfg32 = dataclasses.replace(self.cfg, dtype="float32", num_kv_blocks=min(self.cfg.num_kv_blocks, 2048),
                                    max_num_seqs=16, max_loras=len(ads) + 2, max_queue=64)
        eng32 = LLMEngine(cfg32, tokenizer=ByteTokenizer())
        try:
            pe = eng32.lora_pool.page_elems
            ads32 = [pack(self._dense(ad, "cpu"), self.args, pe, torch.float32, pin=self.cfg.device == "cuda")
                     for ad in ads]
            f32, detail = self._match(eng32, ads32)
        finally:
            del eng32
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.log(variant="merged_match", adapters=len(ads), match=bool(f32) and all(f32), prompts=len(f32),
                 dtype="float32", bf16_same=sum(bf16), bf16_prompts=len(bf16), detail=detail)

    def _dense(self, ad, dev) -> LoraAdapter:
        """The packed adapter's weights, float32 on `dev` (its BF16 values exactly)."""
        from reprise_gpu.lora.pool import dense
        A, B = dense(ad, self.args)
        return LoraAdapter(ad.key, ad.rank, ad.scaling, ad.modules, {m: t.to(dev) for m, t in A.items()},
                           {m: t.to(dev) for m, t in B.items()})

    def _match(self, eng, ads, throughput_of=None):
        """-> ([same greedy tokens, per prompt], detail): LoRA in one mixed batch vs each adapter merged into
        eng's weights in turn (in place, restored bit for bit). With throughput_of, also logs the merged
        throughput with that adapter merged."""
        a, args = self.a, self.args
        rng = np.random.default_rng(7)
        prompts = [rng.integers(0, args.vocab_size, 24 + 5 * i).tolist() for i in range(2 * len(ads) + 2)]
        which = [None, None] + [ads[i % len(ads)] for i in range(2 * len(ads))]
        *_, got = self.run(prompts, which, max_tokens=a.match_tokens, eng=eng)
        sd = {k: v for k, v in eng.model.state_dict().items() if "proj" in k}
        saved = {k: v.clone() for k, v in sd.items()}
        matches, detail = [], []
        try:
            for ad in [None, *ads]:
                if ad is not None:
                    for k, v in merged_state_dict(saved, self._dense(ad, self.cfg.device), args).items():
                        sd[k].copy_(v)
                idx = [i for i, w in enumerate(which) if w is ad]
                *_, want = self.run([prompts[i] for i in idx], [None] * len(idx), max_tokens=a.match_tokens, eng=eng)
                for i, w in zip(idx, want):
                    matches.append(got[i] == w)
                    detail.append(dict(adapter=None if ad is None else ad.key, same=got[i] == w,
                                       first_diff=next((j for j, (x, y) in enumerate(zip(got[i], w)) if x != y), None)))
                if throughput_of is not None and ad is throughput_of:
                    tps, p50, p99, _ = self.run(*self.workload(0, a.requests), eng=eng)
                    self.log(variant="merged", adapters=1, tokens_per_s=tps, p50_tpot_ms=p50, p99_tpot_ms=p99)
                for k in sd:
                    sd[k].copy_(saved[k])
        finally:
            for k in sd:
                sd[k].copy_(saved[k])
        return matches, detail

    def cold_loads(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import urllib.request
        pool, args, files = self.engine.lora_pool, self.args, {}

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *x):
                pass
        srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_port}"
        try:
            for r in self.ranks:
                ad = random_adapter(args, r, self.modules, 5 + r, f"cold-{r}")
                c, w = peft_files(ad, args)
                files[f"/{r}/c"], files[f"/{r}/w"] = c, w
                host, store = [], []
                for rep in range(3):
                    p = dataclasses.replace(self.bank[r][0], key=f"cold-{r}-{rep}")
                    self.clear_pool()
                    sync()
                    t0 = time.perf_counter()
                    while not pool.ready(p):
                        pass
                    sync()
                    host.append((time.perf_counter() - t0) * 1e3)
                    self.clear_pool()
                    sync()
                    t0 = time.perf_counter()
                    cb = urllib.request.urlopen(f"{base}/{r}/c").read()
                    wb = urllib.request.urlopen(f"{base}/{r}/w").read()
                    pk = pack(parse_adapter(cb, wb, args, self.a.model), args, pool.page_elems, self.cfg.torch_dtype,
                              pin=torch.cuda.is_available())
                    pk = dataclasses.replace(pk, key=f"cold-s-{r}-{rep}")
                    while not pool.ready(pk):
                        pass
                    sync()
                    store.append((time.perf_counter() - t0) * 1e3)
                self.log(variant="cold_load", rank=r, host_to_gpu_ms=float(np.median(host[1:])),
                         storage_to_gpu_ms=float(np.median(store[1:])), adapter_bytes=len(w),
                         pages=self.bank[r][0].n_pages)
        finally:
            srv.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--adapters", default="1,8,64,512,1024,2048")
    p.add_argument("--naive", default="1,8,64")
    p.add_argument("--old-kernels", default="", help="adapter counts to rerun with the BGMV decode kernels")
    p.add_argument("--peft", default="1,64,1024")
    p.add_argument("--ranks", default="8,16,32,64,128")
    p.add_argument("--modules", default="q,k,v,o")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--naive-requests", type=int, default=32)
    p.add_argument("--peft-requests", type=int, default=64)
    p.add_argument("--peft-gen", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-loras", type=int, default=256)
    p.add_argument("--kv-blocks", type=int, default=24000)
    p.add_argument("--bank", type=int, default=2)
    p.add_argument("--match-adapters", type=int, default=6)
    p.add_argument("--match-tokens", type=int, default=16)
    p.add_argument("--steps", default="lora,merged,cold,naive,peft")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    a = p.parse_args()
    if a.quick:
        a.requests, a.naive_requests, a.peft_requests, a.peft_gen, a.gen, a.prompt_len = 12, 6, 4, 3, 4, 8
        a.max_num_seqs, a.kv_blocks, a.max_loras, a.bank, a.match_adapters, a.match_tokens = 8, 512, 8, 1, 2, 4
        a.adapters, a.naive, a.peft, a.old_kernels = "1,8", "2", "2", "8"
    a.adapters, a.naive, a.peft, a.old_kernels = ([int(x) for x in s.split(",") if x]
                                                  for s in (a.adapters, a.naive, a.peft, a.old_kernels))
    os.makedirs(a.out, exist_ok=True)
    b = Bench(a)
    steps = dict(lora=b.throughput, naive=b.naive, peft=b.peft, merged=b.merged, cold=b.cold_loads)
    for s in a.steps.split(","):
        t0 = time.perf_counter()
        try:
            steps[s]()
        except Exception as e:           # one failing step never hides the others' results
            import traceback
            traceback.print_exc()
            b.log(variant="error", step=s, error=repr(e)[:500])
        print(f"== step {s}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
