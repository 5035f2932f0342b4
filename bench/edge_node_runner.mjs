// The edge model's sessions run from Node exactly as src/edge-model/onnx-session.ts runs them in
// workerd (same manifest, same session options, same step order, float16 KV cache), with either
// onnxruntime-web (the same wasm, 1 thread) or onnxruntime-node (native CPU EP). For benchmarks.
//
//   const m = await loadNodeModel({ runtime: "web" | "node", manifest: ".models/edge/smollm2-135m-instruct-q8h.json", threads: 1 });
//   const { logits } = await m.forward(promptIds, past); m.heapBytes()
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const LAYERS = 30, ROW = 3 * 64, HIDDEN = 576, PREFILL_CHUNK = Number(process.env.CHUNK ?? 128);

export async function loadNodeModel({ runtime, manifest: manifestPath, threads = 1, level }) {
  let memory = null;
  let ort;
  if (runtime === "web") {
    const original = WebAssembly.instantiate;
    WebAssembly.instantiate = async (src, imports) => {
      const r = await original(src, imports);
      for (const ns of Object.values(imports ?? {})) for (const v of Object.values(ns)) if (v instanceof WebAssembly.Memory) memory = v;
      return r;
    };
    const m = await import(join(root, "node_modules/onnxruntime-web/dist/ort.node.min.mjs"));
    ort = m.default ?? m;
    ort.env.wasm.numThreads = 1;
  } else {
    ort = (await import(join(root, "node_modules/onnxruntime-node/dist/index.js"))).default;
  }
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  const dir = join(dirname(manifestPath), manifest.dir);
  const t0 = performance.now();
  const sessions = {};
  for (const s of manifest.sessions) {
    const graph = join(dir, s.graph);
    sessions[s.name] =
      runtime === "web"
        ? await ort.InferenceSession.create(readFileSync(graph), {
            executionProviders: ["wasm"], graphOptimizationLevel: level ?? "all", enableCpuMemArena: false, enableMemPattern: false,
            externalData: [{ path: s.graph + ".data", data: new Uint8Array(readFileSync(graph + ".data")) }],
            extra: { optimization: { disable_specified_optimizers: "ConstantFolding" } },
          })
        : await ort.InferenceSession.create(graph, {
            intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all",
            extra: { optimization: { disable_specified_optimizers: "ConstantFolding" } },
          });
  }
  const loadMs = performance.now() - t0;
  const groups = manifest.sessions.filter((s) => s.name !== "head");
  const head = sessions.head;

  const newPast = (capacity) => ({ length: 0, kv: Array.from({ length: 2 * LAYERS }, () => new Uint16Array(capacity * ROW)) });
  const tensor = (past, i, kind) => new ort.Tensor("float16", past.kv[i * 2 + kind].subarray(0, past.length * ROW), [1, past.length, 3, 64]);
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
        past.kv[i * 2].set(bits(out[`key.${i}`]), P * ROW);
        past.kv[i * 2 + 1].set(bits(out[`value.${i}`]), P * ROW);
      }
      h = out.hidden_out;
    }
    past.length += ids.length;
    return h.data;
  }

  async function forward(ids, past) {
    let h;
    for (let a = 0; a < ids.length; a += PREFILL_CHUNK) h = await chunk(ids.slice(a, a + PREFILL_CHUNK), past);
    const last = new ort.Tensor("float32", h.subarray(h.length - HIDDEN), [1, 1, HIDDEN]);
    return { logits: (await head.run({ input_ids: one, hidden: last, want_logits: flag(true) })).out.data };
  }

  return { loadMs, manifest, newPast, forward, heapBytes: () => memory?.buffer.byteLength ?? 0 };
}

export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}
