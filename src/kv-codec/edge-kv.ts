/**
 * `edge-kv-v1`: the edge model's KV chunks, coded losslessly by the wasm codec (wasm/src/edge_kv.c;
 * format in docs/kv-chunk-format.md). Values are float16 bit patterns, layout
 * [layers][K, V][tokens][kv_heads][head_dim]; the payload is a header and one block per (layer, K/V),
 * coded and decoded one block at a time, so the codec's wasm memory holds ~200 KB whatever the chunk.
 */
import { CodecStatus, codecWasm, statusName } from "./wasm";

export const EDGE_KV_CODEC = "edge-kv-v1";
const HEADER = 50;
const BLOCK_HEAD = 9;

export interface EdgeKvDims {
  layers: number;
  kvHeads: number;
  tokens: number;
  headDim: number;
}

/**
 * Codes the chunk whose (layer, kind) blocks `fill` writes (into: tokens * kvHeads * headDim float16
 * bits, a view into wasm memory). Returns the payload as parts: the header, then one per block.
 *
 * @example
 * ```ts
 * const parts = encodeEdgeKv(dims, (l, k, into) => into.set(past.rows(l, k, start, end)));
 * ```
 */
export function encodeEdgeKv(d: EdgeKvDims, fill: (layer: number, kind: 0 | 1, into: Uint16Array) => void): Uint8Array[] {
  const w = codecWasm();
  const n = d.tokens * d.kvHeads * d.headDim;
  const st = statusName(w.fn.edge_kv_begin(d.layers, d.kvHeads, d.tokens, d.headDim));
  if (st !== "OK") throw new Error(`edge-kv-v1: cannot code a chunk of ${JSON.stringify(d)} (${st})`);
  const parts: Uint8Array[] = [];
  for (let l = 0; l < d.layers; l++)
    for (const kind of [0, 1] as const) {
      w.reset();
      const vals = w.alloc(2 * n);
      fill(l, kind, w.u16(vals, n));
      const cap = BLOCK_HEAD + 2 * n;
      const out = w.alloc(cap);
      const len = w.fn.edge_kv_encode_block(vals, out, cap);
      if (len === 0) throw new Error("edge-kv-v1: the encoder refused a block (a codec bug)");
      parts.push(w.u8(out, len).slice());
    }
  w.reset();
  const h = w.alloc(HEADER);
  if (w.fn.edge_kv_header(h) !== 0) throw new Error("edge-kv-v1: no header after the last block (a codec bug)");
  parts.unshift(w.u8(h, HEADER).slice());
  return parts;
}

/**
 * Decodes `payload` for the expected dimensions, handing each (layer, kind) block to `take` (a view
 * into wasm memory, valid during the call) as it is decoded. The bytes are hostile: any problem is a
 * status, and blocks handed over before a failure must be discarded by the caller.
 */
export function decodeEdgeKv(payload: Uint8Array, d: EdgeKvDims, take: (layer: number, kind: 0 | 1, values: Uint16Array) => void): CodecStatus {
  const w = codecWasm();
  const n = d.tokens * d.kvHeads * d.headDim;
  let st = statusName(w.fn.edge_kv_begin(d.layers, d.kvHeads, d.tokens, d.headDim));
  if (st !== "OK") return st;
  w.reset();
  st = statusName(w.fn.edge_kv_check_header(w.put(payload.subarray(0, HEADER)), Math.min(HEADER, payload.length)));
  if (st !== "OK") return st;
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let at = HEADER;
  for (let l = 0; l < d.layers; l++)
    for (const kind of [0, 1] as const) {
      if (at + BLOCK_HEAD > payload.length) return "TRUNCATED";
      const end = at + BLOCK_HEAD + view.getUint32(at + 1, true) + view.getUint32(at + 5, true);
      if (end > payload.length) return "TRUNCATED";
      w.reset();
      const block = w.put(payload.subarray(at, end));
      const out = w.alloc(2 * n);
      st = statusName(w.fn.edge_kv_decode_block(block, end - at, out));
      if (st !== "OK") return st;
      take(l, kind, w.u16(out, n));
      at = end;
    }
  if (at !== payload.length) return "CORRUPT";
  return statusName(w.fn.edge_kv_end());
}
