/**
 * The HMAC a KV chunk written through a grant carries in its container header
 * (docs/storage-grants.md, "Chunk MAC"); Python twin: gpu-backend/reprise_gpu/storage/chunk_mac.py.
 *
 *   k_mac = HMAC-SHA256(GPU_BACKEND_SECRET, "reprise-chunk-mac-v1")
 *   mac   = hex(HMAC-SHA256(k_mac, "RPKV-mac-v1\n" + key + "\n" + producer + "\n" + codec + "\n" + layers + "\n"
 *              + kv_heads + "\n" + head_dim + "\n" + token_start + "\n" + token_end + "\n" + payload_bytes + "\n" + payload_sha256))
 *
 * The header's payload_sha256 covers the payload, so the MAC covers the whole chunk; the key binds
 * it to one session and position, so a chunk copied from elsewhere fails as surely as a rewritten one.
 */
import { hmacSha256, timingSafeEqual, toHex } from "../crypto";
import type { ChunkHeader } from "../sessions/chunk";

const LABEL = "reprise-chunk-mac-v1";

/** The container header fields the MAC covers: all of them (docs/kv-chunk-format.md). */
export type MacFields = ChunkHeader;

/** The chunk-MAC key derived from the edge/backend shared secret (surrounding whitespace stripped). */
export function macKey(secret: string): Promise<Uint8Array> {
  return hmacSha256(secret.trim(), LABEL);
}

/**
 * Hex MAC of a chunk header stored under `key`.
 *
 * @example
 * ```ts
 * const mac = await chunkMac(await macKey(env.GPU_BACKEND_SECRET), "sessions/sess_ab/0.kv", header);
 * ```
 */
export async function chunkMac(kMac: Uint8Array, key: string, h: MacFields): Promise<string> {
  const msg = ["RPKV-mac-v1", key, h.producer, h.codec, h.layers, h.kv_heads, h.head_dim, h.token_start, h.token_end, h.payload_bytes, h.payload_sha256].join("\n");
  return toHex(await hmacSha256(kMac, msg));
}

/** Whether `mac` is the MAC of `h` under `key` (constant-time compare). */
export async function verifyChunkMac(kMac: Uint8Array, key: string, h: MacFields, mac: unknown): Promise<boolean> {
  return typeof mac === "string" && /^[0-9a-f]{64}$/.test(mac) && timingSafeEqual(await chunkMac(kMac, key, h), mac);
}
