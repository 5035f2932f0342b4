import type { Context, MiddlewareHandler } from "hono";
import type { AppEnv } from "../../env";
import { HttpError } from "../../errors";

export interface RateLimitOptions {
  /** Window length in ms (fixed windows aligned to the epoch). */
  windowMs?: number;
  /** Clock, for tests. */
  now?: () => number;
}

/** How often an isolate re-reads a counter from KV, and at most how often it writes it. */
const SYNC_MS = 1_000;

interface Counter {
  /** The count as last read from or written to KV (all isolates' flushed requests). */
  kv: number;
  /** Requests admitted by this isolate and not yet written to KV. */
  pending: number;
  /** Requests being written to KV right now. */
  writing: number;
  readAt: number;
  flushAt: number;
}

/** Per-isolate view of the counters of the current windows, keyed by their KV key. */
const counters = new Map<string, Counter>();

/**
 * Per-API-key request limit over fixed one-minute windows. Over the limit: 429 with `Retry-After`
 * (seconds to the next window). The count lives in the SESSIONS KV under `rl:<key hash>:<window>`;
 * each isolate also counts in memory and syncs with KV at most once per second per key: it re-reads
 * the KV value when its copy is older than that, and adds its own pending requests to it then.
 *
 * What KV gives, and why that is acceptable here:
 * - KV is eventually consistent: other locations may read an old value for up to ~60 s, and there
 *   is no atomic increment (two isolates that read `n` at once both write `n + k`).
 * - KV takes about one write per second per key; syncing once per second per isolate keeps a
 *   single isolate within that, and a failed write is retried at the next sync (fail open).
 * So across isolates and locations the count can undercount, by about a second of each isolate's
 * traffic plus whatever KV's propagation delay hides; within one isolate it is exact. It never
 * overcounts, so a client within its limit is never refused. That fits this limit's purpose, a
 * guard against runaway clients in front of an expensive model rather than a billing meter. An
 * exact quota would live in a Durable Object per key (one strongly consistent writer), or use the
 * Workers Rate Limiting binding.
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
    const ttl = Math.max(60, Math.ceil((2 * windowMs) / 1000)); // KV's minimum TTL is 60 s
    const ctr = await counter(c.env.SESSIONS, kvKey, t, window);
    const used = ctr.kv + ctr.pending + ctr.writing;
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
    ctr.pending += 1;
    c.header("x-ratelimit-remaining-requests", String(limit - used - 1));
    if (t - ctr.flushAt >= SYNC_MS) {
      ctr.flushAt = t;
      const flushing = flush(c.env.SESSIONS, kvKey, ctr, ttl);
      if (!inBackground(c, flushing)) await flushing;
    }
    await next();
  };
}

async function counter(kv: KVNamespace, kvKey: string, t: number, window: number): Promise<Counter> {
  let ctr = counters.get(kvKey);
  if (!ctr) {
    for (const k of counters.keys()) if (Number(k.slice(k.lastIndexOf(":") + 1)) < window) counters.delete(k);
    ctr = { kv: 0, pending: 0, writing: 0, readAt: -Infinity, flushAt: -Infinity };
    counters.set(kvKey, ctr);
  }
  if (t - ctr.readAt >= SYNC_MS) {
    ctr.readAt = t;
    const stored = Number(await kv.get(kvKey)) || 0;
    ctr.kv = Math.max(ctr.kv, stored); // a stale read must not lower what this isolate knows
  }
  return ctr;
}

async function flush(kv: KVNamespace, kvKey: string, ctr: Counter, ttl: number): Promise<void> {
  const n = ctr.pending;
  ctr.pending = 0;
  ctr.writing += n;
  try {
    const stored = Number(await kv.get(kvKey)) || 0;
    const total = Math.max(stored, ctr.kv) + n;
    await kv.put(kvKey, String(total), { expirationTtl: ttl });
    ctr.kv = Math.max(ctr.kv, total);
    ctr.writing -= n;
  } catch (err) {
    ctr.writing -= n;
    ctr.pending += n; // retried at the next sync
    console.warn("rate-limit counter write failed; admitting and retrying later", err);
  }
}

/** Hands `p` to waitUntil; false when there is no ExecutionContext (app.request in unit tests). */
function inBackground(c: Context<AppEnv>, p: Promise<void>): boolean {
  try {
    c.executionCtx.waitUntil(p);
    return true;
  } catch {
    return false;
  }
}

function parseLimit(v: string | undefined): number {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}
