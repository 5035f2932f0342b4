/**
 * The edge model's KV chunks: the rows of a turn coded as `edge-kv-v1` (src/kv-codec/edge-kv.ts),
 * and restored chunks decoded straight into the turn's cache.
 */
import type { KvChunk } from "../backends/types";
import { decodeEdgeKv, EDGE_KV_CODEC, encodeEdgeKv } from "../kv-codec/edge-kv";
import { encodeChunkParts } from "../sessions/chunk";
import { HEAD_DIM, KV_HEADS, LAYERS, PastKv } from "./kv-cache";

/** The container bytes of a chunk holding positions [start, past.length) of `past`. */
export async function chunkOfPast(past: PastKv, start: number, producer: string): Promise<Uint8Array> {
  const dims = { layers: LAYERS, kvHeads: KV_HEADS, headDim: HEAD_DIM, tokens: past.length - start };
  const parts = encodeEdgeKv(dims, (l, kind, into) => into.set(past.rows(l, kind, start, past.length)));
  return encodeChunkParts(
    { producer, codec: EDGE_KV_CODEC, layers: LAYERS, kv_heads: KV_HEADS, head_dim: HEAD_DIM, token_start: start, token_end: past.length },
    parts,
  );
}

/**
 * The restored chunks this model can use: contiguous from token 0, our producer, codec and shape,
 * ending before the last prompt token (which must run to give the next logits). The first chunk
 * that does not fit ends the list; the rest of the prompt is recomputed.
 */
export function usableChunks(restored: readonly KvChunk[], producer: string, promptLength: number): KvChunk[] {
  const out: KvChunk[] = [];
  let end = 0;
  for (const c of restored) {
    const h = c.header;
    const fits =
      h.producer === producer && h.codec === EDGE_KV_CODEC && h.layers === LAYERS && h.kv_heads === KV_HEADS &&
      h.head_dim === HEAD_DIM && h.token_start === end && h.token_end > end && h.token_end < promptLength;
    if (!fits) break;
    out.push(c);
    end = h.token_end;
  }
  return out;
}

/**
 * Decodes `chunks` (from usableChunks) into `past` in order; stops at the first that does not decode
 * (its tokens and everything after are recomputed). Returns the tokens restored.
 */
export function restoreChunks(past: PastKv, chunks: readonly KvChunk[]): number {
  for (const c of chunks) {
    const tokens = c.header.token_end - c.header.token_start;
    past.reserve(tokens);
    const st = decodeEdgeKv(c.payload, { layers: LAYERS, kvHeads: KV_HEADS, headDim: HEAD_DIM, tokens }, (l, kind, values) => past.write(l, kind, values));
    if (st !== "OK") {
      console.warn(`edge KV chunk [${c.header.token_start}, ${c.header.token_end}) did not decode (${st}); recomputing from there`);
      break;
    }
    past.advance(tokens);
  }
  return past.length;
}
