#!/usr/bin/env node
// Edge model speed and memory: time to first token and decode tokens/s of the int4 ONNX model
//   - in workerd (wrangler dev + bench/edge_model_worker.ts -> EdgeBackend -> onnxruntime-web wasm, 1 thread)
//   - in Node with onnxruntime-web (same wasm, 1 thread): what workerd adds on top of the wasm itself
//   - in Node with onnxruntime-node (native CPU EP, 1 and 2 threads): the same graph natively
// and peak memory: VmHWM of the workerd process before and after the model is loaded, max RSS of
// each Node child. Greedy decoding, no EOS stop in the Node loops (the Backend stops at EOS, so its
// prompts are chosen to run long).
//
//   node scripts/seed_local_storage.mjs          # the model in .state's R2, for wrangler dev
//   node bench/edge_model_bench.mjs [--tokens 32] [--runs 2] [--only workerd,web,node]
//
// Appends one JSON line per measurement to bench/results/edge-model.jsonl and prints a Markdown table.
import { execFileSync, spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: opt } = parseArgs({
  options: {
    tokens: { type: "string", default: "32" },
    runs: { type: "string", default: "2" },
    only: { type: "string", default: "workerd,web,node" },
    child: { type: "string" },
    threads: { type: "string", default: "1" },
    port: { type: "string", default: String(20000 + Math.floor(Math.random() * 20000)) },
  },
});
const TOKENS = Number(opt.tokens), RUNS = Number(opt.runs);
const MODEL_KEY = /^EDGE_MODEL_KEY\s*=\s*"([^"]+)"/m.exec(readFileSync(join(root, "wrangler.toml"), "utf8"))[1];
const ONNX = join(root, ".models/onnx", MODEL_KEY.split("/").pop());
const MB = (b) => Math.round(b / 2 ** 20);

async function prompts() {
  const { Tokenizer } = await import(join(root, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs"));
  const tok = new Tokenizer(JSON.parse(readFileSync(join(root, ".models/hf/tokenizer.json"), "utf8")), {});
  const chat = (user) =>
    `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n${user}<|im_end|>\n<|im_start|>assistant\n`;
  const enc = (s) => tok.encode(s, { add_special_tokens: false }).ids;
  const story = "The lighthouse keeper climbed the stairs each evening, counting the steps and the ships. ".repeat(12);
  return [
    { name: "short", ids: enc(chat("Write a long story about a robot who learns to paint.")) },
    { name: "long", ids: enc(chat(`${story}\nContinue this story in detail.`)) },
  ];
}

// ---------------------------------------------------------------- Node children (ort-web / ort-node)
async function child(kind, threads) {
  const ort = kind === "web" ? await import(join(root, "node_modules/onnxruntime-web/dist/ort.node.min.mjs")) : await import(join(root, "node_modules/onnxruntime-node/dist/index.js"));
  const mod = ort.default ?? ort;
  if (kind === "web") mod.env.wasm.numThreads = 1;
  const t0 = performance.now();
  const session =
    kind === "web"
      ? await mod.InferenceSession.create(readFileSync(ONNX), { externalData: [{ path: ONNX.split("/").pop() + ".data", data: new Uint8Array(readFileSync(ONNX + ".data")) }] })
      : await mod.InferenceSession.create(ONNX, { intraOpNumThreads: threads, interOpNumThreads: 1 });
  const loadMs = performance.now() - t0;
  const out = [];
  for (const p of await prompts()) {
    for (let r = 0; r < RUNS; r++) {
      let past = {};
      for (let i = 0; i < 30; i++) for (const kv of ["key", "value"]) past[`past_key_values.${i}.${kv}`] = new mod.Tensor("float32", new Float32Array(0), [1, 3, 0, 64]);
      let ids = p.ids, pos = 0;
      const stamps = [];
      const start = performance.now();
      for (let n = 0; n < TOKENS; n++) {
        const feeds = { input_ids: new mod.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]), position_ids: new mod.Tensor("int64", BigInt64Array.from(ids, (_, k) => BigInt(pos + k)), [1, ids.length]), ...past };
        const res = await session.run(feeds);
        const logits = res.logits.data;
        let best = 0;
        for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
        stamps.push(performance.now());
        pos += ids.length;
        ids = [best];
        past = {};
        for (let i = 0; i < 30; i++) for (const kv of ["key", "value"]) past[`past_key_values.${i}.${kv}`] = res[`present.${i}.${kv}`];
      }
      out.push(summary(p, stamps, start));
    }
  }
  return { loadMs, runs: out, maxRssMB: MB(process.resourceUsage().maxRSS * 1024) };
}

function summary(p, stamps, start) {
  const n = stamps.length;
  return { prompt: p.name, promptTokens: p.ids.length, tokens: n, ttftMs: stamps[0] - start, decodeTokPerS: n > 1 ? (n - 1) / ((stamps[n - 1] - stamps[0]) / 1000) : null };
}

function runChild(kind, threads) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [fileURLToPath(import.meta.url), "--child", kind, "--threads", String(threads), "--tokens", String(TOKENS), "--runs", String(RUNS)], { stdio: ["ignore", "pipe", "inherit"] });
    let s = "";
    c.stdout.on("data", (d) => (s += d));
    c.on("exit", (code) => (code === 0 ? resolve(JSON.parse(s.trim().split("\n").pop())) : reject(new Error(`${kind} child exited ${code}`))));
  });
}

// ---------------------------------------------------------------- workerd (wrangler dev)
function procStatus(pid) {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(s)?.[1] ?? 0) * 1024;
  return { rssMB: MB(kb("VmRSS")), hwmMB: MB(kb("VmHWM")) };
}

/** workerd processes under `ancestor` (wrangler dev runs two: a proxy and the one that runs the Worker). */
function workerdPids(ancestor) {
  const parent = (pid) => Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[1]);
  const out = [];
  for (const d of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      if (!readFileSync(`/proc/${d}/cmdline`, "utf8").includes("workerd")) continue;
      for (let p = Number(d); p > 1; p = parent(p)) if (p === ancestor) out.push(Number(d));
    } catch {}
  }
  return out;
}

async function streamRun(base, p, r) {
  const start = performance.now();
  const res = await fetch(base, { method: "POST", body: JSON.stringify({ promptIds: p.ids, maxTokens: TOKENS }) });
  const stamps = [];
  let buf = "";
  const dec = new TextDecoder();
  for await (const part of res.body) {
    buf += dec.decode(part, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith("{")) throw new Error(line);
      const ev = JSON.parse(line);
      if (ev.type === "token") stamps.push(performance.now());
      if (ev.type === "error") throw new Error(ev.message);
    }
  }
  if (stamps.length === 0) throw new Error("no tokens");
  return summary(p, stamps, start);
}

async function workerd() {
  const port = opt.port;
  // Bundle once and serve the bundle (--no-bundle): wrangler dev would otherwise restart the Worker
  // whenever a source file changes, and this working tree is shared.
  const out = mkdtempSync(join(os.tmpdir(), "edge-bench-"));
  execFileSync(join(root, "node_modules/.bin/wrangler"), ["deploy", "--dry-run", "--outdir", out, "bench/edge_model_worker.ts"], { cwd: root, stdio: "ignore" });
  const args = ["dev", join(out, "edge_model_worker.js"), "--config", "wrangler.toml", "--no-bundle", "--persist-to", ".state", "--ip", "127.0.0.1", "--port", port];
  const wr = spawn(join(root, "node_modules/.bin/wrangler"), args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let log = "";
  wr.stdout.on("data", (d) => (log += d));
  wr.stderr.on("data", (d) => (log += d));
  const base = `http://127.0.0.1:${port}`;
  try {
    for (let i = 0; !/Ready on/.test(log); i++) {
      if (i > 240 || wr.exitCode !== null) throw new Error("wrangler dev did not start:\n" + log);
      await new Promise((r) => setTimeout(r, 500));
    }
    const pids = workerdPids(wr.pid);
    const beforeAll = new Map(pids.map((p) => [p, procStatus(p)]));
    const t0 = performance.now();
    const loadRes = await fetch(`${base}/load`);
    if (!loadRes.ok) throw new Error(`/load: ${loadRes.status} ${await loadRes.text()}\n${log}`);
    const load = await loadRes.json();
    const loadMs = performance.now() - t0;
    // The Worker's process is the one that grew by the model.
    const pid = pids.reduce((a, b) => (procStatus(b).rssMB > procStatus(a).rssMB ? b : a));
    const before = beforeAll.get(pid);
    const afterLoad = procStatus(pid);
    const runs = [];
    let failures = 0;
    for (const p of await prompts()) {
      for (let r = 0; r < RUNS; r++) {
        try {
          runs.push(await streamRun(base, p, r));
        } catch (err) {
          // Seen now and then on this shared machine: wrangler's proxy loses the runtime mid-stream.
          console.error(`workerd ${p.name} run ${r} failed (${err.message}); retrying once`);
          failures++;
          runs.push(await streamRun(base, p, r));
        }
      }
    }
    const heap = await (await fetch(`${base}/heap`)).json();
    return { loadMs, producer: load.producer, runs, failures, ortHeapMB: { afterLoad: MB(load.ortHeapBytes), afterRuns: MB(heap.ortHeapBytes) }, workerdMB: { beforeLoad: before, afterLoad, afterRuns: procStatus(pid) } };
  } catch (err) {
    err.message += `\n--- wrangler dev log ---\n${log}`;
    throw err;
  } finally {
    try {
      process.kill(-wr.pid, "SIGTERM");
    } catch {}
    setTimeout(() => rmSync(out, { recursive: true, force: true }), 2000).unref();
  }
}

// ---------------------------------------------------------------- main
if (opt.child) {
  console.log(JSON.stringify(await child(opt.child, Number(opt.threads))));
  process.exit(0);
}
const only = new Set(opt.only.split(","));
const setup = { date: new Date().toISOString(), host: `${os.cpus()[0].model}, ${os.cpus().length} cores, ${MB(os.totalmem())} MB`, node: process.version, tokens: TOKENS, runs: RUNS };
const results = [];
if (only.has("workerd")) results.push({ runtime: "workerd + onnxruntime-web 1.30.0 wasm (1 thread)", ...(await workerd()) });
if (only.has("web")) results.push({ runtime: "node + onnxruntime-web 1.30.0 wasm (1 thread)", ...(await runChild("web", 1)) });
if (only.has("node")) for (const t of [1, 2]) results.push({ runtime: `node + onnxruntime-node 1.30.0 CPU (${t} thread${t > 1 ? "s" : ""})`, ...(await runChild("node", t)) });
for (const r of results) appendFileSync(join(root, "bench/results/edge-model.jsonl"), JSON.stringify({ setup, ...r }) + "\n");

const best = (runs, name, key, pick) => pick(...runs.filter((x) => x.prompt === name).map((x) => x[key]));
console.log(`\n${setup.date}  ${setup.host}  node ${setup.node}  greedy, ${TOKENS} tokens, best of ${RUNS}\n`);
console.log("| runtime | load (ms) | TTFT short (ms) | TTFT long (ms) | decode short (tok/s) | decode long (tok/s) | memory (MB) |");
console.log("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
for (const r of results) {
  const p = await prompts();
  const mem = r.workerdMB
    ? `workerd VmRSS ${r.workerdMB.beforeLoad.rssMB} -> ${r.workerdMB.afterLoad.rssMB} after load -> ${r.workerdMB.afterRuns.rssMB} after runs (peak ${r.workerdMB.afterRuns.hwmMB}); ort wasm heap ${r.ortHeapMB.afterLoad} -> ${r.ortHeapMB.afterRuns}`
    : `max RSS ${r.maxRssMB}`;
  console.log(`| ${r.runtime} | ${Math.round(r.loadMs)} | ${Math.round(best(r.runs, "short", "ttftMs", Math.min))} (${p[0].ids.length} tok) | ${Math.round(best(r.runs, "long", "ttftMs", Math.min))} (${p[1].ids.length} tok) | ${best(r.runs, "short", "decodeTokPerS", Math.max).toFixed(2)} | ${best(r.runs, "long", "decodeTokPerS", Math.max).toFixed(2)} | ${mem} |`);
}
