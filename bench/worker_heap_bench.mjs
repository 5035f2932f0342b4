#!/usr/bin/env node
// The Worker's memory while a long session resumes through the edge: the grant path (the backend
// fetches the chunks through the Worker's signed streaming route) against the inline path (the edge
// loads every chunk and sends them in the request body), on the real local stack: wrangler dev
// (workerd, R2 and KV persisted to a scratch directory) and the GPU backend on CPU.
//
// Heap: the isolate's own figures over the inspector protocol (CDP `Runtime.getHeapUsage`: V8 heap
// used/total plus `backingStorageSize`, the ArrayBuffer backing stores that hold fetched bytes outside
// the V8 heap), sampled every 20 ms from before the request until after it ends; the peak of
// used + backing storage is the figure. Also workerd's resident set (VmRSS, VmHWM), which includes the
// local R2 implementation, and is context only.
//
// The sessions are synthetic (bench/make_heap_session.py): raw-bf16 chunks of random values, for the
// `llama3-8b-kv` preset (Llama-3-8B's KV cache, 128 KiB per token, on a thin body), with the real
// backend's producer fingerprint and chunk MACs, in the record the edge reads. The resume is real: edge,
// policy, grants, R2 through the Worker, the backend's verification, restore and generation.
//
//   node bench/worker_heap_bench.mjs [--cases grant:1000,inline:128,grant:128] [--out DIR]
//   (a case is path:MB of stored KV; 1000 MB = 7,630 tokens)
//
// Writes DIR/heap.jsonl (one line per case) and prints a table; merges worker_peak_heap_MB_1GB_session
// into bench/results/summary/resume.json.
import { execFileSync, spawn } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { mergeSummary } from "./summary.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: opt } = parseArgs({
  options: {
    cases: { type: "string", default: "grant:1000,inline:128,grant:128" },
    out: { type: "string", default: join(root, "bench/results/worker-heap-cpu-2026-12-01") },
    port: { type: "string", default: "8850" },
    inspector: { type: "string", default: "9350" },
    backend: { type: "string", default: "8856" },
  },
});
const PORT = Number(opt.port), BACKEND = Number(opt.backend);
const DIR = join(root, ".state/heap-bench");
const BYTES_PER_TOKEN = 32 * 2 * 8 * 128 * 2; // llama3-8b-kv, BF16
const CHUNK_TOKENS = 1024;
const MB = (b) => +(b / 1e6).toFixed(1);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const wrangler = join(root, "node_modules/.bin/wrangler");
const PY = join(root, "gpu-backend/.venv/bin/python");
const BUCKET = /binding\s*=\s*"BLOBS"\s*\n\s*bucket_name\s*=\s*"([^"]+)"/m.exec(readFileSync(join(root, "wrangler.toml"), "utf8"))[1];

async function tokenizer() {
  const { Tokenizer } = await import(join(root, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs"));
  const tok = new Tokenizer(JSON.parse(readFileSync(join(root, ".models/hf/tokenizer.json"), "utf8")), {});
  return (s) => tok.encode(s, { add_special_tokens: false }).ids;
}

/** src/edge-model/chat-template.ts, same text. */
function renderChat(messages, gen) {
  let out = "";
  messages.forEach((m, i) => {
    if (i === 0 && m.role !== "system") out += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    out += `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`;
  });
  return gen ? out + "<|im_start|>assistant\n" : out;
}

async function waitFor(url, ms, ok = (r) => r.status === 200) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if (ok(await fetch(url))) return;
    } catch {}
    await sleep(500);
  }
  throw new Error(`${url} not up in ${ms} ms`);
}

function descendants(pid) {
  const out = [];
  for (const line of execFileSync("ps", ["-e", "-o", "pid=,ppid=,comm="]).toString().trim().split("\n")) {
    const [p, pp, comm] = line.trim().split(/\s+/);
    if (Number(pp) === pid) out.push({ pid: Number(p), comm }, ...descendants(Number(p)));
  }
  return out;
}

function status(pid) {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

async function startDev(vars) {
  const args = ["dev", "--persist-to", DIR, "--ip", "127.0.0.1", "--port", String(PORT), "--inspector-port", opt.inspector, ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`])];
  const child = spawn(wrangler, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: false });
  child.stdout.on("data", () => {});
  child.stderr.on("data", () => {});
  await waitFor(`http://127.0.0.1:${PORT}/v1/models`, 120_000, (r) => r.status === 401 || r.status === 200);
  const workerd = descendants(child.pid).find((p) => p.comm === "workerd");
  return { child, workerd: workerd?.pid };
}

async function stopDev(dev) {
  dev.child.kill("SIGINT");
  await new Promise((r) => dev.child.once("exit", r));
  await sleep(500);
}

/** Samples the isolate's heap over CDP until `stop()`; peak figures in bytes. */
async function heapSampler() {
  const list = await (await fetch(`http://127.0.0.1:${opt.inspector}/json/list`)).json();
  const target = list.find((t) => t.webSocketDebuggerUrl) ?? list[0];
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((r, j) => (ws.once("open", r), ws.once("error", j)));
  let id = 0;
  const pending = new Map();
  ws.on("message", (m) => {
    const msg = JSON.parse(m.toString());
    if (msg.id && pending.has(msg.id)) pending.get(msg.id)(msg.result ?? {}), pending.delete(msg.id);
  });
  const call = (method, params = {}) => new Promise((r) => (pending.set(++id, r), ws.send(JSON.stringify({ id, method, params }))));
  await call("Runtime.enable");
  const first = await call("Runtime.getHeapUsage");
  const peak = { used: 0, total: 0, backing: 0, usedPlusBacking: 0, samples: 0, fields: Object.keys(first) };
  let running = true;
  const loop = (async () => {
    while (running) {
      const u = await call("Runtime.getHeapUsage");
      peak.samples++;
      peak.used = Math.max(peak.used, u.usedSize ?? 0);
      peak.total = Math.max(peak.total, u.totalSize ?? 0);
      peak.backing = Math.max(peak.backing, u.backingStorageSize ?? 0);
      peak.usedPlusBacking = Math.max(peak.usedPlusBacking, (u.usedSize ?? 0) + (u.backingStorageSize ?? 0));
      await sleep(20);
    }
  })();
  return {
    baseline: first,
    stop: async () => {
      running = false;
      await loop;
      ws.close();
      return peak;
    },
  };
}

function kvPut(key, value) {
  const f = join(DIR, "kv-value.json");
  writeFileSync(f, value);
  execFileSync(wrangler, ["kv", "key", "put", key, "--path", f, "--binding", "SESSIONS", "--local", "--persist-to", DIR], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
}

function kvGet(key) {
  return JSON.parse(execFileSync(wrangler, ["kv", "key", "get", key, "--binding", "SESSIONS", "--local", "--persist-to", DIR], { cwd: root }).toString());
}

/** A session of `mb` MB of stored chunks, written straight into the local KV and R2. */
async function seedSession(name, mb, producer, encode, withMac) {
  const tokens = Math.ceil((mb * 1e6) / BYTES_PER_TOKEN);
  const sentence = "The lighthouse keeper climbed the stairs each evening, counting the steps and the ships. ";
  let reps = Math.ceil(tokens / 17);
  let messages, ids;
  for (;;) {
    messages = [{ role: "user", content: sentence.repeat(reps) }, { role: "assistant", content: "Noted." }];
    ids = encode(renderChat(messages, false));
    if (ids.length > tokens) break;
    reps += Math.ceil((tokens - ids.length) / 17) + 1;
  }
  const T = tokens; // chunks cover [0, T); the record's token ids run a little past
  const ranges = [];
  for (let s = 0; s < T; s += CHUNK_TOKENS) ranges.push(`${s}:${Math.min(T, s + CHUNK_TOKENS)}`);
  const id = `sess_heap${name}`;
  const out = join(DIR, "chunks", id);
  execFileSync(PY, [join(root, "gpu-backend/bench/make_heap_session.py"), "--producer", producer, "--secret-file", join(DIR, "secret"), "--session", id, "--ranges", ranges.join(","), "--out", out, ...(withMac ? [] : ["--no-mac"])], { cwd: join(root, "gpu-backend"), stdio: ["ignore", "inherit", "inherit"] });
  const manifest = JSON.parse(readFileSync(join(out, "manifest.json"), "utf8"));
  for (const c of manifest) {
    execFileSync(wrangler, ["r2", "object", "put", `${BUCKET}/${c.r2Key}`, "--file", c.file, "--local", "--persist-to", DIR], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
    rmSync(c.file);
    delete c.file;
  }
  const rec = { id, tenant: "bench", created: Math.floor(Date.now() / 1000), revision: 0, turns: 1, messages, tokenIds: ids, chunks: manifest, nextChunk: manifest.length };
  kvPut(`session:${id}`, JSON.stringify(rec));
  return { id, tokens: T, bytes: manifest.reduce((s, c) => s + c.bytes, 0) };
}

async function chat(key, body) {
  const t0 = performance.now();
  const res = await fetch(`http://127.0.0.1:${PORT}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "smollm2-135m-instruct", temperature: 0, max_tokens: 2, ...body }),
  });
  const text = await res.text();
  return { status: res.status, body: text, seconds: (performance.now() - t0) / 1000 };
}

async function main() {
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  mkdirSync(opt.out, { recursive: true });
  execFileSync("node", [join(root, "scripts/seed_local_storage.mjs"), "--persist-to", DIR.slice(root.length + 1)], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
  const keyFile = join(DIR, "api-key");
  execFileSync("node", [join(root, "scripts/create_key.mjs"), "--tenant", "bench", "--name", "heap", "--rate-limit", "0", "--save", keyFile, "--persist-to", DIR.slice(root.length + 1)], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
  const key = readFileSync(keyFile, "utf8").trim();
  writeFileSync(join(DIR, "secret"), Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex"));
  const backend = spawn(PY, ["-m", "reprise_gpu.server", "--model", "llama3-8b-kv", "--device", "cpu", "--port", String(BACKEND), "--secret-file", join(DIR, "secret"), "--tokenizer", join(root, ".models/hf/tokenizer.json"), "--num-kv-blocks", "560", "--kv-codec", "raw"], { cwd: join(root, "gpu-backend"), stdio: ["ignore", "ignore", "pipe"] });
  let backendLog = "";
  backend.stderr.on("data", (d) => {
    backendLog = (backendLog + d).slice(-20000);
    appendFileSync(join(DIR, "backend.log"), d);
  });
  const encode = await tokenizer();
  const common = { GPU_BACKEND_URL: `http://127.0.0.1:${BACKEND}`, GPU_BACKEND_SECRET: readFileSync(join(DIR, "secret"), "utf8"), GPU_BACKEND_MODELS: "smollm2-135m-instruct=llama3-8b-kv", GPU_PREFILL_THRESHOLD: "0", RESUME_POLICY: "raw" };
  const grants = { STORAGE_GRANTS: "worker", STORAGE_GRANT_ORIGIN: `http://127.0.0.1:${PORT}`, STORAGE_GRANT_SECRET: Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex") };
  const rows = [];
  try {
    await waitFor(`http://127.0.0.1:${BACKEND}/readyz`, 600_000);
    // One real turn: its chunk record carries the backend's producer fingerprint, and its token ids
    // check that this script tokenizes exactly as the edge does.
    let dev = await startDev({ ...common, ...grants });
    const sid = JSON.parse((await (await fetch(`http://127.0.0.1:${PORT}/v1/sessions`, { method: "POST", headers: { authorization: `Bearer ${key}` } })).text())).id;
    const first = await chat(key, { session_id: sid, messages: [{ role: "user", content: "Hi" }] });
    if (first.status !== 200) throw new Error(`first turn: ${first.status} ${first.body}`);
    await stopDev(dev);
    const rec0 = kvGet(`session:${sid}`);
    const want = encode(renderChat([{ role: "user", content: "Hi" }], true));
    if (JSON.stringify(rec0.tokenIds.slice(0, want.length)) !== JSON.stringify(want)) throw new Error("this script does not tokenize as the edge does");
    const producer = rec0.chunks[0].producer;
    for (const spec of opt.cases.split(",")) {
      const [path, mbText] = spec.split(":");
      const mb = Number(mbText);
      const s = await seedSession(`${path}${mb}`, mb, producer, encode, path === "grant");
      dev = await startDev(path === "grant" ? { ...common, ...grants } : common);
      const before = dev.workerd ? status(dev.workerd) : null;
      const sampler = await heapSampler();
      const r = await chat(key, { session_id: s.id, messages: [{ role: "user", content: "Summarize." }] });
      const peak = await sampler.stop();
      const after = dev.workerd ? status(dev.workerd) : null;
      const view = JSON.parse((await (await fetch(`http://127.0.0.1:${PORT}/v1/sessions/${s.id}`, { headers: { authorization: `Bearer ${key}` } })).text()));
      await stopDev(dev);
      const usage = r.status === 200 ? JSON.parse(r.body).usage : null;
      const row = {
        bench: "worker_heap", date: new Date().toISOString(), path, stored_MB: MB(s.bytes), stored_tokens: s.tokens, status: r.status,
        cached_tokens: usage?.prompt_tokens_details?.cached_tokens ?? null, seconds: +r.seconds.toFixed(2),
        heap_used_peak_MB: MB(peak.used), heap_total_peak_MB: MB(peak.total), backing_store_peak_MB: MB(peak.backing), heap_plus_backing_peak_MB: MB(peak.usedPlusBacking),
        heap_baseline_MB: MB((sampler.baseline.usedSize ?? 0) + (sampler.baseline.backingStorageSize ?? 0)), samples: peak.samples, cdp_fields: peak.fields,
        workerd_rss_before_MB: before && MB(before.rss), workerd_hwm_after_MB: after && MB(after.hwm),
        resume: view.resume?.last ?? null, error: r.status === 200 ? null : r.body.slice(0, 300),
      };
      rows.push(row);
      appendFileSync(join(opt.out, "heap.jsonl"), JSON.stringify(row) + "\n");
      console.error(JSON.stringify(row));
    }
  } catch (err) {
    console.error(err, "\nbackend log tail:\n", backendLog.slice(-3000));
    process.exitCode = 1;
  } finally {
    backend.kill("SIGTERM");
  }
  console.log("| path | stored MB | tokens | cached | s | heap used peak MB | backing peak MB | used+backing peak MB | workerd HWM MB |");
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rows) console.log(`| ${r.path} | ${r.stored_MB} | ${r.stored_tokens} | ${r.cached_tokens} | ${r.seconds} | ${r.heap_used_peak_MB} | ${r.backing_store_peak_MB} | ${r.heap_plus_backing_peak_MB} | ${r.workerd_hwm_after_MB} |`);
  const gb = rows.find((r) => r.path === "grant" && r.stored_MB >= 1000 && r.status === 200 && r.cached_tokens >= r.stored_tokens);
  if (gb) mergeSummary("resume", { worker_peak_heap_MB_1GB_session: gb.heap_plus_backing_peak_MB, worker_heap_1GB_session: { stored_MB: gb.stored_MB, heap_used_peak_MB: gb.heap_used_peak_MB, backing_store_peak_MB: gb.backing_store_peak_MB, source: "bench/worker_heap_bench.mjs" } });
}

main();
