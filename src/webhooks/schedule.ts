/**
 * When to try a delivery again, and what a receiver's answer means (docs/webhooks.md, "Retries").
 *
 * The schedule is the Standard Webhooks example (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
 * 14 h, 20 h, 24 h: ten attempts over ~3.3 days), configurable with WEBHOOK_RETRY_SCHEDULE. Each
 * delay gets ±jitter so that many events failing together do not retry in lockstep.
 */

export const DEFAULT_SCHEDULE_S = [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];
export const DEFAULT_JITTER = 0.2;
/** Queues' `delaySeconds` limit: a longer wait is chained as several hops. */
export const MAX_HOP_S = 12 * 3600;
/** The longest Retry-After we honour; beyond it the schedule's own delay applies. */
export const MAX_RETRY_AFTER_S = 24 * 3600;

/** Seconds before each attempt (index 0: the first try), from a comma-separated setting. */
export function parseSchedule(spec: string | undefined): number[] {
  if (!spec?.trim()) return DEFAULT_SCHEDULE_S;
  const s = spec.split(",").map((x) => Number(x.trim()));
  if (!s.length || s.some((x) => !Number.isFinite(x) || x < 0)) throw new Error(`bad WEBHOOK_RETRY_SCHEDULE: ${spec}`);
  return s;
}

export function parseJitter(spec: string | undefined): number {
  const j = spec === undefined || spec === "" ? DEFAULT_JITTER : Number(spec);
  return Number.isFinite(j) && j >= 0 && j < 1 ? j : DEFAULT_JITTER;
}

/**
 * Milliseconds to wait before attempt `attempt` (0-based), jittered; null after the last one.
 *
 * @example
 * ```ts
 * retryDelayMs([0, 5, 300], 0.2, 1, () => 0.5) // 5000
 * retryDelayMs([0, 5, 300], 0.2, 3) // null: three attempts were all there were
 * ```
 */
export function retryDelayMs(schedule: number[], jitter: number, attempt: number, random = Math.random): number | null {
  if (attempt >= schedule.length) return null;
  const base = schedule[attempt]! * 1000;
  return Math.round(base * (1 + jitter * (2 * random() - 1)));
}

export type Verdict = "delivered" | "retry" | "disable";

/** What an answer means: 2xx delivered; 410 Gone disables the endpoint; anything else (3xx too) is retried. */
export function verdict(status: number | null): Verdict {
  if (status !== null && status >= 200 && status < 300) return "delivered";
  if (status === 410) return "disable";
  return "retry";
}

/**
 * Retry-After (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) in ms, for 429 and 503 only;
 * null when absent, unparsable or not applicable.
 */
export function retryAfterMs(status: number | null, header: string | null, now = Date.now()): number | null {
  if ((status !== 429 && status !== 503) || !header) return null;
  const v = header.trim();
  let ms: number;
  if (/^\d+$/.test(v)) ms = Number(v) * 1000;
  else {
    const at = Date.parse(v);
    if (Number.isNaN(at)) return null;
    ms = Math.max(0, at - now);
  }
  return Math.min(ms, MAX_RETRY_AFTER_S * 1000);
}
