import type { MiddlewareHandler } from "hono";
import { randomHex, sha256Hex } from "../../crypto";
import type { ApiKeyRecord, AppEnv } from "../../env";
import { HttpError } from "../../errors";

/** KV key under which an API key's record is stored: only the SHA-256 of the key is ever kept. */
export const apiKeyKvKey = (hashHex: string) => `key:${hashHex}`;

/**
 * Makes a new API key and stores its hash; returns the key, which is shown once and never stored.
 *
 * @example
 * ```ts
 * const key = await createApiKey(env.SESSIONS, { tenant: "acme", name: "ci" });
 * ```
 */
export async function createApiKey(
  kv: KVNamespace,
  rec: Omit<ApiKeyRecord, "created"> & { created?: number },
): Promise<string> {
  const key = newApiKey();
  const record: ApiKeyRecord = { ...rec, created: rec.created ?? Math.floor(Date.now() / 1000) };
  await kv.put(apiKeyKvKey(await sha256Hex(key)), JSON.stringify(record));
  return key;
}

/** `rpk_` followed by 32 random bytes in hex. */
export function newApiKey(): string {
  return "rpk_" + randomHex(32);
}

export interface AuthOptions {
  /** How long a Worker location may serve a key record from its KV cache (seconds, >= 60). */
  cacheTtl?: number;
  /** How long an isolate keeps a key record in memory (ms); 0 turns the memory cache off. */
  memoryTtlMs?: number;
}

/** Isolate-local cache of key records: hash -> record and when it stops being trusted. */
const memory = new Map<string, { record: ApiKeyRecord; until: number }>();
const MEMORY_MAX = 1024;

/**
 * Bearer API-key authentication: hashes the presented key and looks up `key:<hash>` in SESSIONS.
 * Sets `c.var.apiKey`. Any failure is a 401 without saying which part failed.
 *
 * @example
 * ```ts
 * app.use("/v1/*", auth());
 * ```
 */
export function auth(opts: AuthOptions = {}): MiddlewareHandler<AppEnv> {
  const cacheTtl = Math.max(60, opts.cacheTtl ?? 60);
  // A revoked key keeps working for at most cacheTtl (KV's edge cache) plus this.
  const memoryTtlMs = opts.memoryTtlMs ?? 10_000;
  return async function auth(c, next) {
    const header = c.req.header("authorization") ?? "";
    // RFC 6750 §2.1: `Bearer` is case-insensitive, the token follows one space.
    const m = /^bearer +(\S+) *$/i.exec(header);
    if (!m) throw unauthorized("Missing bearer API key in the Authorization header.");
    const hash = await sha256Hex(m[1]!);
    const record = await lookup(c.env.SESSIONS, hash, cacheTtl, memoryTtlMs);
    if (!record) throw unauthorized("Incorrect API key provided.");
    c.set("apiKey", { ...record, hash });
    await next();
  };
}

async function lookup(kv: KVNamespace, hash: string, cacheTtl: number, memoryTtlMs: number) {
  const now = Date.now();
  const hit = memory.get(hash);
  if (hit && hit.until > now) return hit.record;
  const record = await kv.get<ApiKeyRecord>(apiKeyKvKey(hash), { type: "json", cacheTtl });
  if (!record || typeof record.tenant !== "string") {
    memory.delete(hash);
    return null;
  }
  if (memoryTtlMs > 0) {
    if (memory.size >= MEMORY_MAX) memory.delete(memory.keys().next().value!);
    memory.set(hash, { record, until: now + memoryTtlMs });
  }
  return record;
}

function unauthorized(message: string) {
  return new HttpError(401, {
    message,
    code: "invalid_api_key",
    headers: { "WWW-Authenticate": 'Bearer realm="reprise"' },
  });
}
