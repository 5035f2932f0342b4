/**
 * The KV chunk container (docs/kv-chunk-format.md): the KV cache of one token range of one session,
 * for all layers, as it is stored in R2 and sent to the GPU backend.
 *
 *   "RPKV" | u16 LE version | u32 LE header length | UTF-8 JSON header | payload
 *
 * Decoding treats the bytes as hostile: every length, range and the payload's SHA-256 is checked,
 * and a failure is returned as a value (`{ ok: false, error }`), never thrown. The caller's answer
 * to a bad chunk is to recompute from token ids.
 */

import { sha256Hex } from "../crypto";

/** "RPKV": Reprise KV. */
export const CHUNK_MAGIC = new Uint8Array([0x52, 0x50, 0x4b, 0x56]);
/** Bumped on any change a version-1 reader would misread. */
export const CHUNK_VERSION = 1;
/** magic (4) + version (2) + header length (4). */
export const CHUNK_PREFIX_BYTES = 10;
/** A header is a few hundred bytes; anything near this is not ours. */
export const MAX_HEADER_BYTES = 64 * 1024;
/** Codecs whose payload size follows from the header shape: bytes per value. */
export const RAW_CODEC_BYTES: Readonly<Record<string, number>> = { "raw-f32": 4, "raw-bf16": 2 };

export interface ChunkHeader {
  /** Fingerprint of everything the bytes depend on (weights hash, dtype, runtime/kernel versions). */
  producer: string;
  /** "raw-f32" | "raw-bf16" | "spec-v1" ... */
  codec: string;
  layers: number;
  kv_heads: number;
  head_dim: number;
  /** The chunk holds the KV of tokens [token_start, token_end). */
  token_start: number;
  token_end: number;
  payload_bytes: number;
  /** Lowercase hex SHA-256 of the payload. */
  payload_sha256: string;
}

/** A decoded chunk: its header, its payload (a view into `bytes`) and the container bytes. */
export interface KvChunk {
  header: ChunkHeader;
  payload: Uint8Array;
  bytes: Uint8Array;
}

export type ChunkResult = { ok: true; chunk: KvChunk } | { ok: false; error: string };

export type ChunkFields = Omit<ChunkHeader, "payload_bytes" | "payload_sha256">;

const LIMITS = { layers: 1024, kv_heads: 1024, head_dim: 4096, tokens: 2 ** 31 - 1, producer: 1024 };

/** Payload size of a raw codec chunk, or null for codecs whose size is not fixed by the shape. */
export function rawPayloadBytes(h: Pick<ChunkHeader, "codec" | "layers" | "kv_heads" | "head_dim" | "token_start" | "token_end">): number | null {
  const width = RAW_CODEC_BYTES[h.codec];
  if (width === undefined) return null;
  // layers x {K, V} x [kv_heads, tokens, head_dim]
  return h.layers * 2 * h.kv_heads * (h.token_end - h.token_start) * h.head_dim * width;
}

/**
 * Builds the container bytes for a payload.
 *
 * @example
 * ```ts
 * const bytes = await encodeChunk(
 *   { producer: "sha256:ab..+ort-web-1.30.0-wasm", codec: "raw-f32", layers: 30, kv_heads: 3, head_dim: 64, token_start: 0, token_end: 7 },
 *   payload, // 30 * 2 * 3 * 7 * 64 * 4 bytes
 * );
 * ```
 */
export async function encodeChunk(fields: ChunkFields, payload: Uint8Array): Promise<Uint8Array> {
  return encodeChunkParts(fields, [payload]);
}

/**
 * `encodeChunk` for a payload given as consecutive parts (a streamed coder's output): the container
 * is written once, without first joining the parts into a payload.
 */
export async function encodeChunkParts(fields: ChunkFields, parts: readonly Uint8Array[]): Promise<Uint8Array> {
  const payloadBytes = parts.reduce((n, p) => n + p.byteLength, 0);
  const hasher = new crypto.DigestStream("SHA-256");
  const writer = hasher.getWriter();
  for (const p of parts) await writer.write(p);
  await writer.close();
  const header: ChunkHeader = {
    producer: fields.producer,
    codec: fields.codec,
    layers: fields.layers,
    kv_heads: fields.kv_heads,
    head_dim: fields.head_dim,
    token_start: fields.token_start,
    token_end: fields.token_end,
    payload_bytes: payloadBytes,
    payload_sha256: Array.from(new Uint8Array(await hasher.digest), (b) => b.toString(16).padStart(2, "0")).join(""),
  };
  const problem = checkHeader(header);
  if (problem) throw new Error(`encodeChunk: ${problem}`);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(CHUNK_PREFIX_BYTES + json.byteLength + payloadBytes);
  const view = new DataView(out.buffer);
  out.set(CHUNK_MAGIC, 0);
  view.setUint16(4, CHUNK_VERSION, true);
  view.setUint32(6, json.byteLength, true);
  out.set(json, CHUNK_PREFIX_BYTES);
  let at = CHUNK_PREFIX_BYTES + json.byteLength;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/**
 * Checks everything except the payload hash (synchronous; `decodeChunk` adds the hash).
 *
 * @example
 * ```ts
 * const r = parseChunk(bytes);
 * if (!r.ok) console.warn("recomputing:", r.error);
 * ```
 */
export function parseChunk(bytes: Uint8Array): ChunkResult {
  if (!(bytes instanceof Uint8Array)) return fail("not bytes");
  if (bytes.byteLength < CHUNK_PREFIX_BYTES) return fail(`${bytes.byteLength} bytes is shorter than the prefix`);
  for (let i = 0; i < 4; i++) if (bytes[i] !== CHUNK_MAGIC[i]) return fail("bad magic");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(4, true);
  if (version !== CHUNK_VERSION) return fail(`unsupported version ${version}`);
  const headerLen = view.getUint32(6, true);
  if (headerLen === 0 || headerLen > MAX_HEADER_BYTES) return fail(`header length ${headerLen} out of range`);
  if (headerLen > bytes.byteLength - CHUNK_PREFIX_BYTES) return fail("header runs past the end");
  let header: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes.subarray(CHUNK_PREFIX_BYTES, CHUNK_PREFIX_BYTES + headerLen));
    header = JSON.parse(text);
  } catch {
    return fail("header is not UTF-8 JSON");
  }
  const problem = checkHeader(header);
  if (problem) return fail(problem);
  const h = header as ChunkHeader;
  const payloadStart = CHUNK_PREFIX_BYTES + headerLen;
  if (bytes.byteLength - payloadStart !== h.payload_bytes)
    return fail(`payload is ${bytes.byteLength - payloadStart} bytes, header says ${h.payload_bytes}`);
  const clean: ChunkHeader = {
    producer: h.producer, codec: h.codec, layers: h.layers, kv_heads: h.kv_heads, head_dim: h.head_dim,
    token_start: h.token_start, token_end: h.token_end, payload_bytes: h.payload_bytes, payload_sha256: h.payload_sha256,
  };
  return { ok: true, chunk: { header: clean, payload: bytes.subarray(payloadStart), bytes } };
}

/**
 * Full verification: structure, then the payload's SHA-256 (crypto.subtle). Never throws on bad bytes.
 *
 * @example
 * ```ts
 * const r = await decodeChunk(new Uint8Array(await obj.arrayBuffer()));
 * if (r.ok) restored.push(r.chunk);
 * ```
 */
export async function decodeChunk(bytes: Uint8Array): Promise<ChunkResult> {
  const r = parseChunk(bytes);
  if (!r.ok) return r;
  let digest: string;
  try {
    digest = await sha256Hex(r.chunk.payload);
  } catch {
    return fail("could not hash the payload");
  }
  if (digest !== r.chunk.header.payload_sha256) return fail("payload SHA-256 mismatch");
  return r;
}

function checkHeader(h: unknown): string | null {
  if (typeof h !== "object" || h === null || Array.isArray(h)) return "header is not a JSON object";
  const o = h as Record<string, unknown>;
  if (typeof o.producer !== "string" || o.producer.length === 0 || o.producer.length > LIMITS.producer) return "bad producer";
  if (typeof o.codec !== "string" || !/^[a-z0-9][a-z0-9.-]{0,31}$/.test(o.codec)) return "bad codec";
  for (const k of ["layers", "kv_heads", "head_dim"] as const) {
    const v = o[k];
    if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > LIMITS[k]) return `bad ${k}`;
  }
  const start = o.token_start, end = o.token_end;
  if (!Number.isSafeInteger(start) || (start as number) < 0 || (start as number) >= LIMITS.tokens) return "bad token_start";
  if (!Number.isSafeInteger(end) || (end as number) <= (start as number) || (end as number) > LIMITS.tokens) return "bad token_end";
  if (!Number.isSafeInteger(o.payload_bytes) || (o.payload_bytes as number) < 0) return "bad payload_bytes";
  if (typeof o.payload_sha256 !== "string" || !/^[0-9a-f]{64}$/.test(o.payload_sha256)) return "bad payload_sha256";
  const want = rawPayloadBytes(o as unknown as ChunkHeader);
  if (want !== null && want !== o.payload_bytes) return `payload_bytes ${o.payload_bytes} does not match the shape (${want})`;
  return null;
}

function fail(error: string): ChunkResult {
  return { ok: false, error };
}
