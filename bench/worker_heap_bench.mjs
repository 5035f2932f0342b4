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
import { execFileSync } from "node:child_process";
import { appendFileSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { BUCKET, PY, localStack, root, sleep, wrangler } from "./local_stack.mjs";
import { mergeSummary } from "./summary.mjs";

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
const { stopBackend, cleanup, tokenizer, renderChat, status, startDev, stopDev, kvPut, kvGet, bootstrap, startBackend, edgeVars, chat } = localStack({ dir: DIR, port: PORT, inspector: Number(opt.inspector) });

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

async function main() {
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  mkdirSync(opt.out, { recursive: true });
  const key = bootstrap();
  let backend;
  const encode = await tokenizer();
  const common = edgeVars(BACKEND, false, { GPU_BACKEND_MODELS: "smollm2-135m-instruct=llama3-8b-kv", RESUME_POLICY: "raw" });
  const grants = edgeVars(BACKEND, true, { GPU_BACKEND_MODELS: "smollm2-135m-instruct=llama3-8b-kv", RESUME_POLICY: "raw" });
  const rows = [];
  try {
    backend = await startBackend(BACKEND, ["--model", "llama3-8b-kv", "--num-kv-blocks", "560", "--kv-codec", "raw"]);
    // One real turn: its chunk record carries the backend's producer fingerprint, and its token ids
    // check that this script tokenizes exactly as the edge does.
    let dev = await startDev(grants);
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
      dev = await startDev(path === "grant" ? grants : common);
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
    console.error(err, `\nbackend log: ${join(DIR, "backend.log")}`);
    process.exitCode = 1;
  } finally {
    await cleanup();
    await stopBackend(backend);
  }
  console.log("| path | stored MB | tokens | cached | s | heap used peak MB | backing peak MB | used+backing peak MB | workerd HWM MB |");
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rows) console.log(`| ${r.path} | ${r.stored_MB} | ${r.stored_tokens} | ${r.cached_tokens} | ${r.seconds} | ${r.heap_used_peak_MB} | ${r.backing_store_peak_MB} | ${r.heap_plus_backing_peak_MB} | ${r.workerd_hwm_after_MB} |`);
  const gb = rows.find((r) => r.path === "grant" && r.stored_MB >= 1000 && r.status === 200 && r.cached_tokens >= r.stored_tokens);
  if (gb) mergeSummary("resume", { worker_peak_heap_MB_1GB_session: gb.heap_plus_backing_peak_MB, worker_heap_1GB_session: { stored_MB: gb.stored_MB, heap_used_peak_MB: gb.heap_used_peak_MB, backing_store_peak_MB: gb.backing_store_peak_MB, source: "bench/worker_heap_bench.mjs" } });
}

main();
