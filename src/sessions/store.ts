/**
 * Session records in the SESSIONS KV, KV-cache chunks in R2, and the per-session turn lease.
 *
 *   session:<id>           SessionRecord (JSON): transcript, token ids, chunk list, revision
 *   lease:<id>             Lease (JSON): the turn in flight, if any
 *   sessions/<id>/<n>.kv   (R2) chunk n, written once with a create-only precondition, never rewritten
 *
 * Concurrency. A turn (1) reads the record, (2) takes the lease from the session's SessionLease
 * Durable Object (src/durable/session-lease.ts), which refuses it while another turn holds a live
 * one (409 `session_busy`) or when the record read is older than the last commit, (3) generates,
 * (4) renews the lease, (5) creates its chunk object in R2 only if that key does not exist,
 * (6) re-reads the record and writes it with `revision + 1` only if the revision is still the one
 * the lease was taken at, (7) releases the lease, raising the object's committed revision.
 *
 * The Durable Object is the strongly consistent part: one atomic lease per session in every
 * location, and a revision fence against stale KV reads. The create-only R2 put and the revision
 * check in step 6 stay as a second line of defence (they are what kept turns apart when the lease
 * lived in KV). A turn that outlives its lease (LEASE_TTL_S) fails its renewal and commits nothing.
 */
import type { Bindings } from "../env";
import type { ChatMessage } from "../schemas";
import { randomHex } from "../crypto";
import { HttpError } from "../errors";

/** One stored KV-cache chunk: the KV of tokens [tokenStart, tokenEnd) for all layers. */
export interface ChunkRef {
  r2Key: string;
  tokenStart: number;
  tokenEnd: number;
  /** Fingerprint of what the bytes depend on (model, dtype, backend); see docs/kv-chunk-format.md. */
  producer: string;
  /** Hex SHA-256 of the whole container object as stored in R2. */
  sha256: string;
  bytes: number;
  /** The container's codec (raw-bf16, spec-v1, …); absent in records written before it was kept. */
  codec?: string;
  /** The chunk MAC the backend reported (chunks it wrote through a grant; docs/storage-grants.md). */
  mac?: string;
  /** A second form of the same token range (the policy stored both raw and coded). */
  alt?: ChunkVariant;
}

/** One stored form of a chunk's token range. */
export interface ChunkVariant {
  r2Key: string;
  codec: string;
  sha256: string;
  bytes: number;
  mac?: string;
}

/** What the resume policy did for the session's last turn, and its running counts. */
export interface SessionResume {
  last: {
    restore: string;
    store: string;
    restoredTokens: number;
    computedTokens: number;
    estimates: Record<string, number | null>;
    reason: string;
    fallbacks: string[];
    /** What the backend measured in that turn (its `stats` event, src/sessions/rates.ts TurnStats). */
    measured: Record<string, number> | null;
  } | null;
  counters: Record<string, number>;
}

export interface SessionRecord {
  id: string;
  tenant: string;
  created: number;
  /** Bumped by every committed turn; a turn commits only over the revision it started from. */
  revision: number;
  turns: number;
  /** The whole transcript, including the assistant's replies. */
  messages: ChatMessage[];
  /** Token ids of the conversation so far (prompt + generated) — what the chunks cover a prefix of. */
  tokenIds: number[];
  /** Contiguous from token 0, in order. */
  chunks: ChunkRef[];
  /** Number for the next chunk object; never reused, even when chunks are dropped. */
  nextChunk: number;
  /** The resume policy's last decision and counts for this session. */
  resume?: SessionResume;
}

export interface Lease {
  holder: string;
  revision: number;
  expires: number;
}

/** Longest a turn may hold a session; a crashed turn blocks the session at most this long. */
export const LEASE_TTL_S = 300;

const recordKey = (id: string) => `session:${id}`;
const leaseObject = (env: Pick<Bindings, "SESSION_LEASES">, id: string) => env.SESSION_LEASES.get(env.SESSION_LEASES.idFromName(id));
export const chunkPrefix = (id: string) => `sessions/${id}/`;
export const chunkKey = (id: string, n: number) => `sessions/${id}/${n}.kv`;
/** The second form of chunk n, when both raw and coded are stored. */
export const altChunkKey = (id: string, n: number) => `sessions/${id}/${n}.alt.kv`;

export function newSessionId(): string {
  return "sess_" + randomHex(16);
}

export async function createSession(kv: KVNamespace, tenant: string): Promise<SessionRecord> {
  const rec: SessionRecord = {
    id: newSessionId(),
    tenant,
    created: Math.floor(Date.now() / 1000),
    revision: 0,
    turns: 0,
    messages: [],
    tokenIds: [],
    chunks: [],
    nextChunk: 0,
  };
  await putRecord(kv, rec);
  return rec;
}

/** The session if it exists and belongs to `tenant`; otherwise 404 (another tenant's id is not revealed). */
export async function getSession(kv: KVNamespace, id: string, tenant: string): Promise<SessionRecord> {
  const rec = await kv.get<SessionRecord>(recordKey(id), "json");
  if (!rec || rec.tenant !== tenant) throw sessionNotFound(id);
  return rec;
}

export function putRecord(kv: KVNamespace, rec: SessionRecord): Promise<void> {
  return kv.put(recordKey(rec.id), JSON.stringify(rec));
}

/** Deletes the record first (new turns then 404, an in-flight turn's commit fails), then every blob. */
export async function deleteSession(env: Pick<Bindings, "SESSIONS" | "BLOBS" | "SESSION_LEASES">, id: string, tenant: string): Promise<number> {
  const { SESSIONS: kv, BLOBS: r2 } = env;
  await getSession(kv, id, tenant);
  await kv.delete(recordKey(id));
  let deleted = 0;
  let cursor: string | undefined;
  do {
    const page = await r2.list({ prefix: chunkPrefix(id), cursor });
    if (page.objects.length) await r2.delete(page.objects.map((o) => o.key));
    deleted += page.objects.length;
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  await leaseObject(env, id).clear();
  return deleted;
}

/**
 * Takes the turn lease for `rec`, or throws 409 `session_busy` when another turn holds a live one
 * (or when `rec` is older than the session's last committed turn: a stale read, retry).
 *
 * @example
 * ```ts
 * const lease = await acquireLease(env, rec);
 * try { ... } finally { await releaseLease(env, rec.id, lease); }
 * ```
 */
export async function acquireLease(env: Pick<Bindings, "SESSION_LEASES">, rec: SessionRecord): Promise<Lease> {
  const grant = await leaseObject(env, rec.id).acquire(rec.revision, LEASE_TTL_S * 1000);
  if (!grant.ok) throw sessionBusy(rec.id);
  return { holder: grant.holder, revision: rec.revision, expires: grant.expires };
}

/** True if `lease` is still held (and now extended): a turn checks this right before it commits. */
export async function renewLease(env: Pick<Bindings, "SESSION_LEASES">, id: string, lease: Lease): Promise<boolean> {
  return leaseObject(env, id).renew(lease.holder, LEASE_TTL_S * 1000);
}

/**
 * Drops the lease if it is still ours (a lease that expired and was retaken is left alone);
 * `committedRevision` is the revision this turn wrote, if it committed.
 */
export async function releaseLease(env: Pick<Bindings, "SESSION_LEASES">, id: string, lease: Lease, committedRevision?: number): Promise<void> {
  await leaseObject(env, id).release(lease.holder, committedRevision);
}

/** Raw chunk bytes with what the record will say about them. */
export interface NewChunk {
  bytes: Uint8Array;
  tokenStart: number;
  tokenEnd: number;
  producer: string;
  sha256: string;
  codec?: string;
}

/**
 * Commits a finished turn: creates the chunk object (create-only), then writes the record with
 * `revision + 1` if nobody committed since the lease was taken. Throws 409 `session_busy` on a
 * conflict and 404 if the session was deleted meanwhile; in both cases our blob is removed again.
 */
export async function commitTurn(
  kv: KVNamespace,
  r2: R2Bucket,
  lease: Lease,
  next: Omit<SessionRecord, "revision" | "nextChunk" | "chunks"> & { chunks: ChunkRef[]; nextChunk: number },
  chunk: NewChunk | null,
  stored: ChunkRef | null = null,
): Promise<SessionRecord> {
  let nextChunk = next.nextChunk;
  const chunks = [...next.chunks];
  let written: string | null = null;
  const granted = stored ? [stored.r2Key, ...(stored.alt ? [stored.alt.r2Key] : [])] : [];
  if (stored) {
    // Written by the backend through this turn's create grants (src/turns/stored.ts checked it).
    chunks.push(stored);
    nextChunk += 1;
  } else if (chunk) {
    written = await createChunkObject(r2, next.id, nextChunk, chunk, lease);
    chunks.push({
      r2Key: written,
      tokenStart: chunk.tokenStart,
      tokenEnd: chunk.tokenEnd,
      producer: chunk.producer,
      sha256: chunk.sha256,
      bytes: chunk.bytes.byteLength,
      ...(chunk.codec ? { codec: chunk.codec } : {}),
    });
    nextChunk += 1;
  }
  const fresh = await kv.get<SessionRecord>(recordKey(next.id), "json");
  if (!fresh || fresh.tenant !== next.tenant || fresh.revision !== lease.revision) {
    if (written) await r2.delete(written);
    if (granted.length) await r2.delete(granted);
    if (!fresh || fresh.tenant !== next.tenant) throw sessionNotFound(next.id);
    throw sessionBusy(next.id);
  }
  const rec: SessionRecord = { ...next, chunks, nextChunk, revision: lease.revision + 1 };
  await putRecord(kv, rec);
  return rec;
}

async function createChunkObject(r2: R2Bucket, id: string, n: number, chunk: NewChunk, lease: Lease): Promise<string> {
  const key = chunkKey(id, n);
  const put = () =>
    r2.put(key, chunk.bytes, {
      // If-None-Match: * — create-only, so a chunk is never overwritten (append-only).
      onlyIf: { etagDoesNotMatch: "*" },
      sha256: chunk.sha256,
      customMetadata: { lease: lease.holder, tokenStart: String(chunk.tokenStart), tokenEnd: String(chunk.tokenEnd) },
    });
  if (await put()) return key;
  // The number is taken. Either a concurrent turn wrote it (busy), or a turn died between its blob
  // and its record write; such an orphan is older than any live lease and no record lists it.
  const head = await r2.head(key);
  if (head && Date.now() - head.uploaded.getTime() > LEASE_TTL_S * 1000) {
    await r2.delete(key);
    if (await put()) return key;
  }
  throw sessionBusy(id);
}

export function sessionNotFound(id: string) {
  return new HttpError(404, { message: `No session '${id}'.`, param: "session_id", code: "session_not_found" });
}

export function sessionBusy(id: string) {
  return new HttpError(409, {
    message: `Another turn on session '${id}' is in flight; retry when it has finished.`,
    param: "session_id",
    code: "session_busy",
  });
}

/** What `GET /v1/sessions/:id` shows. */
export function sessionView(rec: SessionRecord) {
  return {
    id: rec.id,
    object: "session",
    created: rec.created,
    turns: rec.turns,
    tokens: rec.tokenIds.length,
    cached_tokens: rec.chunks.length ? rec.chunks[rec.chunks.length - 1]!.tokenEnd : 0,
    chunks: rec.chunks.length,
    stored_bytes: rec.chunks.reduce((s, c) => s + c.bytes + (c.alt?.bytes ?? 0), 0),
    chunk_codecs: rec.chunks.map((c) => [c.codec ?? "unknown", ...(c.alt ? [c.alt.codec] : [])].join("+")),
    resume: rec.resume ?? { last: null, counters: {} },
    messages: rec.messages,
  };
}
