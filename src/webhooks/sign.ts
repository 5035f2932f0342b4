/**
 * Standard Webhooks v1 signatures (https://www.standardwebhooks.com, "Signature scheme"), on
 * src/crypto.ts: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
 * space-separated when several secrets sign (key rotation). The tests check these against the
 * official `standardwebhooks` package, an independent implementation.
 */
import { concatBytes, hmacSha256, timingSafeEqual, toBase64, utf8 } from "../crypto";
import { secretKeyBytes } from "./secrets";

/** Receivers refuse timestamps further than this from their clock (the spec's default). */
export const TIMESTAMP_TOLERANCE_S = 5 * 60;

/** `v1,<base64>` for one secret. */
export async function signature(secret: string, msgId: string, timestamp: number, body: string | Uint8Array): Promise<string> {
  const key = secretKeyBytes(secret);
  if (!key) throw new Error("not a whsec_ secret");
  return "v1," + toBase64(await hmacSha256(key, concatBytes(`${msgId}.${timestamp}.`, utf8(body))));
}

/**
 * The three headers of one delivery attempt.
 *
 * @example
 * ```ts
 * await webhookHeaders(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
 * // { "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
 * //   "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=" }
 * ```
 */
export async function webhookHeaders(secrets: string[], msgId: string, timestamp: number, body: string): Promise<Record<string, string>> {
  const sigs = await Promise.all(secrets.map((s) => signature(s, msgId, timestamp, body)));
  return { "webhook-id": msgId, "webhook-timestamp": String(timestamp), "webhook-signature": sigs.join(" ") };
}

export type VerifyFailure = "missing_headers" | "stale_timestamp" | "bad_signature";

/**
 * Checks an inbound request's signature against `secret`, as a receiver must: all three headers,
 * a timestamp within the tolerance (either way), one matching `v1` signature (constant time).
 */
export async function verifyWebhook(
  secret: string,
  headers: Headers,
  body: Uint8Array,
  now = Date.now(),
): Promise<{ ok: true; msgId: string; timestamp: number } | { ok: false; reason: VerifyFailure }> {
  const msgId = headers.get("webhook-id");
  const ts = headers.get("webhook-timestamp");
  const sig = headers.get("webhook-signature");
  if (!msgId || !ts || !sig) return { ok: false, reason: "missing_headers" };
  const timestamp = /^\d{1,12}$/.test(ts) ? Number(ts) : NaN;
  if (!Number.isFinite(timestamp) || Math.abs(now / 1000 - timestamp) > TIMESTAMP_TOLERANCE_S) return { ok: false, reason: "stale_timestamp" };
  const expected = await signature(secret, msgId, timestamp, body);
  for (const s of sig.split(" ")) if (s.startsWith("v1,") && timingSafeEqual(s, expected)) return { ok: true, msgId, timestamp };
  return { ok: false, reason: "bad_signature" };
}
