// The shared spec-v1 test vectors (vectors/kv-codec/, written by make_vectors.py) as typed arrays,
// fetched from the host through the VECTORS service binding (vitest.config.ts) and checked against
// the manifest's SHA-256.
import { env } from "cloudflare:workers";
import manifest from "../../vectors/kv-codec/manifest.json";
import manifestV2 from "../../vectors/kv-codec/manifest-v2.json";

export { manifest, manifestV2 };
/** A `kind: "chunk"` entry of manifest.json. */
export interface ChunkCase {
  name: string;
  kind: string;
  mode: string;
  model: string;
  shape: number[];
  token_start: number;
  fingerprint: string;
  lanes?: number | null;
  block_steps?: number;
  pred: string;
  chunk: string;
  target?: string;
  codes?: string;
  exps?: string;
}

const bindings = env as unknown as { VECTORS: Fetcher };
const hashes = { ...manifest.sha256, ...manifestV2.sha256 } as Record<string, string>;

export async function vectorBytes(file: string): Promise<Uint8Array> {
  const res = await bindings.VECTORS.fetch(`http://vectors/kv-codec/${file}`);
  if (!res.ok) throw new Error(`vector ${file}: ${res.status} ${await res.text()}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const hex = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== hashes[file]) throw new Error(`vector ${file}: SHA-256 ${hex} != manifest ${hashes[file]}`);
  return bytes;
}

/** A chunk case with its inputs loaded: chunk bytes, float32 predictions, and the target. */
export interface LoadedChunk {
  c: ChunkCase;
  chunk: Uint8Array;
  pred: Float32Array;
  target?: Uint16Array;
  codes?: Uint8Array;
  exps?: Int8Array;
}

export async function loadChunkCase(c: ChunkCase): Promise<LoadedChunk> {
  const f32 = (b: Uint8Array) => new Float32Array(b.slice().buffer);
  const out: LoadedChunk = { c, chunk: await vectorBytes(c.chunk), pred: f32(await vectorBytes(c.pred)) };
  if (c.target) out.target = new Uint16Array((await vectorBytes(c.target)).slice().buffer);
  if (c.codes) out.codes = await vectorBytes(c.codes);
  if (c.exps) out.exps = new Int8Array((await vectorBytes(c.exps)).slice().buffer);
  return out;
}

export function expectOf(c: ChunkCase) {
  const [L, , KH, T, D] = c.shape as [number, number, number, number, number];
  return { fingerprint: c.fingerprint, layers: L, kvHeads: KH, headDim: D, tokenStart: c.token_start, tokenEnd: c.token_start + T };
}

/** Predictions handed out one layer at a time, as the speculator would. */
export function fixedPredictor(pred: Float32Array, layers: number) {
  const n = pred.length / layers;
  return { predict: (layer: number) => pred.subarray(layer * n, (layer + 1) * n) };
}
