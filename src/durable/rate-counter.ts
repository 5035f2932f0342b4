/**
 * One Durable Object per API key: exact request counts per fixed window.
 *
 * The object is the single writer of its key's counters, so check-and-increment is atomic and every
 * location sees the same count (the KV counter it replaces could undercount by whatever KV's
 * propagation delay hid). Windows are numbered by the caller's clock (`windowMs` aligned to the
 * epoch), and windows older than the previous one are dropped as new ones start.
 *
 *   counts: window INTEGER PRIMARY KEY, n INTEGER
 */
import { DurableObject } from "cloudflare:workers";

export interface RateDecision {
  allowed: boolean;
  /** Requests counted in this window, this one included when allowed. */
  used: number;
}

export class RateCounter extends DurableObject {
  private readonly sql: SqlStorage;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS counts (window INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
  }

  /** Counts one request in `window` if fewer than `limit` were counted there. */
  hit(window: number, limit: number): RateDecision {
    const row = this.sql.exec<{ n: number }>("SELECT n FROM counts WHERE window = ?", window).toArray()[0];
    const used = row?.n ?? 0;
    if (used >= limit) return { allowed: false, used };
    if (!row) this.sql.exec("DELETE FROM counts WHERE window < ?", window - 1);
    this.sql.exec("INSERT INTO counts VALUES (?, 1) ON CONFLICT(window) DO UPDATE SET n = n + 1", window);
    return { allowed: true, used: used + 1 };
  }
}
