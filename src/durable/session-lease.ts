/**
 * One Durable Object per session: the turn lease and the last committed revision.
 *
 * A Durable Object is a single-threaded owner with transactional SQLite storage, so "is a lease
 * live? if not, take it" is one atomic step, in every location: two turns can never both hold a
 * session (KV, eventually consistent and without compare-and-set, could not promise that).
 *
 * The revision fence closes the other KV gap: the session record still lives in KV, and a read in
 * another location may return an older record than the last commit. The object remembers the
 * revision each turn committed; a turn that read an older record is refused (409, retry) instead
 * of building on stale history and overwriting a newer turn.
 *
 *   lease(one row): holder TEXT, expires INTEGER (ms), revision INTEGER (the record it leased)
 *   state(one row): committed INTEGER (highest revision committed under a lease)
 */
import { DurableObject } from "cloudflare:workers";

export type LeaseGrant =
  | { ok: true; holder: string; expires: number }
  | { ok: false; reason: "busy" | "stale"; committed: number };

export class SessionLease extends DurableObject {
  private readonly sql: SqlStorage;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(`CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY CHECK (id = 0), holder TEXT NOT NULL, expires INTEGER NOT NULL, revision INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 0), committed INTEGER NOT NULL);
      INSERT OR IGNORE INTO state VALUES (0, 0);`);
  }

  /** Takes the lease for a turn that read the record at `revision`, unless one is live or the read was stale. */
  acquire(revision: number, ttlMs: number): LeaseGrant {
    const now = Date.now();
    const committed = this.committed();
    const cur = this.sql.exec<{ expires: number }>("SELECT expires FROM lease").toArray()[0];
    if (cur && cur.expires > now) return { ok: false, reason: "busy", committed };
    if (revision < committed) return { ok: false, reason: "stale", committed };
    const holder = crypto.randomUUID();
    const expires = now + ttlMs;
    this.sql.exec("INSERT OR REPLACE INTO lease VALUES (0, ?, ?, ?)", holder, expires, revision);
    return { ok: true, holder, expires };
  }

  /** True while `holder` holds a live lease; extends it by `ttlMs` (a commit checks this first). */
  renew(holder: string, ttlMs: number): boolean {
    const now = Date.now();
    const cur = this.sql.exec<{ holder: string; expires: number }>("SELECT holder, expires FROM lease").toArray()[0];
    if (!cur || cur.holder !== holder || cur.expires <= now) return false;
    this.sql.exec("UPDATE lease SET expires = ? WHERE id = 0", Math.max(cur.expires, now + ttlMs));
    return true;
  }

  /**
   * Drops the lease if `holder` still holds it; `committedRevision` (when the turn committed) raises
   * the fence so later turns must have read at least that record.
   */
  release(holder: string, committedRevision?: number): void {
    this.ctx.storage.transactionSync(() => {
      if (committedRevision !== undefined)
        this.sql.exec("UPDATE state SET committed = max(committed, ?) WHERE id = 0", committedRevision);
      this.sql.exec("DELETE FROM lease WHERE holder = ?", holder);
    });
  }

  /** Forgets everything (the session was deleted). */
  clear(): void {
    this.sql.exec("DELETE FROM lease; UPDATE state SET committed = 0 WHERE id = 0;");
  }

  private committed(): number {
    return this.sql.exec<{ committed: number }>("SELECT committed FROM state").one().committed;
  }
}
