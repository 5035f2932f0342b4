/**
 * The grant path of a resumed turn (docs/storage-grants.md): instead of loading chunk bytes into the
 * Worker, the edge picks which stored chunks the backend should fetch (the resume policy's decision),
 * mints read grants for exactly those and create grants for the chunk(s) of this turn, and records
 * what the backend reports having written. Chunk bytes never enter the isolate.
 */
import type { Backend, GrantedChunk, StoragePlan, StoredChunkReport } from "../backends/types";
import { toHex } from "../crypto";
import { mintGrants, MAX_OBJECT_BYTES } from "../storage/grants";
import type { GrantSigner, ObjectRequest } from "../storage/grants";
import { commonPrefix } from "./restore";
import type { ResumeDecision, StoredRange } from "./resume-policy";
import { altChunkKey, chunkKey } from "./store";
import type { ChunkRef, ChunkVariant, SessionRecord } from "./store";

const isRaw = (codec: string | undefined) => codec === undefined || codec.startsWith("raw-");

/** The forms of a stored chunk: primary and, when both were stored, the other one. */
function variants(ref: ChunkRef): ChunkVariant[] {
  const primary: ChunkVariant = { r2Key: ref.r2Key, codec: ref.codec ?? "raw-bf16", sha256: ref.sha256, bytes: ref.bytes, ...(ref.mac ? { mac: ref.mac } : {}) };
  return ref.alt ? [primary, ref.alt] : [primary];
}

export interface Candidates {
  /** Chunks that pass the cheap checks, contiguous from token 0, all inside the reusable prefix. */
  refs: ChunkRef[];
  ranges: StoredRange[];
  /** End of `refs` (0 when none). */
  tokens: number;
}

/**
 * Stored chunks the backend could use for `promptIds`, before any byte is read: contiguous from 0,
 * inside the part of the stored token ids the prompt repeats (never its last token), made by a
 * producer the backend accepts.
 */
export function candidateChunks(rec: SessionRecord, promptIds: readonly number[], accepts: (producer: string) => boolean): Candidates {
  const limit = Math.min(commonPrefix(rec.tokenIds, promptIds), promptIds.length - 1);
  const refs: ChunkRef[] = [];
  let end = 0;
  for (const ref of rec.chunks) {
    if (ref.tokenStart !== end || ref.tokenEnd <= ref.tokenStart || ref.tokenEnd > limit || !accepts(ref.producer)) break;
    refs.push(ref);
    end = ref.tokenEnd;
  }
  const ranges = refs.map((r) => {
    const v = variants(r);
    return { tokenStart: r.tokenStart, tokenEnd: r.tokenEnd, raw: v.some((x) => isRaw(x.codec)), coded: v.some((x) => !isRaw(x.codec)) };
  });
  return { refs, ranges, tokens: end };
}

export interface GrantPlan {
  plan: StoragePlan;
  /** The chunk records the session keeps if the backend's new chunk continues them. */
  kept: ChunkRef[];
  /** Object keys the create grants name, primary first. */
  putKeys: string[];
}

/**
 * The storage plan for one turn: read grants for the chunks `decision` restores (raw or coded form
 * per range), create grants for the forms it stores, all minted now for this turn only.
 * Objects already at the create keys are orphans of a turn that died before its commit (we hold the
 * session's lease, and grants expire before leases do): they are removed first.
 */
export async function grantPlan(
  signer: GrantSigner,
  r2: R2Bucket,
  rec: SessionRecord,
  cand: Candidates,
  decision: ResumeDecision,
  opts: { canCode: boolean; maxNewTokens: number; rawBytesPerToken: number },
): Promise<GrantPlan> {
  const T = cand.tokens;
  const from = decision.restore === "split" ? decision.splitAt : 0;
  const wanted = decision.restore === "recompute" ? [] : cand.refs.filter((r) => r.tokenStart >= from);
  const chosen = wanted.map((ref) => {
    const v = variants(ref);
    const pick = decision.restore === "coded" ? (v.find((x) => !isRaw(x.codec)) ?? v[0]!) : (v.find((x) => isRaw(x.codec)) ?? v[0]!);
    return { ref, v: pick };
  });
  const forms: ("raw" | "coded")[] = { none: [], raw: ["raw"], coded: [opts.canCode ? "coded" : "raw"], both: opts.canCode ? ["coded", "raw"] : ["raw"] }[decision.store] as ("raw" | "coded")[];
  const putKeys = forms.map((_, i) => (i === 0 ? chunkKey(rec.id, rec.nextChunk) : altChunkKey(rec.id, rec.nextChunk)));
  await Promise.all(putKeys.map(async (k) => (await r2.head(k)) && r2.delete(k)));
  // Tokens the new chunk can cover at most: the prompt past the kept chain plus the completion.
  const maxTokens = Math.max(1, opts.maxNewTokens);
  const maxBytes = Math.min(MAX_OBJECT_BYTES, maxTokens * opts.rawBytesPerToken + (1 << 20));
  const objects: ObjectRequest[] = [
    ...chosen.map((c) => ({ key: c.v.r2Key, mode: "read" as const })),
    ...putKeys.map((key) => ({ key, mode: "create" as const, maxBytes })),
  ];
  const grants = await mintGrants(signer, objects);
  const chunks: GrantedChunk[] = chosen.map((c, i) => ({
    grant: grants[i]!,
    tokenStart: c.ref.tokenStart,
    tokenEnd: c.ref.tokenEnd,
    bytes: c.v.bytes,
    sha256: c.v.sha256,
    codec: c.v.codec,
    mac: c.v.mac ?? null,
  }));
  const put = forms.map((form, i) => ({ grant: grants[chosen.length + i]!, form }));
  return { plan: { chunks, restoreFrom: from, exportFrom: T, put }, kept: cand.refs, putKeys };
}

/**
 * The chunk record for what the backend reports having stored, after checking the objects with a
 * HEAD (no bytes read): each one at a key this turn granted, with the reported size and, when R2 holds
 * one, the reported SHA-256. Null when nothing checks out (the next turn recomputes those tokens).
 */
export async function storedChunkRef(r2: R2Bucket, putKeys: readonly string[], reports: readonly StoredChunkReport[]): Promise<ChunkRef | null> {
  const ok: StoredChunkReport[] = [];
  for (const key of putKeys) {
    const rep = reports.find((r) => r.key === key);
    if (!rep || rep.tokenEnd <= rep.tokenStart || !/^[0-9a-f]{64}$/.test(rep.mac) || !/^[0-9a-f]{64}$/.test(rep.sha256)) continue;
    const head = await r2.head(key);
    const sum = head?.checksums.sha256;
    const hex = sum ? toHex(sum) : null;
    if (!head || head.size !== rep.bytes || (hex !== null && hex !== rep.sha256)) {
      console.warn("backend-reported chunk does not match the stored object; not recorded", key);
      continue;
    }
    if (ok.length && (rep.tokenStart !== ok[0]!.tokenStart || rep.tokenEnd !== ok[0]!.tokenEnd || rep.producer !== ok[0]!.producer)) continue;
    ok.push(rep);
  }
  const [p, alt] = ok;
  if (!p) return null;
  return {
    r2Key: p.key, tokenStart: p.tokenStart, tokenEnd: p.tokenEnd, producer: p.producer, sha256: p.sha256, bytes: p.bytes, codec: p.codec, mac: p.mac,
    ...(alt ? { alt: { r2Key: alt.key, codec: alt.codec, sha256: alt.sha256, bytes: alt.bytes, mac: alt.mac } } : {}),
  };
}

/** Whether `backend` reads and writes storage itself through grants (the GPU backend does). */
export function fetchesStorage(backend: Backend): boolean {
  return (backend as { fetchesStorage?: boolean }).fetchesStorage === true;
}
