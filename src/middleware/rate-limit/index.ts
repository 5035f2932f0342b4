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
 * Per-API-key request limit over fixed one-minute windows. Over the limit: 429 with `Retry-After`
 * (seconds to the next window). Each key's count lives in its own RateCounter Durable Object
 * (src/durable/rate-counter.ts): one strongly consistent writer per key, so the count is exact
 * across isolates and locations, at the price of one Durable Object call per request (a key's
 * object sits near where it is used). Keys without a limit never reach it.
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
    const counter = c.env.RATE_COUNTERS.get(c.env.RATE_COUNTERS.idFromName(key.hash));
    const { allowed, used } = await counter.hit(window, limit);
    const retryAfter = Math.max(1, Math.ceil(((window + 1) * windowMs - t) / 1000));
    c.header("x-ratelimit-limit-requests", String(limit));
    if (!allowed) {
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
    c.header("x-ratelimit-remaining-requests", String(limit - used));
    await next();
  };
}

function parseLimit(v: string | undefined): number {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}
