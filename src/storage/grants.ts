/**
 * Storage grants: short-lived signed URLs that let a GPU backend read or create exactly the
 * objects of one turn, so that object bytes go between storage and the backend and never sit in
 * the Worker (docs/storage-grants.md).
 *
 * Two signers, one shape:
 *   - "worker": URLs of this Worker's own streaming route (src/routes/storage.ts), signed with
 *     HMAC-SHA256 under STORAGE_GRANT_SECRET, a key only the edge holds. Local runs use these: the
 *     route pipes R2 bodies through without buffering.
 *       GET|PUT {origin}/storage/v1/objects/{key}?mode=read|create&exp={unix s}[&max={bytes}]&sig={hex}
 *       sig = hex(HMAC-SHA256(secret, "reprise-grant-v1\n" + method + "\n" + key + "\n" + mode + "\n" + exp + "\n" + max))
 *   - "r2-s3": R2's S3-compatible presigned URLs (AWS Signature Version 4, query-string form, via
 *     aws4fetch), in production. A create grant signs `If-None-Match: *`, so the client must send it
 *     and R2 refuses to overwrite an existing key.
 *
 * A grant names one object and one mode: "read" (GET) or "create" (PUT, create-only). It expires
 * within minutes (MAX_GRANT_TTL_S). Nothing here is specific to KV chunks: adapters and any other
 * object go through the same calls.
 */
import { AwsV4Signer } from "aws4fetch";
import { hmacSha256, toHex, timingSafeEqual } from "../crypto";
import type { Bindings } from "../env";

export type GrantMode = "read" | "create";

/** One object a turn needs. `maxBytes` bounds a create (the route refuses larger bodies). */
export interface ObjectRequest {
  key: string;
  mode: GrantMode;
  maxBytes?: number;
}

/** What the backend receives for one object: the request to make, exactly. */
export interface Grant {
  key: string;
  mode: GrantMode;
  method: "GET" | "PUT";
  url: string;
  /** Headers the client must send as they are (a create's `if-none-match: *`). */
  headers: Record<string, string>;
  /** Unix seconds after which the URL is refused. */
  expires: number;
  maxBytes?: number;
}

export type GrantSigner =
  | { kind: "worker"; origin: string; secret: string }
  | { kind: "r2-s3"; endpoint: string; bucket: string; accessKeyId: string; secretAccessKey: string; region: string };

/** Grants live long enough for a backend to start its transfers, not for a session. */
export const DEFAULT_GRANT_TTL_S = 120;
export const MAX_GRANT_TTL_S = 600;
/** R2's single-PUT limit (5 GiB): a create grant never allows more. */
export const MAX_OBJECT_BYTES = 5 * 1024 ** 3;
/** Path prefix of the Worker's streaming route. */
export const OBJECT_ROUTE = "/storage/v1/objects/";

const KEY_RE = /^[A-Za-z0-9_-][A-Za-z0-9._-]*(\/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$/;

/** Object keys a grant may name: `/`-separated segments of `[A-Za-z0-9._-]`, none starting with `.`, at most 512 chars. */
export function validKey(key: string): boolean {
  return typeof key === "string" && key.length > 0 && key.length <= 512 && KEY_RE.test(key);
}

/** The signer configured in `env`, or null when grants are off (the edge then inlines chunks). */
export function grantSigner(
  env: Pick<Bindings, "STORAGE_GRANTS" | "STORAGE_GRANT_ORIGIN" | "STORAGE_GRANT_SECRET" | "R2_S3_ENDPOINT" | "R2_S3_BUCKET" | "R2_ACCESS_KEY_ID" | "R2_SECRET_ACCESS_KEY">,
): GrantSigner | null {
  const kind = (env.STORAGE_GRANTS ?? "").trim();
  if (kind === "worker") {
    const origin = (env.STORAGE_GRANT_ORIGIN ?? "").trim();
    const secret = (env.STORAGE_GRANT_SECRET ?? "").trim();
    return origin && secret ? { kind, origin, secret } : null;
  }
  if (kind === "r2-s3") {
    const [endpoint, bucket, accessKeyId, secretAccessKey] = [env.R2_S3_ENDPOINT, env.R2_S3_BUCKET, env.R2_ACCESS_KEY_ID, env.R2_SECRET_ACCESS_KEY].map((v) => (v ?? "").trim());
    return endpoint && bucket && accessKeyId && secretAccessKey ? { kind, endpoint, bucket, accessKeyId, secretAccessKey, region: "auto" } : null;
  }
  return null;
}

/**
 * Signed URLs for `objects`, all expiring `ttlS` seconds from `now`.
 *
 * @example
 * ```ts
 * const [read, create] = await mintGrants(signer, [
 *   { key: "sessions/sess_ab/0.kv", mode: "read" },
 *   { key: "sessions/sess_ab/1.kv", mode: "create", maxBytes: 64 << 20 },
 * ]);
 * // read.url   = "http://127.0.0.1:8787/storage/v1/objects/sessions/sess_ab/0.kv?mode=read&exp=…&sig=…"
 * // create.method = "PUT", create.headers = { "if-none-match": "*" }
 * ```
 */
export async function mintGrants(
  signer: GrantSigner,
  objects: readonly ObjectRequest[],
  opts: { ttlS?: number; now?: number } = {},
): Promise<Grant[]> {
  const ttl = Math.min(Math.max(1, Math.floor(opts.ttlS ?? DEFAULT_GRANT_TTL_S)), MAX_GRANT_TTL_S);
  const now = Math.floor((opts.now ?? Date.now()) / 1000);
  const expires = now + ttl;
  const out: Grant[] = [];
  for (const o of objects) {
    if (!validKey(o.key)) throw new Error(`mintGrants: invalid object key ${JSON.stringify(o.key)}`);
    if (o.mode !== "read" && o.mode !== "create") throw new Error(`mintGrants: invalid mode ${String(o.mode)}`);
    const maxBytes = o.mode === "create" ? Math.min(Math.max(0, Math.floor(o.maxBytes ?? MAX_OBJECT_BYTES)), MAX_OBJECT_BYTES) : undefined;
    out.push(signer.kind === "worker" ? await workerGrant(signer, o.key, o.mode, expires, maxBytes) : await s3Grant(signer, o.key, o.mode, now, ttl, maxBytes));
  }
  return out;
}

function methodOf(mode: GrantMode): "GET" | "PUT" {
  return mode === "read" ? "GET" : "PUT";
}

/** `/`-separated key to a URL path with each segment percent-encoded. */
function keyPath(key: string): string {
  return key.split("/").map(encodeURIComponent).join("/");
}

function grantMessage(method: string, key: string, mode: string, exp: string, max: string): string {
  return `reprise-grant-v1\n${method}\n${key}\n${mode}\n${exp}\n${max}`;
}

async function workerGrant(s: Extract<GrantSigner, { kind: "worker" }>, key: string, mode: GrantMode, expires: number, maxBytes?: number): Promise<Grant> {
  const method = methodOf(mode);
  const max = maxBytes === undefined ? "" : String(maxBytes);
  const sig = toHex(await hmacSha256(s.secret, grantMessage(method, key, mode, String(expires), max)));
  const url = new URL(OBJECT_ROUTE.slice(1) + keyPath(key), s.origin.endsWith("/") ? s.origin : s.origin + "/");
  url.searchParams.set("mode", mode);
  url.searchParams.set("exp", String(expires));
  if (maxBytes !== undefined) url.searchParams.set("max", max);
  url.searchParams.set("sig", sig);
  return { key, mode, method, url: url.href, headers: mode === "create" ? { "if-none-match": "*" } : {}, expires, ...(maxBytes === undefined ? {} : { maxBytes }) };
}

async function s3Grant(s: Extract<GrantSigner, { kind: "r2-s3" }>, key: string, mode: GrantMode, now: number, ttl: number, maxBytes?: number): Promise<Grant> {
  const method = methodOf(mode);
  const url = new URL(`${s.endpoint.replace(/\/+$/, "")}/${encodeURIComponent(s.bucket)}/${keyPath(key)}`);
  url.searchParams.set("X-Amz-Expires", String(ttl));
  // A signed `if-none-match` must be sent with exactly this value: create-only, enforced by R2.
  const headers: Record<string, string> = mode === "create" ? { "if-none-match": "*" } : {};
  const signed = await presignS3({ url, method, headers, accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey, region: s.region, datetime: amzDate(now) });
  return { key, mode, method, url: signed, headers, expires: now + ttl, ...(maxBytes === undefined ? {} : { maxBytes }) };
}

/** `YYYYMMDDTHHMMSSZ` for unix seconds `t`. */
export function amzDate(t: number): string {
  return new Date(t * 1000).toISOString().replace(/[:-]|\.\d{3}/g, "");
}

/**
 * A presigned S3 URL (SigV4, query string, `UNSIGNED-PAYLOAD`), signing `host` and `headers`.
 * Exported for the published AWS test vector (test/storage-grants.test.ts).
 */
export async function presignS3(o: {
  url: URL;
  method: string;
  headers: Record<string, string>;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  datetime: string;
}): Promise<string> {
  const signer = new AwsV4Signer({
    url: o.url.href,
    method: o.method,
    headers: o.headers,
    accessKeyId: o.accessKeyId,
    secretAccessKey: o.secretAccessKey,
    service: "s3",
    region: o.region,
    datetime: o.datetime,
    signQuery: true,
  });
  return (await signer.sign()).url.href;
}

export type GrantCheck = { ok: true; key: string; mode: GrantMode; expires: number; maxBytes?: number } | { ok: false; status: 400 | 403 | 405; code: string; message: string };

/**
 * Checks a request to the Worker's streaming route: the key, the method against the mode, the
 * expiry (not past, not further than MAX_GRANT_TTL_S ahead) and the signature (constant time).
 * A refusal is a value, never a throw.
 */
export async function verifyWorkerGrant(secret: string, method: string, key: string, query: URLSearchParams, now = Date.now()): Promise<GrantCheck> {
  const refuse = (status: 400 | 403 | 405, code: string, message: string): GrantCheck => ({ ok: false, status, code, message });
  if (!validKey(key)) return refuse(400, "bad_key", "object key is not valid");
  const mode = query.get("mode");
  if (mode !== "read" && mode !== "create") return refuse(403, "bad_grant", "mode must be read or create");
  const m = method === "HEAD" ? "GET" : method;
  if (m !== methodOf(mode)) return refuse(405, "wrong_method", `a ${mode} grant allows ${methodOf(mode)} only`);
  const exp = query.get("exp") ?? "";
  const max = query.get("max") ?? "";
  if (!/^\d{1,12}$/.test(exp)) return refuse(403, "bad_grant", "malformed expiry");
  // A read grant has no size bound at all (not even an empty one); a create grant has one.
  if ((mode === "create") !== query.has("max") || (mode === "create" && !/^\d{1,12}$/.test(max))) return refuse(403, "bad_grant", "malformed size bound");
  const sig = query.get("sig") ?? "";
  if (!/^[0-9a-f]{64}$/.test(sig)) return refuse(403, "bad_grant", "malformed signature");
  const want = toHex(await hmacSha256(secret, grantMessage(m, key, mode, exp, max)));
  if (!timingSafeEqual(want, sig)) return refuse(403, "bad_signature", "signature does not match");
  const nowS = Math.floor(now / 1000);
  const expires = Number(exp);
  if (expires < nowS) return refuse(403, "expired", "grant expired");
  if (expires > nowS + MAX_GRANT_TTL_S) return refuse(403, "bad_grant", "grant lives longer than allowed");
  return { ok: true, key, mode, expires, ...(max === "" ? {} : { maxBytes: Number(max) }) };
}
