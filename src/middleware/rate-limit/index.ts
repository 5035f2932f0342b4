import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../../env";
import { HttpError } from "../../errors";

export interface RateLimitOptions {
  /** Window length in ms (fixed windows aligned to the epoch). */
  windowMs?: number;
  /** Clock, for tests. */
  now?: () => number;
}

/**
 * Per-API-key request limit over fixed one-minute windows, counted in the SESSIONS KV under
 * `rl:<key hash>:<window>`. Over the limit: 429 with `Retry-After` (seconds to the next window).
 *
 * What KV gives, and why that is acceptable here:
 * - KV is eventually consistent. A write is visible at once to later reads in the same location
 *   in practice, but other locations may read the old value for up to ~60 s, and there is no
 *   atomic increment: two concurrent requests can both read `n` and both write `n + 1`.
 * - KV accepts about one write per second per key; at higher rates writes fail (we fail open).
 * So the count can undercount: a key can exceed its limit by the number of requests in flight
 * at once, times the number of locations serving it, and by whatever arrives faster than one
 * write per second. It never overcounts, so a client within its limit is never refused.
 * That fits this limit's purpose — a guard against runaway clients in front of an expensive
 * model, not a billing meter. An exact quota would live in a Durable Object per key (single
 * writer, strongly consistent), or use the Workers Rate Limiting binding.
 *
 * @example
 * ```ts
 * app.use("/v1/*", auth(), rateLimit());
 * ```
 */
export function rateLimit(opts: RateLimitOptions = {}): MiddlewareHandler<AppEnv> {
  const windowMs = opts.windowMs ?? 60_000;
  const now = opts.now ?? Date.now;
  return async function rateLimit(c, next) {
    const key = c.var.apiKey;
    const limit = key.rateLimitPerMinute ?? parseLimit(c.env.RATE_LIMIT_PER_MINUTE);
    if (limit <= 0) return next(); // 0 or unset: unlimited
    const t = now();
    const window = Math.floor(t / windowMs);
    const kvKey = `rl:${key.hash}:${window}`;
    const used = Number((await c.env.SESSIONS.get(kvKey)) ?? "0") || 0;
    const retryAfter = Math.max(1, Math.ceil(((window + 1) * windowMs - t) / 1000));
    c.header("x-ratelimit-limit-requests", String(limit));
    if (used >= limit) {
      throw new HttpError(429, {
        message: `Rate limit reached: ${limit} requests per minute for this API key. Retry after ${retryAfter}s.`,
        code: "rate_limit_exceeded",
        headers: {
          "Retry-After": String(retryAfter),
          "x-ratelimit-limit-requests": String(limit),
          "x-ratelimit-remaining-requests": "0",
        },
      });
    }
    c.header("x-ratelimit-remaining-requests", String(limit - used - 1));
    try {
      // The counter outlives its window a little (KV's minimum TTL is 60 s), then expires.
      await c.env.SESSIONS.put(kvKey, String(used + 1), { expirationTtl: Math.max(60, (2 * windowMs) / 1000) });
    } catch (err) {
      console.warn("rate-limit counter write failed; admitting the request", err);
    }
    await next();
  };
}

function parseLimit(v: string | undefined): number {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}
