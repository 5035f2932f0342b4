#!/usr/bin/env node
// Where ort-web's wasm memory goes for the edge model, in Node with the same ort wasm build that
// workerd runs: heap size after each session loads and after a light step (prompt T, NEW tokens,
// prefill CHUNK tokens per run), with emscripten's growth made exact as src/edge-model/ort-runtime.ts
// makes it. STAGING=wasm stages each .data file in ort's heap (as onnx-session.ts does), js in a JS
// buffer. EXTRA: JSON of ort session `extra` options (e.g. {"session":{"disable_prepacking":"1"}}).
//
//   node bench/edge_memory_probe.mjs <q8h|q41h> <wasm|js> [T=512] [NEW=64] [CHUNK=64]
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const [variant = "q8h", staging = "wasm", T = "512", NEW = "64", CHUNK = "64"] = process.argv.slice(2);
let memory = null, wasmExports = null, wanted = 0;
const original = WebAssembly.instantiate;
WebAssembly.instantiate = async (src, imports) => {
  for (const ns of Object.values(imports ?? {}))
    for (const [n, f] of Object.entries(ns)) {
      if (f instanceof WebAssembly.Memory) memory = f;
      if (typeof f === "function" && f.toString().includes(".grow(")) ns[n] = (r) => ((wanted = r >>> 0), (() => { try { return f(r); } finally { wanted = 0; } })());
    }
  const r = await original(src, imports);
  memory ??= Object.values(r.instance.exports).find((v) => v instanceof WebAssembly.Memory);
  wasmExports = r.instance.exports;
  const grow = WebAssembly.Memory.prototype.grow;
  memory.grow = function (p) { if (wanted) p = Math.min(p, Math.ceil((wanted - this.buffer.byteLength) / 65536) + 16); return grow.call(this, p); };
  return r;
};
const m = await import(join(root, "node_modules/onnxruntime-web/dist/ort.node.min.mjs"));
const ort = m.default ?? m;
ort.env.wasm.numThreads = 1;
const manifest = JSON.parse(readFileSync(join(root, `.models/edge/smollm2-135m-instruct-${variant}.json`), "utf8"));
const dir = join(root, ".models/edge", manifest.dir);
const MiB = (b = memory.buffer.byteLength) => (b / 2 ** 20).toFixed(1);
const extra = JSON.parse(process.env.EXTRA ?? "{}");
extra.optimization = { disable_specified_optimizers: "ConstantFolding", ...extra.optimization };
const log = [];
// INIT_MODEL of onnx-session.ts: ort's heap exists before the weights arrive
await ort.InferenceSession.create(new Uint8Array([8, 8, 58, 58, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121, 18, 4, 105, 110, 105, 116, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10, 1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0, 16, 17]));
const { wb: malloc, vb: free } = wasmExports; // ort-web 1.30.0's minified malloc/free (ort-runtime.ts)
const first = malloc(16);
free(first);
log.push(`init ${MiB()} (first free byte at ${MiB(first)})`);
const sessions = {};
for (const s of manifest.sessions) {
  const file = readFileSync(join(dir, s.graph + ".data"));
  const at = staging === "wasm" ? malloc(file.length) : 0;
  const data = at ? new Uint8Array(memory.buffer, at, file.length) : new Uint8Array(file);
  if (at) data.set(file);
  sessions[s.name] = await ort.InferenceSession.create(readFileSync(join(dir, s.graph)), { executionProviders: ["wasm"], graphOptimizationLevel: "basic", enableCpuMemArena: false, enableMemPattern: false, externalData: [{ path: s.graph + ".data", data }], extra });
  if (at) free(at);
  log.push(`${s.name} (${MiB(file.length)}) -> ${MiB()}`);
}

const ROW = 192, L = 30, HIDDEN = 576, cap = Number(T) + Number(NEW) - 1;
const kv = malloc(cap * 2 * L * ROW * 2);
log.push(`kv ${MiB(cap * 2 * L * ROW * 2)} at ${MiB(kv)} -> ${MiB()}`);
const block = (i, k) => new Uint16Array(memory.buffer, kv + (i * 2 + k) * cap * ROW * 2, cap * ROW);
let len = 0;
const zero = new ort.Tensor("float32", new Float32Array(HIDDEN), [1, 1, HIDDEN]);
const flag = (b) => new ort.Tensor("bool", new Uint8Array([b ? 1 : 0]), []);
async function step(ids) {
  const i64 = (f) => new ort.Tensor("int64", BigInt64Array.from(ids, f), [1, ids.length]);
  let h = (await sessions.head.run({ input_ids: i64(BigInt), hidden: zero, want_logits: flag(false) })).out;
  for (const g of manifest.sessions.filter((s) => s.name !== "head")) {
    const feeds = { hidden: h, position_ids: i64((_, k) => BigInt(len + k)) };
    for (let i = g.first; i < g.last; i++) for (const k of [0, 1]) feeds[`past_${k ? "value" : "key"}.${i}`] = new ort.Tensor("float16", block(i, k).subarray(0, len * ROW), [1, len, 3, 64]);
    const o = await sessions[g.name].run(feeds);
    for (let i = g.first; i < g.last; i++) for (const k of [0, 1]) { const t = o[`${k ? "value" : "key"}.${i}`].data; block(i, k).set(new Uint16Array(t.buffer, t.byteOffset, t.length), len * ROW); }
    h = o.hidden_out;
  }
  len += ids.length;
  const last = h.data.subarray(h.data.length - HIDDEN);
  const logits = (await sessions.head.run({ input_ids: new ort.Tensor("int64", new BigInt64Array(1), [1, 1]), hidden: new ort.Tensor("float32", last, [1, 1, HIDDEN]), want_logits: flag(true) })).out.data;
  return logits.reduce((b, v, i, a) => (v > a[b] ? i : b), 0);
}
const ids = Array.from({ length: Number(T) }, (_, i) => 100 + (i % 1000));
let next = 0;
for (let a = 0; a < ids.length; a += Number(CHUNK)) next = await step(ids.slice(a, a + Number(CHUNK)));
log.push(`prefill ${T} -> ${MiB()}`);
for (let n = 1; n < Number(NEW); n++) next = await step([next]);
log.push(`decode ${NEW} -> ${MiB()} MiB`);
console.log(`${variant} staging=${staging} chunk=${CHUNK} ${process.env.EXTRA ?? ""}\n  ` + log.join("\n  "));
