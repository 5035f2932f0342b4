/**
 * One delivery attempt: sign, check the URL, POST, read (a bounded part of) the answer.
 *
 * Nothing here throws for a receiver's failure: a timeout, a refused or dropped connection, an
 * SSRF refusal or a redirect are all outcomes (status null or 3xx) that the tenant's object turns
 * into a retry. Request body: the event payload (a few hundred bytes; MAX_PAYLOAD_BYTES caps it).
 * Response body: read up to MAX_RESPONSE_BYTES for the record, then the connection is dropped.
 */
import type { AttemptOutcome } from "../durable/tenant/deliveries";
import { checkOutboundUrl } from "./ssrf";
import type { OutboundPolicy } from "./ssrf";
import { retryAfterMs } from "./schedule";
import { webhookHeaders } from "./sign";

export const DEFAULT_TIMEOUT_MS = 15_000;
/** Payloads are thin (ids only), far below this; receivers commonly cap bodies at 20-64 kB. */
export const MAX_PAYLOAD_BYTES = 20_000;
export const MAX_RESPONSE_BYTES = 64 * 1024;
/** Redirects that keep the method and body (RFC 9110 §15.4.8-9); others cannot carry a webhook. */
const KEEPS_BODY = new Set([307, 308]);

export interface AttemptRequest {
  url: string;
  /** Plaintext secrets, current first. */
  secrets: string[];
  msgId: string;
  payload: string;
}

export interface AttemptOptions {
  policy: OutboundPolicy;
  timeoutMs: number;
  maxRedirects: number;
  now?: () => number;
}

/**
 * Makes one attempt; the outcome says what the receiver did (or that nothing answered).
 *
 * @example
 * ```ts
 * const o = await attempt({ url, secrets: [secret], msgId: "evt_1", payload }, { policy, timeoutMs: 15000, maxRedirects: 0 });
 * // { status: 200, durationMs: 12 } | { status: null, error: "timeout after 15000 ms", durationMs: 15001 } | ...
 * ```
 */
export async function attempt(req: AttemptRequest, opts: AttemptOptions): Promise<AttemptOutcome & { retryAfterMs: number | null }> {
  const now = opts.now ?? Date.now;
  const t0 = now();
  const done = (status: number | null, error: string | null, retryAfter: number | null = null) => ({
    status,
    error,
    retryAfterMs: retryAfter,
    durationMs: now() - t0,
  });
  if (new TextEncoder().encode(req.payload).byteLength > MAX_PAYLOAD_BYTES) return done(null, "payload over the size limit");
  const headers = {
    "content-type": "application/json",
    "user-agent": "Reprise-Webhooks/1",
    ...(await webhookHeaders(req.secrets, req.msgId, Math.floor(Date.now() / 1000), req.payload)),
  };
  const signal = AbortSignal.timeout(opts.timeoutMs);
  let target = req.url;
  for (let hop = 0; ; hop++) {
    const verdict = await checkOutboundUrl(target, opts.policy);
    if (!verdict.ok) return done(null, `refused by the SSRF rules: ${verdict.reason}`);
    let res: Response;
    try {
      res = await fetch(verdict.url, { method: "POST", headers, body: req.payload, redirect: "manual", signal });
    } catch (err) {
      const timedOut = signal.aborted;
      return done(null, timedOut ? `timeout after ${opts.timeoutMs} ms` : `connection failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    const location = res.headers.get("location");
    if (res.status >= 300 && res.status < 400 && location && KEEPS_BODY.has(res.status) && hop < opts.maxRedirects) {
      await res.body?.cancel();
      target = new URL(location, verdict.url).href;
      continue;
    }
    // The status decides; a body that is slow or cut short is only noted (a 2xx is delivered).
    const read = await drain(res, signal);
    const error =
      res.status >= 300 && res.status < 400
        ? `redirect to ${location ?? "(no location)"} not followed`
        : read === "timeout"
          ? `timeout after ${opts.timeoutMs} ms reading the response body`
          : null;
    return done(res.status, error, retryAfterMs(res.status, res.headers.get("retry-after")));
  }
}

/** Reads at most MAX_RESPONSE_BYTES of the body and drops the rest. */
async function drain(res: Response, signal: AbortSignal): Promise<"ok" | "timeout"> {
  if (!res.body) return "ok";
  const reader = res.body.getReader();
  let seen = 0;
  try {
    while (seen < MAX_RESPONSE_BYTES) {
      const { done, value } = await reader.read();
      if (done) return "ok";
      seen += value.byteLength;
    }
    return "ok";
  } catch {
    return signal.aborted ? "timeout" : "ok";
  } finally {
    await reader.cancel().catch(() => {});
  }
}
