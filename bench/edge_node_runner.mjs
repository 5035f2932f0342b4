// The edge model's sessions run from Node as src/edge-model/onnx-session.ts runs them in workerd
// (same manifest, same session options, same step order and prefill chunk, float16 KV cache), with
// onnxruntime-web (the same wasm, 1 thread) or onnxruntime-node (native CPU EP). For benchmarks.
//
//   const m = await loadNodeModel({ runtime: "web" | "node", manifest: ".models/edge/smollm2-135m-instruct-q8h.json" });
//   const past = m.newPast(capacity); const { logits } = await m.forward(promptIds, past); m.heapBytes()
//
// For the memory probe (runtime "web" only), `heap` makes it as workerd has it: { staging: "wasm" }
// stages each .data file in ort's heap and frees it after its session loads (onnx-session.ts),
// { staging: "js" } in a JS buffer; either way emscripten's growth is made exact (ort-runtime.ts) and
// newPast allocates the KV cache in ort's heap (kv-cache.ts). `onSession(name, fileBytes, heapBytes)`
// is called after each session loads.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const LAYERS = 30, ROW = 3 * 64, HIDDEN = 576;
/** onnx-session.ts's PREFILL_CHUNK: prompt tokens per run. */
export const PREFILL_CHUNK = 64;
// onnx-session.ts's INIT_MODEL (an Identity graph): loading it creates ort's heap before the weights arrive.
const INIT_MODEL = new Uint8Array([8, 8, 58, 58, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121, 18, 4, 105, 110, 105, 116, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10, 1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0, 16, 17]);

// ort's `extra` options: constant folding stays off (ort-runtime.ts says why), whatever else is asked
const sessionExtra = (extra = {}) => ({ ...extra, optimization: { disable_specified_optimizers: "ConstantFolding", ...extra.optimization } });

/** ort-web session options as sessionOptions() in ort-runtime.ts gives them (`level`: graph optimization level). */
export function webSessionOptions(level = "basic", extra = {}, externalData) {
  return { executionProviders: ["wasm"], graphOptimizationLevel: level, enableCpuMemArena: false, enableMemPattern: false, ...(externalData && { externalData }), extra: sessionExtra(extra) };
}

/** onnxruntime-node session options of the peer: its own best level ("all"), the same graphs. */
export function nodeSessionOptions(threads = 1, extra = {}) {
  return { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all", extra: sessionExtra(extra) };
}

/** Imports ort-web (1 thread) with its wasm memory and exports captured, and (exact) emscripten growth as ort-runtime.ts makes it. */
export async function importOrtWeb(exact = false) {
  const ortWasm = { memory: null, exports: null };
  const original = WebAssembly.instantiate;
  let wanted = 0;
  WebAssembly.instantiate = async (src, imports) => {
    for (const ns of Object.values(imports ?? {}))
      for (const [n, f] of Object.entries(ns)) {
        if (f instanceof WebAssembly.Memory) ortWasm.memory = f;
        if (exact && typeof f === "function" && f.toString().includes(".grow(")) ns[n] = (r) => ((wanted = r >>> 0), (() => { try { return f(r); } finally { wanted = 0; } })());
      }
    const r = await original(src, imports);
    ortWasm.memory ??= Object.values(r.instance.exports).find((v) => v instanceof WebAssembly.Memory);
    ortWasm.exports = r.instance.exports;
    if (exact) {
      const grow = WebAssembly.Memory.prototype.grow;
      ortWasm.memory.grow = function (p) { if (wanted) p = Math.min(p, Math.ceil((wanted - this.buffer.byteLength) / 65536) + 16); return grow.call(this, p); };
    }
    return r;
  };
  const m = await import(join(root, "node_modules/onnxruntime-web/dist/ort.node.min.mjs"));
  const ort = m.default ?? m;
  ort.env.wasm.numThreads = 1;
  return { ort, ortWasm };
}

/** `level`: ort-web's graph optimization level (workerd uses "basic", sessionOptions in ort-runtime.ts). */
export async function loadNodeModel({ runtime, manifest: manifestPath, threads = 1, level = "basic", heap: heapOpts, extra = {}, prefillChunk = PREFILL_CHUNK, onSession }) {
  const web = runtime === "web" ? await importOrtWeb(!!heapOpts) : null;
  const ort = web?.ort ?? (await import(join(root, "node_modules/onnxruntime-node/dist/index.js"))).default;
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  const dir = join(dirname(manifestPath), manifest.dir);
  const heapBytes = () => web?.ortWasm.memory?.buffer.byteLength ?? 0;
  const t0 = performance.now();
  // ort-web 1.30.0's minified malloc/free (ALLOCATOR_EXPORTS in ort-runtime.ts)
  let heap = null;
  if (heapOpts) {
    await (await ort.InferenceSession.create(INIT_MODEL)).release();
    heap = { malloc: web.ortWasm.exports.wb, free: web.ortWasm.exports.vb };
  }
  const sessions = {};
  for (const s of manifest.sessions) {
    const graph = join(dir, s.graph);
    const file = readFileSync(graph + ".data");
    if (web) {
      const at = heapOpts?.staging === "wasm" ? heap.malloc(file.length) : 0;
      const data = at ? new Uint8Array(web.ortWasm.memory.buffer, at, file.length) : new Uint8Array(file);
      if (at) data.set(file);
      sessions[s.name] = await ort.InferenceSession.create(readFileSync(graph), webSessionOptions(level, extra, [{ path: s.graph + ".data", data }]));
      if (at) heap.free(at);
    } else {
      sessions[s.name] = await ort.InferenceSession.create(graph, nodeSessionOptions(threads, extra));
    }
    onSession?.(s.name, file.length, heapBytes());
  }
  const loadMs = performance.now() - t0;
  const groups = manifest.sessions.filter((s) => s.name !== "head");
  const head = sessions.head;

  // The cache: one float16 block per layer and K/V, `capacity` rows of 3 heads x 64; in ort's heap
  // (as kv-cache.ts keeps it) when `heap` is given. Blocks are views, so they are taken after any growth.
  const newPast = (capacity) => {
    const bytes = capacity * ROW * 2;
    if (!heap) return { length: 0, block: ((kv) => (i) => kv[i])(Array.from({ length: 2 * LAYERS }, () => new Uint16Array(capacity * ROW))) };
    const at = heap.malloc(2 * LAYERS * bytes);
    return { length: 0, at, bytes: 2 * LAYERS * bytes, block: (i) => new Uint16Array(web.ortWasm.memory.buffer, at + i * bytes, capacity * ROW) };
  };
  const tensor = (past, i, kind) => new ort.Tensor("float16", past.block(i * 2 + kind).subarray(0, past.length * ROW), [1, past.length, 3, 64]);
  const bits = (t) => new Uint16Array(t.data.buffer, t.data.byteOffset, t.data.length);
  const zero = new ort.Tensor("float32", new Float32Array(HIDDEN), [1, 1, HIDDEN]);
  const one = new ort.Tensor("int64", new BigInt64Array(1), [1, 1]);
  const flag = (b) => new ort.Tensor("bool", new Uint8Array([b ? 1 : 0]), []);

  async function chunk(ids, past) {
    const P = past.length;
    const inputIds = new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
    const pos = new ort.Tensor("int64", BigInt64Array.from(ids, (_, k) => BigInt(P + k)), [1, ids.length]);
    let h = (await head.run({ input_ids: inputIds, hidden: zero, want_logits: flag(false) })).out;
    for (const g of groups) {
      const feeds = { hidden: h, position_ids: pos };
      for (let i = g.first; i < g.last; i++) { feeds[`past_key.${i}`] = tensor(past, i, 0); feeds[`past_value.${i}`] = tensor(past, i, 1); }
      const out = await sessions[g.name].run(feeds);
      for (let i = g.first; i < g.last; i++) {
        past.block(i * 2).set(bits(out[`key.${i}`]), P * ROW);
        past.block(i * 2 + 1).set(bits(out[`value.${i}`]), P * ROW);
      }
      h = out.hidden_out;
    }
    past.length += ids.length;
    return h.data;
  }

  async function forward(ids, past) {
    let h;
    for (let a = 0; a < ids.length; a += prefillChunk) h = await chunk(ids.slice(a, a + prefillChunk), past);
    const last = new ort.Tensor("float32", h.subarray(h.length - HIDDEN), [1, 1, HIDDEN]);
    return { logits: (await head.run({ input_ids: one, hidden: last, want_logits: flag(true) })).out.data };
  }

  return { loadMs, manifest, newPast, forward, heap, heapBytes };
}

export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}
