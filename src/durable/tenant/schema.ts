/**
 * The tenant object's SQLite schema (one database per tenant; times are unix ms).
 *
 * meta        the tenant's name (a Durable Object cannot read it back from its id)
 * jobs        a background chat completion: queued -> in_progress -> completed | failed, or cancelled;
 *             `sent_at` as in deliveries: when its queue message was handed over
 * memo        deterministic requests (temperature 0, no session) -> the job whose result they reuse
 * endpoints   webhook endpoints; secrets are AES-GCM ciphertext (src/webhooks/secrets.ts), never plaintext
 * events      one row per event, with the exact payload every attempt sends
 * deliveries  one row per (event, endpoint): the outbox. `round` counts replays, `attempt` the tries
 *             made in this round; `sent_at` is NULL until the queue message for (round, attempt)
 *             was handed to the queue, so a message lost in a crash is sent again by the alarm.
 * attempts    every attempt, with the receiver's status or the error
 * dead_letters deliveries whose last try failed, as recorded by the dead-letter queue's consumer
 * hooks       inbound hooks (secret ciphertext, template, optional session and outbound endpoint)
 * hook_seen   webhook-ids an inbound hook accepted, kept past the timestamp tolerance to refuse replays
 */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, status TEXT NOT NULL, request TEXT NOT NULL, memo_key TEXT, endpoint_id TEXT, hook_id TEXT,
  result TEXT, error TEXT, reused_from TEXT, runs INTEGER NOT NULL DEFAULT 0, claimed_until INTEGER NOT NULL DEFAULT 0,
  sent_at INTEGER, created_at INTEGER NOT NULL, started_at INTEGER, completed_at INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, sent_at);
CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
  id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, description TEXT,
  secret TEXT NOT NULL, previous_secret TEXT, previous_expires INTEGER, rotated_at INTEGER,
  status TEXT NOT NULL, disabled_reason TEXT, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  id TEXT PRIMARY KEY, type TEXT NOT NULL, job_id TEXT NOT NULL, endpoint_id TEXT, payload TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id);
CREATE TABLE IF NOT EXISTS deliveries (
  event_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
  state TEXT NOT NULL, next_at INTEGER NOT NULL, sent_at INTEGER, claimed_until INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL, first_attempt_at INTEGER, delivered_at INTEGER,
  PRIMARY KEY (event_id, endpoint_id));
CREATE INDEX IF NOT EXISTS deliveries_outbox ON deliveries (state, sent_at);
CREATE TABLE IF NOT EXISTS attempts (
  event_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
  at INTEGER NOT NULL, duration_ms INTEGER NOT NULL, status INTEGER, error TEXT, next_at INTEGER,
  PRIMARY KEY (event_id, endpoint_id, round, attempt));
CREATE TABLE IF NOT EXISTS dead_letters (
  event_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, round INTEGER NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL,
  PRIMARY KEY (event_id, endpoint_id, round));
CREATE TABLE IF NOT EXISTS hooks (
  id TEXT PRIMARY KEY, secret TEXT NOT NULL, template TEXT NOT NULL, model TEXT NOT NULL, max_tokens INTEGER,
  temperature REAL, session_id TEXT, endpoint_id TEXT, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hook_seen (hook_id TEXT NOT NULL, msg_id TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (hook_id, msg_id));
`;

/** All rows of a query, typed. */
export function rows<T>(sql: SqlStorage, query: string, ...args: SqlStorageValue[]): T[] {
  return sql.exec(query, ...args).toArray() as T[];
}

/** The first row of a query, or null. */
export function first<T>(sql: SqlStorage, query: string, ...args: SqlStorageValue[]): T | null {
  return (sql.exec(query, ...args).toArray()[0] as T | undefined) ?? null;
}
