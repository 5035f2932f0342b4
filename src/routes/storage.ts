/**
 * The Worker's signed streaming route for R2 objects (docs/storage-grants.md): what a "worker"
 * grant's URL points at. The signature in the query is the only authorization (no API key).
 *
 *   GET  /storage/v1/objects/{key}?mode=read&exp=…&sig=…             the object, streamed (Range allowed)
 *   HEAD /storage/v1/objects/{key}?mode=read&exp=…&sig=…             its size, etag and SHA-256
 *   PUT  /storage/v1/objects/{key}?mode=create&exp=…&max=…&sig=…     create-only; Content-Length required
 *
 * Neither direction buffers: a GET hands R2's body stream to the Response, a PUT hands the request
 * body stream (of the declared length) to R2. The Worker's heap holds a few network buffers, never
 * the object. Errors are JSON `{"error":{"code","message"}}`, as on the GPU backend's wire.
 */
import { Hono } from "hono";
import type { Context } from "hono";
import type { AppEnv } from "../env";
import { fromBase64, toHex } from "../crypto";
import { OBJECT_ROUTE, verifyWorkerGrant } from "../storage/grants";
import type { GrantCheck } from "../storage/grants";

export const storage = new Hono<AppEnv>();

const refusal = (c: Context<AppEnv>, status: number, code: string, message: string) =>
  c.json({ error: { code, message } }, status as 400);

/** The object key of the request path, or null when a segment does not decode. */
function keyOf(path: string): string | null {
  const rest = path.startsWith(OBJECT_ROUTE) ? path.slice(OBJECT_ROUTE.length) : "";
  try {
    return rest.split("/").map(decodeURIComponent).join("/");
  } catch {
    return null;
  }
}

async function check(c: Context<AppEnv>): Promise<GrantCheck> {
  const secret = (c.env.STORAGE_GRANT_SECRET ?? "").trim();
  if (c.env.STORAGE_GRANTS !== "worker" || !secret) return { ok: false, status: 403, code: "grants_off", message: "this Worker does not serve grants" };
  const key = keyOf(new URL(c.req.url).pathname);
  if (key === null) return { ok: false, status: 400, code: "bad_key", message: "object key does not decode" };
  return verifyWorkerGrant(secret, c.req.method, key, new URL(c.req.url).searchParams);
}

function objectHeaders(obj: R2Object): Headers {
  const h = new Headers({ etag: obj.httpEtag, "accept-ranges": "bytes", "cache-control": "no-store", "content-type": "application/octet-stream" });
  const sha = obj.checksums.sha256;
  if (sha) h.set("x-reprise-sha256", toHex(sha));
  return h;
}

storage.on(["GET", "HEAD"], "/*", async (c) => {
  const g = await check(c);
  if (!g.ok) return refusal(c, g.status, g.code, g.message);
  if (c.req.method === "HEAD") {
    const head = await c.env.BLOBS.head(g.key);
    if (!head) return refusal(c, 404, "not_found", "no such object");
    const h = objectHeaders(head);
    h.set("content-length", String(head.size));
    return new Response(null, { status: 200, headers: h });
  }
  const range = c.req.header("range");
  let obj: R2ObjectBody | R2Object | null;
  try {
    obj = await c.env.BLOBS.get(g.key, range ? { range: c.req.raw.headers } : {});
  } catch {
    return refusal(c, 416, "bad_range", "range not satisfiable");
  }
  if (!obj) return refusal(c, 404, "not_found", "no such object");
  if (!("body" in obj)) return refusal(c, 416, "bad_range", "range not satisfiable");
  const h = objectHeaders(obj);
  const r = obj.range as { offset?: number; length?: number } | undefined;
  if (range && r && r.offset !== undefined) {
    const len = r.length ?? obj.size - r.offset;
    h.set("content-range", `bytes ${r.offset}-${r.offset + len - 1}/${obj.size}`);
    h.set("content-length", String(len));
    return new Response(obj.body, { status: 206, headers: h, encodeBody: "manual" });
  }
  h.set("content-length", String(obj.size));
  // The bytes go out as stored: without "manual" the runtime gzips for a client that accepts it (the
  // backend hashes what it receives), and drops Content-Length for a chunked body.
  return new Response(obj.body, { status: 200, headers: h, encodeBody: "manual" });
});

storage.put("/*", async (c) => {
  const g = await check(c);
  if (!g.ok) return refusal(c, g.status, g.code, g.message);
  // The grant signs If-None-Match: * (as an S3 presigned create does); the route is create-only either way.
  if ((c.req.header("if-none-match") ?? "").trim() !== "*") return refusal(c, 412, "create_only", "a create grant needs If-None-Match: *");
  const lenText = c.req.header("content-length");
  if (lenText === undefined || !/^\d{1,12}$/.test(lenText)) return refusal(c, 411, "length_required", "Content-Length is required");
  const length = Number(lenText);
  if (length > (g.maxBytes ?? 0)) return refusal(c, 413, "too_large", `the grant allows ${g.maxBytes} bytes`);
  const checksum = c.req.header("x-amz-checksum-sha256");
  let sha256: ArrayBuffer | undefined;
  if (checksum !== undefined) {
    const b = fromBase64(checksum.trim());
    if (!b || b.byteLength !== 32) return refusal(c, 400, "bad_checksum", "x-amz-checksum-sha256 must be base64 of 32 bytes");
    sha256 = b.buffer as ArrayBuffer;
  }
  const body = c.req.raw.body ?? new Response(new Uint8Array(0)).body!;
  let put: R2Object | null;
  try {
    // R2 checks the SHA-256 (when given) and the precondition atomically; a mismatch throws.
    put = await c.env.BLOBS.put(g.key, body, { onlyIf: { etagDoesNotMatch: "*" }, ...(sha256 ? { sha256 } : {}) });
  } catch (err) {
    console.warn("granted put failed", g.key, err);
    return refusal(c, 400, "bad_body", "the body was cut short or does not match its checksum");
  }
  if (!put) return refusal(c, 412, "exists", "the object exists; grants never overwrite");
  const h = objectHeaders(put);
  return c.json({ key: put.key, size: put.size, etag: put.etag, sha256: put.checksums.sha256 ? toHex(put.checksums.sha256) : null }, 201, Object.fromEntries(h));
});

storage.all("/*", (c) => refusal(c, 405, "wrong_method", "GET, HEAD or PUT only"));
