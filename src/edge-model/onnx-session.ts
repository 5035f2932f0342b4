/**
 * The edge model in onnxruntime-web (wasm, one thread) inside workerd: loading its sessions from R2
 * once per isolate, and running them with a KV cache.
 *
 * The model is one embedding/lm_head session and a few decoder sessions (model-files.ts); a step
 * runs: head (embeds) -> each decoder session in layer order -> head (logits of the last position);
 * the head's `want_logits` input picks which of its two ends runs.
 * Graph interfaces: scripts/edge_model/graph_layers.py and graph_head.py.
 *
 * Memory (Workers allow 128 MB per isolate): each session's weights are read from R2 into one
 * staging buffer (the largest .data file), copied by ort tensor by tensor into its own allocations
 * while the session is created, and the buffer is reused for the next session, so the isolate never
 * holds a second full copy of the weights. The staging buffer is allocated in ort's wasm heap and
 * freed after loading: the hole is what ort's working set and the KV cache (kv-cache.ts) then use,
 * instead of the isolate holding both (wasm memory never shrinks). Prefill runs PREFILL_CHUNK tokens
 * at a time, which bounds the attention temporaries (3 x 3C x T float32 scores).
 */
import { toHex } from "../crypto";
import { fileEntry, layerSessions, Manifest, modelFileKey } from "./model-files";
import { f16Bits, HEAD_DIM, KV_HEADS, LAYERS, PastKv } from "./kv-cache";
import { ort, ORT_TAG, ortHeap, sessionOptions, withPrecompiledOrtWasm } from "./ort-runtime";

export { HEAD_DIM, KV_HEADS, LAYERS, ORT_TAG, PastKv };
export { ortHeapBytes } from "./ort-runtime";

export const VOCAB = 49152;
export const HIDDEN = 576;
/** Prompt tokens per prefill run: attention scores 3 x 192 x T float32 (1.3 MB at T = 576). */
export const PREFILL_CHUNK = 64;
/** A one-node ONNX model (Identity), loaded first so that ort's heap exists before the weights arrive. */
const INIT_MODEL = new Uint8Array([8, 8, 58, 58, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121, 18, 4, 105, 110, 105, 116, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10, 1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0, 16, 17]);

export interface EdgeModel {
  head: ort.InferenceSession;
  groups: { session: ort.InferenceSession; first: number; last: number }[];
  manifest: Manifest;
  /** `sha256:<hex of the manifest bytes>+ort-web-1.30.0-wasm`: what the KV bytes depend on. */
  producer: string;
  modelBytes: number;
  loadMs: number;
}

let cached: { key: string; model: Promise<EdgeModel> } | null = null;

/**
 * The edge model whose manifest is at `key` in R2, loaded once per isolate (concurrent callers
 * share the promise; a failure is forgotten so that the next request retries).
 *
 * @example
 * ```ts
 * const model = await loadEdgeModel(env.BLOBS, env.EDGE_MODEL_KEY);
 * const past = new PastKv(promptIds.length + maxTokens);
 * const { logits } = await forward(model, promptIds, past);
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

async function createModel(blobs: R2Bucket, key: string): Promise<EdgeModel> {
  const t0 = Date.now();
  const obj = await blobs.get(key);
  if (!obj) throw new Error(`edge model not found in R2 at ${key}; run node scripts/seed_local_storage.mjs`);
  const manifestBytes = new Uint8Array(await obj.arrayBuffer());
  const manifest = Manifest.parse(JSON.parse(new TextDecoder().decode(manifestBytes)));
  const producer = `sha256:${toHex(await crypto.subtle.digest("SHA-256", manifestBytes))}+${ORT_TAG}`;
  await (await withPrecompiledOrtWasm(() => ort.InferenceSession.create(INIT_MODEL))).release();
  const heap = ortHeap();
  const sessions = new Map<string, ort.InferenceSession>();
  for (const s of manifest.sessions) {
    const graph = await readVerified(blobs, key, manifest, s.graph, (n) => new Uint8Array(n));
    // Staging sized to this file, freed before the next: the largest file (the head) goes first, and
    // each later file's staging and weights fill the hole it leaves instead of growing the heap.
    const bytes = fileEntry(manifest, s.graph + ".data").bytes;
    const at = heap?.malloc(bytes) ?? 0;
    try {
      const data = await readVerified(blobs, key, manifest, s.graph + ".data", (n) => (at ? new Uint8Array(heap!.memory.buffer, at, n) : new Uint8Array(n)));
      const external = { path: s.graph.slice(s.graph.lastIndexOf("/") + 1) + ".data", data };
      sessions.set(s.name, await withPrecompiledOrtWasm(() => ort.InferenceSession.create(graph, sessionOptions(external))));
    } finally {
      if (at) heap!.free(at);
    }
  }
  const head = sessions.get("head");
  if (!head) throw new Error("edge model manifest has no head session");
  const groups = layerSessions(manifest).map((g) => ({ session: sessions.get(g.name)!, first: g.first, last: g.last }));
  const modelBytes = manifest.files.reduce((n, f) => n + f.bytes, 0);
  return { head, groups, manifest, producer, modelBytes, loadMs: Date.now() - t0 };
}

/**
 * File `name` of the model, read from R2 into `into(size)` and checked against the manifest's size
 * and SHA-256. Reads go through one 1 MiB bounce buffer (BYOB reads move their buffer, which wasm
 * memory cannot be), so reading leaves no garbage behind.
 */
async function readVerified(blobs: R2Bucket, key: string, manifest: Manifest, name: string, into: (bytes: number) => Uint8Array): Promise<Uint8Array> {
  const f = fileEntry(manifest, name);
  const obj = await blobs.get(modelFileKey(key, manifest, name));
  if (!obj) throw new Error(`edge model file ${name} not found in R2; run node scripts/seed_local_storage.mjs`);
  if (obj.size !== f.bytes) throw new Error(`edge model file ${name}: ${obj.size} bytes in R2, manifest says ${f.bytes}`);
  const out = into(f.bytes);
  const hasher = new crypto.DigestStream("SHA-256");
  const writer = hasher.getWriter();
  const reader = obj.body.getReader({ mode: "byob" });
  let bounce = new ArrayBuffer(1 << 20);
  let off = 0;
  while (off < f.bytes) {
    const { value, done } = await reader.read(new Uint8Array(bounce, 0, Math.min(f.bytes - off, bounce.byteLength)));
    if (done || !value) throw new Error(`edge model file ${name} ended at ${off} of ${f.bytes} bytes`);
    bounce = value.buffer as ArrayBuffer; // a BYOB read transfers the buffer; value views the same bytes
    out.set(value, off);
    await writer.write(value); // hashed before the next read reuses the buffer
    off += value.byteLength;
  }
  reader.releaseLock();
  await writer.close();
  if (toHex(await hasher.digest) !== f.sha256) throw new Error(`edge model file ${name}: SHA-256 differs from the manifest`);
  return out;
}

let zeroHidden: ort.Tensor | null = null;
let oneId: ort.Tensor | null = null;
const flag = (b: boolean) => new ort.Tensor("bool", new Uint8Array([b ? 1 : 0]), []);

/**
 * Runs `ids` at positions past.length .. past.length + ids.length - 1, appending their KV to `past`.
 * Returns the last position's logits.
 */
export async function forward(model: EdgeModel, ids: readonly number[], past: PastKv): Promise<{ logits: Float32Array; past: PastKv }> {
  if (ids.length === 0) throw new Error("forward needs at least one token");
  past.reserve(ids.length);
  let hidden: Float32Array | null = null;
  for (let a = 0; a < ids.length; a += PREFILL_CHUNK) hidden = await runChunk(model, ids.slice(a, a + PREFILL_CHUNK), past);
  const last = hidden!.subarray(hidden!.length - HIDDEN);
  oneId ??= new ort.Tensor("int64", new BigInt64Array(1), [1, 1]);
  const out = await model.head.run({ input_ids: oneId, hidden: new ort.Tensor("float32", last, [1, 1, HIDDEN]), want_logits: flag(true) });
  return { logits: out.out!.data as Float32Array, past };
}

/** Embeds `ids`, runs every decoder session, appends the KV; returns the last session's hidden states. */
async function runChunk(model: EdgeModel, ids: readonly number[], past: PastKv): Promise<Float32Array> {
  const P = past.length;
  zeroHidden ??= new ort.Tensor("float32", new Float32Array(HIDDEN), [1, 1, HIDDEN]);
  const inputIds = new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const positions = new ort.Tensor("int64", BigInt64Array.from(ids, (_, k) => BigInt(P + k)), [1, ids.length]);
  let h = (await model.head.run({ input_ids: inputIds, hidden: zeroHidden, want_logits: flag(false) })).out!;
  for (const g of model.groups) {
    const feeds: Record<string, ort.Tensor> = { hidden: h, position_ids: positions };
    for (let i = g.first; i < g.last; i++) {
      feeds[`past_key.${i}`] = past.tensor(i, 0);
      feeds[`past_value.${i}`] = past.tensor(i, 1);
    }
    const out = await g.session.run(feeds);
    for (let i = g.first; i < g.last; i++) {
      past.write(i, 0, f16Bits(out[`key.${i}`]!));
      past.write(i, 1, f16Bits(out[`value.${i}`]!));
    }
    h = out.hidden_out!;
  }
  past.advance(ids.length);
  return h.data as Float32Array;
}
