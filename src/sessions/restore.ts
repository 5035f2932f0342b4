/**
 * Loading a session's KV chunks back from R2 for the next turn.
 *
 * A chunk is used only if everything about it checks out: it starts where the previous one ended,
 * lies inside the part of the stored token ids that the new prompt repeats exactly, is present in
 * R2 with the recorded length and SHA-256, decodes as a container whose header agrees with the
 * record, and was made by a producer the chosen backend accepts. The first chunk that fails ends
 * the list: the backend recomputes everything after it from token ids. Slower, never wrong.
 */
import { sha256Hex } from "../crypto";
import { readChunk } from "../backends/edge";
import type { Backend, KvChunk } from "../backends/types";
import type { ChunkRef, SessionRecord } from "./store";

export interface Restored {
  /** Decoded, verified chunks covering [0, restoredTokens), in order. */
  restored: KvChunk[];
  /** Their records, for the next session record. */
  kept: ChunkRef[];
  restoredTokens: number;
}

/** Length of the common prefix of two token-id sequences. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * Chunks of `rec` that are safe to hand to `backend` for a prompt of `promptIds`.
 * The last prompt token is never covered: the backend has to run it to get the next logits.
 */
export async function loadVerifiedChunks(
  r2: R2Bucket,
  rec: SessionRecord,
  promptIds: readonly number[],
  backend: Backend,
): Promise<Restored> {
  const limit = Math.min(commonPrefix(rec.tokenIds, promptIds), promptIds.length - 1);
  // Cheap checks first, to fetch only chunks that could be used.
  const plan: ChunkRef[] = [];
  let end = 0;
  for (const ref of rec.chunks) {
    if (ref.tokenStart !== end || ref.tokenEnd <= ref.tokenStart || ref.tokenEnd > limit) break;
    if (!acceptsProducer(backend, ref.producer)) break;
    plan.push(ref);
    end = ref.tokenEnd;
  }
  const bodies = await Promise.all(plan.map((ref) => fetchBytes(r2, ref.r2Key)));
  const out: Restored = { restored: [], kept: [], restoredTokens: 0 };
  for (let i = 0; i < plan.length; i++) {
    const ref = plan[i]!;
    const bytes = bodies[i];
    if (!bytes || bytes.byteLength !== ref.bytes || (await sha256Hex(bytes)) !== ref.sha256) break;
    const chunk = await readChunk(bytes);
    if (
      !chunk ||
      chunk.tokenStart !== ref.tokenStart ||
      chunk.tokenEnd !== ref.tokenEnd ||
      chunk.producer !== ref.producer
    )
      break;
    out.restored.push(chunk.chunk);
    out.kept.push(ref);
    out.restoredTokens = ref.tokenEnd;
  }
  return out;
}

/** A backend that states its producer fingerprints only gets chunks made by one of them. */
export function acceptsProducer(backend: Backend, producer: string): boolean {
  const accepts = (backend as { acceptsProducer?: (p: string) => boolean }).acceptsProducer;
  return typeof accepts === "function" ? accepts.call(backend, producer) : true;
}

async function fetchBytes(r2: R2Bucket, key: string): Promise<Uint8Array | null> {
  try {
    const obj = await r2.get(key);
    return obj ? new Uint8Array(await obj.arrayBuffer()) : null;
  } catch (err) {
    console.warn("chunk read failed; recomputing from token ids", key, err);
    return null;
  }
}
