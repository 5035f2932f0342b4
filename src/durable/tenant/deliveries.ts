/**
 * Events, their deliveries (the outbox), attempts and dead letters in the tenant's database.
 *
 * A delivery row is the single source of truth for "what happens next" to one event at one
 * endpoint: the object decides each next step in one transaction, and the queue only carries
 * (round, attempt) pointers to it, so duplicate or lost queue messages cannot duplicate or lose a
 * delivery: duplicates find their (round, attempt) already taken, lost ones are resent by the alarm.
 */
import { randomHex } from "../../crypto";
import type { DeliveryMessage } from "../../jobs/messages";
import { retryDelayMs, verdict } from "../../webhooks/schedule";
import { disableEndpoint, getEndpointRow, signingSecrets } from "./endpoints";
import type { EventType } from "./endpoints";
import { first, rows } from "./schema";

type Key = Pick<DeliveryMessage, "eventId" | "endpointId" | "round" | "attempt">;

interface DeliveryRow {
  event_id: string;
  endpoint_id: string;
  round: number;
  attempt: number;
  state: "pending" | "delivered" | "dead" | "disabled";
  next_at: number;
  sent_at: number | null;
  claimed_until: number;
  created_at: number;
  first_attempt_at: number | null;
  delivered_at: number | null;
}

/** Inserts an event and a pending delivery for each endpoint; returns the messages to send. */
export function emitEvent(sql: SqlStorage, type: EventType, jobId: string, endpointIds: string[], onlyEndpoint: string | null, now: number): OutboxItem[] {
  const id = "evt_" + randomHex(12);
  const payload = JSON.stringify({ id, object: "event", type, created_at: Math.floor(now / 1000), data: { id: jobId } });
  sql.exec("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", id, type, jobId, onlyEndpoint, payload, now);
  for (const ep of endpointIds)
    sql.exec("INSERT INTO deliveries (event_id, endpoint_id, round, attempt, state, next_at, created_at) VALUES (?, ?, 0, 0, 'pending', ?, ?)", id, ep, now, now);
  return endpointIds.map((endpointId) => ({ eventId: id, endpointId, round: 0, attempt: 0, nextAt: now }));
}

export type DeliveryClaim =
  | { kind: "go"; url: string; secrets: string[]; payload: string; eventId: string; endpointId: string }
  /** Stale or duplicate message, or the delivery is in other hands: acknowledge and forget it. */
  | { kind: "drop" }
  /** Not due yet (a long wait chained over hops): send this message on. */
  | { kind: "early"; next: OutboxItem };

/** Hands out attempt (round, attempt) once, for `holdMs`; a lapsed hold (crashed consumer) can be claimed again. */
export function claimDelivery(sql: SqlStorage, m: Key, now: number, holdMs: number): DeliveryClaim {
  const d = first<DeliveryRow>(sql, "SELECT * FROM deliveries WHERE event_id = ? AND endpoint_id = ?", m.eventId, m.endpointId);
  if (!d || d.state !== "pending" || d.round !== m.round || d.attempt !== m.attempt || d.claimed_until > now) return { kind: "drop" };
  // Queues round delays to whole seconds; anything due within a second counts as due.
  if (d.next_at > now + 1000) return { kind: "early", next: { ...key(m), nextAt: d.next_at } };
  const e = getEndpointRow(sql, m.endpointId);
  const ev = first<{ payload: string }>(sql, "SELECT payload FROM events WHERE id = ?", m.eventId);
  if (!e || e.status !== "enabled" || !ev) {
    sql.exec("UPDATE deliveries SET state = 'disabled' WHERE event_id = ? AND endpoint_id = ?", m.eventId, m.endpointId);
    return { kind: "drop" };
  }
  sql.exec(
    "UPDATE deliveries SET claimed_until = ?, first_attempt_at = coalesce(first_attempt_at, ?) WHERE event_id = ? AND endpoint_id = ?",
    now + holdMs,
    now,
    m.eventId,
    m.endpointId,
  );
  return { kind: "go", url: e.url, secrets: signingSecrets(e, now), payload: ev.payload, eventId: m.eventId, endpointId: m.endpointId };
}

export interface AttemptOutcome {
  /** The receiver's status, or null when no response came (timeout, refused, connection lost, SSRF). */
  status: number | null;
  error?: string | null;
  retryAfterMs?: number | null;
  durationMs: number;
}

export interface RetryPolicy {
  schedule: number[];
  jitter: number;
}

export type AttemptResult =
  | { state: "delivered" | "disabled" | "stale" }
  /** Send `next` (the next attempt, to DELIVERIES) or the dead delivery (to DEAD_LETTERS). */
  | { state: "retry" | "dead"; next: OutboxItem };

const key = (m: Key): Key => ({ eventId: m.eventId, endpointId: m.endpointId, round: m.round, attempt: m.attempt });

/** Records an attempt and decides the next step. */
export function recordAttempt(sql: SqlStorage, m: Key, o: AttemptOutcome, now: number, policy: RetryPolicy): AttemptResult {
  const d = first<DeliveryRow>(sql, "SELECT * FROM deliveries WHERE event_id = ? AND endpoint_id = ?", m.eventId, m.endpointId);
  if (!d || d.state !== "pending" || d.round !== m.round || d.attempt !== m.attempt) return { state: "stale" };
  const v = verdict(o.status);
  const delay = v === "retry" ? retryDelayMs(policy.schedule, policy.jitter, m.attempt + 1) : null;
  const nextAt = delay === null ? null : now + Math.max(delay, o.retryAfterMs ?? 0);
  sql.exec(
    "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    m.eventId,
    m.endpointId,
    m.round,
    m.attempt,
    now,
    Math.round(o.durationMs),
    o.status,
    o.error ?? null,
    nextAt,
  );
  const where = [m.eventId, m.endpointId] as const;
  if (v === "delivered") {
    sql.exec("UPDATE deliveries SET state = 'delivered', delivered_at = ?, claimed_until = 0 WHERE event_id = ? AND endpoint_id = ?", now, ...where);
    return { state: "delivered" };
  }
  if (v === "disable") {
    disableEndpoint(sql, m.endpointId, `the receiver answered 410 Gone at ${new Date(now).toISOString()}`);
    return { state: "disabled" };
  }
  const next = { ...key(m), attempt: m.attempt + 1, nextAt: nextAt ?? now };
  if (nextAt === null) {
    sql.exec("UPDATE deliveries SET state = 'dead', attempt = attempt + 1, sent_at = NULL, claimed_until = 0 WHERE event_id = ? AND endpoint_id = ?", ...where);
    return { state: "dead", next };
  }
  sql.exec(
    "UPDATE deliveries SET attempt = attempt + 1, next_at = ?, sent_at = NULL, claimed_until = 0 WHERE event_id = ? AND endpoint_id = ?",
    nextAt,
    ...where,
  );
  return { state: "retry", next };
}

export interface OutboxItem extends Key {
  nextAt: number;
}

/**
 * Messages to send now: pending deliveries whose message was never handed to the queue, or whose
 * message seems lost (sent and due more than `graceMs` ago, nobody holding it); and dead
 * deliveries not yet handed to the dead-letter queue.
 */
export function outbox(sql: SqlStorage, now: number, graceMs: number, limit: number): { deliver: OutboxItem[]; dead: OutboxItem[] } {
  const pick = (q: string, ...a: SqlStorageValue[]) =>
    rows<DeliveryRow>(sql, q, ...a).map((d) => ({ eventId: d.event_id, endpointId: d.endpoint_id, round: d.round, attempt: d.attempt, nextAt: d.next_at }));
  return {
    deliver: pick(
      "SELECT * FROM deliveries WHERE state = 'pending' AND (sent_at IS NULL OR (sent_at < ?1 AND next_at < ?1 AND claimed_until < ?2)) LIMIT ?3",
      now - graceMs,
      now,
      limit,
    ),
    dead: pick("SELECT * FROM deliveries WHERE state = 'dead' AND sent_at IS NULL LIMIT ?", limit),
  };
}

export function markSent(sql: SqlStorage, items: Key[], now: number): void {
  for (const k of items) sql.exec("UPDATE deliveries SET sent_at = ? WHERE event_id = ? AND endpoint_id = ? AND round = ?", now, k.eventId, k.endpointId, k.round);
}

/** True while some delivery may still need a message (pending, or dead and not yet dead-lettered). */
export function outboxBusy(sql: SqlStorage): boolean {
  return first(sql, "SELECT 1 FROM deliveries WHERE state = 'pending' OR (state = 'dead' AND sent_at IS NULL) LIMIT 1") !== null;
}

/** Records a delivery that reached the dead-letter queue (after its last try, or a consumer that kept crashing). */
export function deadLetter(sql: SqlStorage, m: Key, reason: string, now: number): void {
  sql.exec(
    "UPDATE deliveries SET state = 'dead', sent_at = coalesce(sent_at, ?) WHERE event_id = ? AND endpoint_id = ? AND round = ? AND state IN ('pending', 'dead')",
    now,
    m.eventId,
    m.endpointId,
    m.round,
  );
  sql.exec("INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?)", m.eventId, m.endpointId, m.round, reason, now);
}

export type ReplaySelector = { eventId: string } | { since: number; until: number };

/** Starts a new round for each selected event of the endpoint's types; returns the messages to send. */
export function replay(sql: SqlStorage, endpointId: string, types: string[], sel: ReplaySelector, now: number): OutboxItem[] {
  const events =
    "eventId" in sel
      ? rows<{ id: string; type: string }>(sql, "SELECT id, type FROM events WHERE id = ? AND (endpoint_id IS NULL OR endpoint_id = ?)", sel.eventId, endpointId)
      : rows<{ id: string; type: string }>(
          sql,
          "SELECT id, type FROM events WHERE created_at >= ? AND created_at < ? AND (endpoint_id IS NULL OR endpoint_id = ?)",
          sel.since,
          sel.until,
          endpointId,
        );
  const out: OutboxItem[] = [];
  for (const ev of events) {
    if (!types.includes(ev.type)) continue;
    const row = sql.exec(
      `INSERT INTO deliveries (event_id, endpoint_id, round, attempt, state, next_at, created_at) VALUES (?1, ?2, 0, 0, 'pending', ?3, ?3)
       ON CONFLICT (event_id, endpoint_id) DO UPDATE SET round = round + 1, attempt = 0, state = 'pending', next_at = ?3, sent_at = NULL,
         claimed_until = 0, delivered_at = NULL
       RETURNING round`,
      ev.id,
      endpointId,
      now,
    ).one() as { round: number };
    out.push({ eventId: ev.id, endpointId, round: row.round, attempt: 0, nextAt: now });
  }
  return out;
}

/** The deliveries of a job's events with every attempt, for `GET /v1/jobs/:id`. */
export function deliveriesOfJob(sql: SqlStorage, jobId: string) {
  const ds = rows<DeliveryRow>(sql, "SELECT d.* FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.job_id = ? ORDER BY d.created_at", jobId);
  return ds.map((d) => ({
    event_id: d.event_id,
    endpoint_id: d.endpoint_id,
    state: d.state,
    round: d.round,
    next_attempt_at: d.state === "pending" ? d.next_at / 1000 : null,
    attempts: rows<{ round: number; attempt: number; at: number; duration_ms: number; status: number | null; error: string | null }>(
      sql,
      "SELECT round, attempt, at, duration_ms, status, error FROM attempts WHERE event_id = ? AND endpoint_id = ? ORDER BY round, attempt",
      d.event_id,
      d.endpoint_id,
    ).map((a) => ({ ...a, at: a.at / 1000 })),
  }));
}

export function deadLettersOf(sql: SqlStorage, endpointId: string) {
  return rows<{ event_id: string; type: string; job_id: string; round: number; reason: string; at: number }>(
    sql,
    "SELECT l.event_id, e.type, e.job_id, l.round, l.reason, l.at FROM dead_letters l JOIN events e ON e.id = l.event_id WHERE l.endpoint_id = ? ORDER BY l.at",
    endpointId,
  ).map((l) => ({ object: "webhook_dead_letter" as const, ...l, at: l.at / 1000 }));
}
