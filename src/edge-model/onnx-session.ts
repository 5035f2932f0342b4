/**
 * The edge model in onnxruntime-web (wasm, one thread) inside workerd: loading it from R2 once per
 * isolate, and running it with a KV cache.
 *
 * The model is two R2 objects: the graph at EDGE_MODEL_KEY and its weights at EDGE_MODEL_KEY + ".data"
 * (ONNX external data). The ONNX graph (scripts/convert_edge_model.py), batch 1, P past tokens, S new tokens:
 *   inputs   input_ids int64 [1, S], position_ids int64 [1, S] (P .. P+S-1),
 *            past_key_values.{0..29}.{key,value} float32 [1, 3, P, 64]
 *   outputs  logits float32 [1, 1, 49152] (last position), present.{0..29}.{key,value} float32 [1, 3, P+S, 64]
 *
 * workerd refuses to compile WebAssembly from bytes at run time, so ort's wasm arrives as a module
 * compiled at deploy time (wrangler's CompiledWasm rule for **\/*.wasm) and is handed to emscripten
 * when ort instantiates it (see `withPrecompiledOrtWasm`).
 */
import * as ort from "onnxruntime-web/wasm";
import ortWasm from "onnxruntime-web/ort-wasm-simd-threaded.wasm";
import { toHex } from "../crypto";

export const LAYERS = 30;
export const KV_HEADS = 3;
export const HEAD_DIM = 64;
export const VOCAB = 49152;
/** Second half of the producer fingerprint: the runtime and build that computed the KV values. */
export const ORT_TAG = "ort-web-1.30.0-wasm";

/** Past KV per layer: K and V as [KV_HEADS, length, HEAD_DIM] float32 (batch dimension dropped). */
export interface PastKv {
  length: number;
  tensors: Record<string, ort.Tensor>;
}

export interface EdgeModel {
  session: ort.InferenceSession;
  /** `sha256:<hex of .onnx then .onnx.data>+ort-web-1.30.0-wasm`: what the KV bytes depend on. */
  producer: string;
  modelBytes: number;
  loadMs: number;
}

const pastName = (i: number, kv: "key" | "value") => `past_key_values.${i}.${kv}`;
const presentName = (i: number, kv: "key" | "value") => `present.${i}.${kv}`;

/**
 * Runs `create` with WebAssembly.instantiate redirected to the precompiled ort module. Only calls
 * that pass bytes are redirected (workerd would reject them anyway); a caller passing a compiled
 * module, like our codec's wasm, is untouched. ort is told `wasmBinary = <placeholder bytes>` so
 * that its emscripten glue takes the ArrayBuffer path, which ends in WebAssembly.instantiate.
 */
async function withPrecompiledOrtWasm<T>(create: () => Promise<T>): Promise<T> {
  const original = WebAssembly.instantiate;
  const redirected = ((source: unknown, imports?: WebAssembly.Imports) => {
    if (source instanceof WebAssembly.Module) return original(source, imports);
    return original(ortWasm, imports).then((instance) => {
      ortMemory = findMemory(imports) ?? findMemory({ exports: instance.exports });
      return { instance, module: ortWasm };
    });
  }) as typeof WebAssembly.instantiate;
  WebAssembly.instantiate = redirected;
  try {
    return await create();
  } finally {
    if (WebAssembly.instantiate === redirected) WebAssembly.instantiate = original;
  }
}

let ortMemory: WebAssembly.Memory | null = null;

function findMemory(imports: WebAssembly.Imports | undefined): WebAssembly.Memory | null {
  for (const ns of Object.values(imports ?? {}))
    for (const v of Object.values(ns ?? {})) if (v instanceof WebAssembly.Memory) return v;
  return null;
}

/** Size of ort's wasm linear memory (its high-water mark: wasm memory never shrinks), or 0 before load. */
export function ortHeapBytes(): number {
  return ortMemory?.buffer.byteLength ?? 0;
}

let cached: { key: string; model: Promise<EdgeModel> } | null = null;

/**
 * The ort session for the model at `key` in R2, created once per isolate (concurrent callers share
 * the promise; a failure is forgotten so that the next request retries).
 *
 * @example
 * ```ts
 * const model = await loadEdgeModel(env.BLOBS, env.EDGE_MODEL_KEY);
 * const { logits, past } = await forward(model, promptIds, emptyPast());
 * ```
 */
export function loadEdgeModel(blobs: R2Bucket, key: string): Promise<EdgeModel> {
  if (cached?.key !== key) {
    const model = createModel(blobs, key);
    cached = { key, model };
    model.catch(() => {
      if (cached?.model === model) cached = null;
    });
  }
  return cached.model;
}

/** R2 key of the external weights of the graph at `key` (the graph names them `<basename>.data`). */
export function modelDataKey(key: string): string {
  return key + ".data";
}

async function createModel(blobs: R2Bucket, key: string): Promise<EdgeModel> {
  const t0 = Date.now();
  const [graphObj, dataObj] = await Promise.all([blobs.get(key), blobs.get(modelDataKey(key))]);
  if (!graphObj || !dataObj)
    throw new Error(`edge model not found in R2 at ${key} (+ .data); run node scripts/seed_local_storage.mjs`);
  const graph = new Uint8Array(await graphObj.arrayBuffer());
  let data: Uint8Array | null = new Uint8Array(await dataObj.arrayBuffer());
  // Fingerprint: sha256 over graph bytes then weight bytes (convert_edge_model.py's model_digest).
  const hasher = new crypto.DigestStream("SHA-256");
  const w = hasher.getWriter();
  await w.write(graph);
  await w.write(data);
  await w.close();
  const hex = toHex(await hasher.digest);
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer workers in workerd
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmBinary = PLACEHOLDER;
  const modelBytes = graph.byteLength + data.byteLength;
  const session = await withPrecompiledOrtWasm(() =>
    ort.InferenceSession.create(graph, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
      // Each weight is copied once from this buffer into wasm memory, then the buffer can go.
      externalData: [{ path: key.slice(key.lastIndexOf("/") + 1) + ".data", data: data! }],
    }),
  );
  data = null;
  return { session, producer: `sha256:${hex}+${ORT_TAG}`, modelBytes, loadMs: Date.now() - t0 };
}

/** The wasm magic and version: enough bytes for ort to take the "binary given" path. */
const PLACEHOLDER = new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);

export function emptyPast(): PastKv {
  const tensors: Record<string, ort.Tensor> = {};
  for (let i = 0; i < LAYERS; i++)
    for (const kv of ["key", "value"] as const)
      tensors[pastName(i, kv)] = new ort.Tensor("float32", new Float32Array(0), [1, KV_HEADS, 0, HEAD_DIM]);
  return { length: 0, tensors };
}

/**
 * Past KV from raw-f32 chunk payloads covering [0, length) in order (each laid out as
 * docs/kv-chunk-format.md: per layer K then V, [KV_HEADS, tokens, HEAD_DIM]).
 */
export function pastFromPayloads(parts: { tokens: number; payload: Uint8Array }[]): PastKv {
  const length = parts.reduce((n, p) => n + p.tokens, 0);
  const floats = parts.map((p) => {
    const copy = p.payload.slice(); // aligned copy: the payload may start at any byte offset
    return new Float32Array(copy.buffer, 0, copy.byteLength / 4);
  });
  const tensors: Record<string, ort.Tensor> = {};
  for (let i = 0; i < LAYERS; i++) {
    for (const [j, kv] of (["key", "value"] as const).entries()) {
      const out = new Float32Array(KV_HEADS * length * HEAD_DIM);
      let t0 = 0;
      parts.forEach((p, c) => {
        const src = floats[c]!;
        const block = KV_HEADS * p.tokens * HEAD_DIM;
        const base = (i * 2 + j) * block;
        for (let h = 0; h < KV_HEADS; h++) {
          const row = src.subarray(base + h * p.tokens * HEAD_DIM, base + (h + 1) * p.tokens * HEAD_DIM);
          out.set(row, (h * length + t0) * HEAD_DIM);
        }
        t0 += p.tokens;
      });
      tensors[pastName(i, kv)] = new ort.Tensor("float32", out, [1, KV_HEADS, length, HEAD_DIM]);
    }
  }
  return { length, tensors };
}

/** The raw-f32 payload for tokens [start, past.length) of `past`. */
export function payloadFromPast(past: PastKv, start: number): Uint8Array {
  const T = past.length, n = T - start;
  const out = new Float32Array(LAYERS * 2 * KV_HEADS * n * HEAD_DIM);
  let o = 0;
  for (let i = 0; i < LAYERS; i++) {
    for (const kv of ["key", "value"] as const) {
      const data = past.tensors[pastName(i, kv)]!.data as Float32Array;
      for (let h = 0; h < KV_HEADS; h++) {
        out.set(data.subarray((h * T + start) * HEAD_DIM, (h * T + T) * HEAD_DIM), o);
        o += n * HEAD_DIM;
      }
    }
  }
  return new Uint8Array(out.buffer); // little-endian: workerd runs on little-endian hosts only
}

/**
 * Runs `ids` at positions past.length .. past.length + ids.length - 1.
 * Returns the last position's logits and the past extended by `ids`.
 */
export async function forward(model: EdgeModel, ids: readonly number[], past: PastKv): Promise<{ logits: Float32Array; past: PastKv }> {
  if (ids.length === 0) throw new Error("forward needs at least one token");
  const P = past.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
    position_ids: new ort.Tensor("int64", BigInt64Array.from(ids, (_, k) => BigInt(P + k)), [1, ids.length]),
    ...past.tensors,
  };
  const out = await model.session.run(feeds);
  const tensors: Record<string, ort.Tensor> = {};
  for (let i = 0; i < LAYERS; i++)
    for (const kv of ["key", "value"] as const) tensors[pastName(i, kv)] = out[presentName(i, kv)]!;
  return { logits: out.logits!.data as Float32Array, past: { length: P + ids.length, tensors } };
}
