#!/usr/bin/env node
// The edge model side by side in one run (same model files, same prompts, this machine):
//   workerd            wrangler dev + bench/edge_model_worker.ts -> EdgeBackend -> onnxruntime-web wasm, 1 thread
//   node + ort-web     the same wasm and session sequence in Node (bench/edge_node_runner.mjs)
//   node + ort-node    onnxruntime-node's native CPU EP, 1 thread, same graphs ("node"), and the same
//                      weights in the MatMulNBits form ("node-nbits", .models/edge-nbits/, made here by
//                      scripts/convert_edge_model.py --form nbits when missing): its fastest form
// Measures time to first token and decode tokens/s (greedy), the workerd isolate's peak memory for
// light steps (prompt of N tokens, 64 new), edge KV chunk bytes per token, and the wasm codecs'
// decode MB/s inside workerd. Memory: V8's Runtime.getHeapUsage through the inspector, sampled every
// 100 ms (JS heap used, garbage included, plus ArrayBuffer backing stores), plus the byte length of
// every wasm memory at the end of the step (they never shrink, so that is their peak; ort's is a
// shared memory that V8's backing-store count leaves out).
//
//   node scripts/seed_local_storage.mjs
//   node bench/edge_bench.mjs [--model q8h] [--live] [--tokens 32] [--runs 2] [--light 64,256,512] [--only workerd,web,node]
//
// Writes bench/results/edge-cpu-<date>/ (edge.jsonl, README.md) and bench/results/summary/edge.json.
import { execFileSync, spawn } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { argmax, loadNodeModel } from "./edge_node_runner.mjs";
import { startWorkerd } from "./workerd_probe.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: opt } = parseArgs({
  options: {
    model: { type: "string", default: "q8h" },
    tokens: { type: "string", default: "32" },
    runs: { type: "string", default: "2" },
    light: { type: "string", default: "64,256,512" },
    only: { type: "string", default: "workerd,web,node,node-nbits" },
    child: { type: "string" },
    // also sample the live JS heap (a forced GC before each sample; slows the steps a lot)
    live: { type: "boolean", default: false },
    date: { type: "string", default: new Date().toISOString().slice(0, 10) },
  },
});
const TOKENS = Number(opt.tokens), RUNS = Number(opt.runs), LIGHT = opt.light.split(",").map(Number), NEW = 64;
const manifestKey = `models/smollm2-135m-instruct-${opt.model}.json`;
const manifestPath = join(root, ".models/edge", `smollm2-135m-instruct-${opt.model}.json`);
const nbitsManifestPath = join(root, ".models/edge-nbits", `smollm2-135m-instruct-${opt.model}.json`);
const MiB = (b) => b / 2 ** 20;
const RAW_F32_PER_TOKEN = 30 * 2 * 3 * 64 * 4; // the raw-f32 chunks edge turns stored before: 46,080 bytes

async function tokenizer() {
  const { Tokenizer } = await import(join(root, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs"));
  const tok = new Tokenizer(JSON.parse(readFileSync(join(root, ".models/hf/tokenizer.json"), "utf8")), {});
  return (s) => tok.encode(s, { add_special_tokens: false }).ids;
}

/** Speed prompts (as before: 42 and 230 tokens) and light-step prompts of exactly N tokens. */
async function prompts() {
  const enc = await tokenizer();
  const chat = (user) => `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n${user}<|im_end|>\n<|im_start|>assistant\n`;
  const story = "The lighthouse keeper climbed the stairs each evening, counting the steps and the ships. ".repeat(60);
  const light = (n) => {
    const head = enc(`<|im_start|>user\n${story}`), tail = enc(`<|im_end|>\n<|im_start|>assistant\n`);
    return head.slice(0, n - tail.length).concat(tail);
  };
  return {
    speed: [
      { name: "short", ids: enc(chat("Write a long story about a robot who learns to paint.")) },
      { name: "long", ids: enc(chat(`${story.slice(0, 1080)}\nContinue this story in detail.`)) },
    ],
    light: LIGHT.map((n) => ({ name: `light-${n}`, ids: light(n) })),
  };
}

function summary(p, stamps, start) {
  const n = stamps.length;
  return { prompt: p.name, promptTokens: p.ids.length, tokens: n, ttftMs: stamps[0] - start, decodeTokPerS: n > 1 ? (n - 1) / ((stamps[n - 1] - stamps[0]) / 1000) : null };
}

// ---------------------------------------------------------------- Node children (ort-web / ort-node)
async function child(runtime) {
  const nbits = runtime === "node-nbits";
  const m = await loadNodeModel({ runtime: nbits ? "node" : runtime, manifest: nbits ? nbitsManifestPath : manifestPath, threads: 1, level: "basic" });
  const out = [];
  for (const p of (await prompts()).speed)
    for (let r = 0; r < RUNS; r++) {
      const past = m.newPast(p.ids.length + TOKENS);
      const stamps = [];
      const start = performance.now();
      let { logits } = await m.forward(p.ids, past);
      for (let n = 0; n < TOKENS; n++) {
        stamps.push(performance.now());
        if (n + 1 < TOKENS) ({ logits } = await m.forward([argmax(logits)], past));
      }
      out.push(summary(p, stamps, start));
    }
  return { loadMs: m.loadMs, runs: out, wasmMiB: MiB(m.heapBytes()), maxRssMiB: MiB(process.resourceUsage().maxRSS * 1024) };
}

function runChild(kind) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [fileURLToPath(import.meta.url), "--child", kind, "--model", opt.model, "--tokens", String(TOKENS), "--runs", String(RUNS)], { stdio: ["ignore", "pipe", "inherit"] });
    let s = "";
    c.stdout.on("data", (d) => (s += d));
    c.on("exit", (code) => (code === 0 ? resolve(JSON.parse(s.trim().split("\n").pop())) : reject(new Error(`${kind} child exited ${code}`))));
  });
}

// ---------------------------------------------------------------- workerd
async function streamRun(w, p, maxTokens, sampleMemory) {
  let peakJs = 0, peakLive = 0, stop = false, samples = 0;
  const sampler = sampleMemory
    ? (async () => {
        while (!stop) {
          try {
            const h = await w.heapUsage();
            peakJs = Math.max(peakJs, h.usedSize + (h.backingStorageSize ?? 0));
            // What is live: garbage a real 128 MB isolate would collect before failing an allocation.
            if (opt.live) {
              await w.send("HeapProfiler.collectGarbage");
              const l = await w.heapUsage();
              peakLive = Math.max(peakLive, l.usedSize + (l.backingStorageSize ?? 0));
            }
            samples++;
          } catch {}
          await new Promise((r) => setTimeout(r, 100));
        }
      })()
    : null;
  const start = performance.now();
  const res = await fetch(`${w.base}/?model=${manifestKey}`, { method: "POST", body: JSON.stringify({ promptIds: p.ids, maxTokens }) });
  const stamps = [];
  let kvBytes = 0, buf = "";
  const dec = new TextDecoder();
  for await (const part of res.body) {
    buf += dec.decode(part, { stream: true });
    for (let nl; (nl = buf.indexOf("\n")) >= 0; ) {
      const ev = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      if (ev.type === "token") stamps.push(performance.now());
      if (ev.type === "kv") kvBytes = ev.bytes;
      if (ev.type === "error") throw new Error(ev.message);
    }
  }
  stop = true;
  await sampler;
  const heap = await (await fetch(`${w.base}/heap`)).json();
  const h = await w.heapUsage();
  peakJs = Math.max(peakJs, h.usedSize + (h.backingStorageSize ?? 0));
  return { ...summary(p, stamps, start), kvBytes, chunkTokens: p.ids.length + stamps.length - 1, memory: { jsPeakMiB: MiB(peakJs), jsLivePeakMiB: opt.live ? MiB(peakLive) : null, jsSamples: samples, ortWasmMiB: MiB(heap.ortHeapBytes), codecWasmMiB: MiB(heap.codecHeapBytes) } };
}

async function timed(fn) {
  const t0 = performance.now();
  const r = await fn();
  return { ms: performance.now() - t0, r };
}

/**
 * POST, retried once when the connection was closed under it: workerd closes a connection idle for
 * 5 s, undici may reuse it for the next request, and fetch does not retry a POST (EPIPE or "other
 * side closed"). These endpoints are idempotent, so a second try is safe.
 */
async function post(url, body) {
  try {
    return await fetch(url, { method: "POST", body });
  } catch (err) {
    if (!["EPIPE", "ECONNRESET", "UND_ERR_SOCKET"].includes(err?.cause?.code)) throw err;
    return await fetch(url, { method: "POST", body });
  }
}

async function codecRates(w) {
  // spec-v1: a realistic-size chunk from the Python reference (random KV, 2 layers x 3 heads x 256 tokens x 64)
  const dir = mkdtempSync(join(os.tmpdir(), "spec-"));
  execFileSync(join(root, "gpu-backend/.venv/bin/python"), ["-c", `
import numpy as np, sys
from reprise_gpu.codec.spec import encode_chunk
rng = np.random.default_rng(0); L, KH, T, D = 2, 3, 256, 64
scale = np.exp(rng.normal(0, 1, (L, 2, KH, 1, D)))
x = (rng.standard_normal((L, 2, KH, T, D)) * scale).astype(np.float32)
pred = (x + 0.05 * scale * rng.standard_normal(x.shape)).astype(np.float32)
u = x.view(np.uint32).astype(np.uint64); bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
open(sys.argv[1] + "/chunk", "wb").write(encode_chunk(bits, pred, fingerprint="bench", token_start=0) + pred.tobytes())
`, dir], { cwd: join(root, "gpu-backend") });
  const body = readFileSync(join(dir, "chunk"));
  const base = await timed(async () => (await post(`${w.base}/codec?reps=0`)).json());
  const edge = await timed(async () => (await post(`${w.base}/codec?reps=3`)).json());
  const edgeMBps = (3 * edge.r.values * 2) / 1e6 / ((edge.ms - base.ms) / 1000);
  const q = "L=2&KH=3&D=64&t0=0&t1=256&fp=bench";
  const s0 = await timed(async () => (await post(`${w.base}/spec?reps=0&${q}`, body)).json());
  const s1 = await timed(async () => (await post(`${w.base}/spec?reps=3&${q}`, body)).json());
  return {
    edgeKv: { status: edge.r.status, MBps: edgeMBps, values: edge.r.values },
    specV1: { status: s1.r.status, MBps: (3 * s1.r.values * 2) / 1e6 / ((s1.ms - s0.ms) / 1000), values: s1.r.values },
  };
}

async function workerd() {
  const w = await startWorkerd({ entry: "bench/edge_model_worker.ts", port: 8820, inspectorPort: 9320 });
  try {
    const t0 = performance.now();
    const lr = await fetch(`${w.base}/load?model=${manifestKey}`);
    if (!lr.ok) throw new Error(`/load: ${lr.status} ${await lr.text()}`);
    const load = await lr.json();
    const loadMs = performance.now() - t0;
    const afterLoad = { ...(await (await fetch(`${w.base}/heap`)).json()), js: await w.heapUsage() };
    const { speed, light } = await prompts();
    const runs = [];
    for (const p of speed) for (let r = 0; r < RUNS; r++) runs.push(await streamRun(w, p, TOKENS, false));
    const steps = [];
    for (const p of light) steps.push(await streamRun(w, p, NEW, true));
    let codec;
    try {
      codec = await codecRates(w);
    } catch (err) {
      codec = { error: String(err), log: w.log().slice(-3000) };
      console.error("codec rates failed:", err, w.log().slice(-3000));
    }
    return { loadMs, producer: load.producer, modelBytes: load.modelBytes, afterLoad, runs, steps, codec, bundleLog: w.bundleLog };
  } finally {
    await w.stop();
  }
}

// ---------------------------------------------------------------- main
if (opt.child) {
  console.log(JSON.stringify(await child(opt.child)));
  process.exit(0);
}
const only = new Set(opt.only.split(","));
const host = `${os.cpus()[0].model}, ${os.cpus().length} cores, ${Math.round(MiB(os.totalmem()))} MiB`;
const setup = { date: new Date().toISOString(), host, load: os.loadavg(), node: process.version, model: opt.model, tokens: TOKENS, runs: RUNS };
const results = {};
if (only.has("workerd")) results.workerd = await workerd();
if (only.has("web")) results.web = await runChild("web");
if (only.has("node")) results.node = await runChild("node");
if (only.has("node-nbits")) {
  if (!existsSync(nbitsManifestPath))
    execFileSync(join(root, "gpu-backend/.venv/bin/python"), [join(root, "scripts/convert_edge_model.py"), "--out", join(root, ".models"), "--form", "nbits", "--variants", opt.model, "--skip-verify"], { stdio: "inherit" });
  results["node-nbits"] = await runChild("node-nbits");
}
const out = join(root, `bench/results/edge-cpu-${opt.date}`);
mkdirSync(out, { recursive: true });
for (const [runtime, r] of Object.entries(results)) appendFileSync(join(out, "edge.jsonl"), JSON.stringify({ setup, runtime, ...r, bundleLog: undefined }) + "\n");

const best = (runs, name, key, pick) => pick(...runs.filter((x) => x.prompt === name).map((x) => x[key]));
const decode = (r) => (r ? best(r.runs, "short", "decodeTokPerS", Math.max) : null);
const ttft = (r) => (r ? best(r.runs, "short", "ttftMs", Math.min) : null);
const bestOf = (pick, ...xs) => (xs.some((x) => x != null) ? pick(...xs.filter((x) => x != null)) : null);
const peak = (s) => s.memory.jsPeakMiB + s.memory.ortWasmMiB + s.memory.codecWasmMiB;
const wd = results.workerd;
const step512 = wd?.steps.find((s) => s.promptTokens === 512);
const summaryJson = {
  generated_by: "bench/edge_bench.mjs", date: setup.date, host, model: opt.model,
  // the onnxruntime-node peer at its best: the faster of its two graph forms
  edge_decode_tok_s_workerd: decode(wd), edge_decode_tok_s_ort_node: bestOf(Math.max, decode(results.node), decode(results["node-nbits"])),
  edge_decode_tok_s_ort_node_same_graphs: decode(results.node), edge_decode_tok_s_ort_node_nbits: decode(results["node-nbits"]),
  edge_decode_tok_s_ort_web_node: decode(results.web),
  ttft_ms_workerd: ttft(wd), ttft_ms_ort_node: bestOf(Math.min, ttft(results.node), ttft(results["node-nbits"])),
  ttft_ms_ort_node_same_graphs: ttft(results.node), ttft_ms_ort_node_nbits: ttft(results["node-nbits"]), ttft_ms_ort_web_node: ttft(results.web),
  peak_isolate_MB_512: step512 ? (peak(step512) * 2 ** 20) / 1e6 : null,
  peak_isolate_MiB_512: step512 ? peak(step512) : null,
  edge_chunk_bytes_per_token: step512 ? step512.kvBytes / step512.chunkTokens : null,
  edge_chunk_bytes_per_token_before: RAW_F32_PER_TOKEN,
  wasm_decode_MBps: wd?.codec.edgeKv?.MBps ?? null,
  wasm_decode_MBps_spec_v1: wd?.codec.specV1?.MBps ?? null,
};
mkdirSync(join(root, "bench/results/summary"), { recursive: true });
writeFileSync(join(root, "bench/results/summary/edge.json"), JSON.stringify(summaryJson, null, 1) + "\n");
console.log(JSON.stringify(summaryJson, null, 1));
// README.md of the run: command, machine, the side-by-side speed table and the light steps
const md = [`# Edge model side by side (${setup.date.slice(0, 10)})`, "",
  `- Command: \`node bench/edge_bench.mjs ${process.argv.slice(2).join(" ")}\``, `- Host: ${host}, Node ${process.version}, load average at start ${setup.load.map((x) => x.toFixed(2)).join(" ")}`,
  `- Model: ${opt.model} (manifest .models/edge/smollm2-135m-instruct-${opt.model}.json); greedy, ${TOKENS} tokens, best of ${RUNS}; raw results in edge.jsonl`, "",
  "| runtime | graphs | TTFT short (ms) | decode short (tok/s) | TTFT long (ms) | decode long (tok/s) |", "| --- | --- | ---: | ---: | ---: | ---: |"];
const graphsOf = { workerd: "dequant", web: "dequant", node: "dequant", "node-nbits": "nbits" };
for (const [rt, r] of Object.entries(results)) {
  const cell = (name, key, pick) => { const v = best(r.runs, name, key, pick); return Number.isFinite(v) ? (key === "ttftMs" ? Math.round(v) : v.toFixed(2)) : "-"; };
  md.push(`| ${rt} | ${graphsOf[rt]} | ${cell("short", "ttftMs", Math.min)} | ${cell("short", "decodeTokPerS", Math.max)} | ${cell("long", "ttftMs", Math.min)} | ${cell("long", "decodeTokPerS", Math.max)} |`);
}
if (wd) {
  md.push("", "| light step | TTFT (ms) | decode (tok/s) | JS heap + ArrayBuffers peak (MiB) | ort wasm (MiB) | codec wasm (MiB) | isolate peak (MiB / MB) | chunk (bytes/token) |");
  md.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const s of wd.steps)
    md.push(`| ${s.promptTokens} + ${NEW} | ${Math.round(s.ttftMs)} | ${s.decodeTokPerS?.toFixed(2)} | ${s.memory.jsPeakMiB.toFixed(1)} (${s.memory.jsSamples} samples) | ${s.memory.ortWasmMiB.toFixed(1)} | ${s.memory.codecWasmMiB.toFixed(1)} | ${peak(s).toFixed(1)} / ${((peak(s) * 2 ** 20) / 1e6).toFixed(1)} | ${Math.round(s.kvBytes / s.chunkTokens)} |`);
}
md.push("", "summary/edge.json of this run:", "", "```json", JSON.stringify(summaryJson, null, 1), "```", "");
writeFileSync(join(out, "README.md"), md.join("\n"));
console.log(md.join("\n"));
