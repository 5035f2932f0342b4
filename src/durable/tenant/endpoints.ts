/**
 * Webhook endpoints and inbound hooks in the tenant's database. Secrets arrive and leave as
 * ciphertext; the object never sees a plaintext secret.
 */
import { first, rows } from "./schema";

export const EVENT_TYPES = ["chat.completion.completed", "chat.completion.failed", "chat.completion.cancelled"] as const;
export type EventType = (typeof EVENT_TYPES)[number];

interface EndpointRow {
  id: string;
  url: string;
  events: string;
  description: string | null;
  secret: string;
  previous_secret: string | null;
  previous_expires: number | null;
  rotated_at: number | null;
  status: "enabled" | "disabled";
  disabled_reason: string | null;
  created_at: number;
}

export interface NewEndpoint {
  id: string;
  url: string;
  events: EventType[];
  description?: string | null;
  /** Ciphertext of the signing secret. */
  secret: string;
}

export function createEndpoint(sql: SqlStorage, e: NewEndpoint, now: number): void {
  sql.exec(
    "INSERT INTO endpoints (id, url, events, description, secret, status, created_at) VALUES (?, ?, ?, ?, ?, 'enabled', ?)",
    e.id,
    e.url,
    JSON.stringify(e.events),
    e.description ?? null,
    e.secret,
    now,
  );
}

/** Replaces the secret; the old one keeps signing (as a second signature) until `now + overlapMs`. */
export function rotateSecret(sql: SqlStorage, id: string, secret: string, overlapMs: number, now: number): boolean {
  const e = first<EndpointRow>(sql, "SELECT * FROM endpoints WHERE id = ?", id);
  if (!e) return false;
  sql.exec(
    "UPDATE endpoints SET previous_secret = ?, previous_expires = ?, secret = ?, rotated_at = ? WHERE id = ?",
    overlapMs > 0 ? e.secret : null,
    overlapMs > 0 ? now + overlapMs : null,
    secret,
    now,
    id,
  );
  return true;
}

/** Ciphertexts of the secrets that sign now: the current one, then the previous one during its overlap. */
export function signingSecrets(e: Pick<EndpointRow, "secret" | "previous_secret" | "previous_expires">, now: number): string[] {
  return e.previous_secret && (e.previous_expires ?? 0) > now ? [e.secret, e.previous_secret] : [e.secret];
}

export function getEndpointRow(sql: SqlStorage, id: string): EndpointRow | null {
  return first<EndpointRow>(sql, "SELECT * FROM endpoints WHERE id = ?", id);
}

/** Enabled endpoints that want `type`. */
export function subscribers(sql: SqlStorage, type: EventType): string[] {
  return rows<{ id: string; events: string }>(sql, "SELECT id, events FROM endpoints WHERE status = 'enabled'")
    .filter((e) => (JSON.parse(e.events) as string[]).includes(type))
    .map((e) => e.id);
}

export function disableEndpoint(sql: SqlStorage, id: string, reason: string): void {
  sql.exec("UPDATE endpoints SET status = 'disabled', disabled_reason = ? WHERE id = ?", reason, id);
  sql.exec("UPDATE deliveries SET state = 'disabled' WHERE endpoint_id = ? AND state = 'pending'", id);
}

export function deleteEndpoint(sql: SqlStorage, id: string): boolean {
  if (!getEndpointRow(sql, id)) return false;
  sql.exec("UPDATE deliveries SET state = 'disabled' WHERE endpoint_id = ? AND state = 'pending'", id);
  sql.exec("DELETE FROM endpoints WHERE id = ?", id);
  return true;
}

/** What the API shows of an endpoint (never a secret). */
export function endpointView(e: EndpointRow, now: number) {
  const s = (ms: number | null) => (ms === null ? null : Math.floor(ms / 1000));
  return {
    id: e.id,
    object: "webhook_endpoint" as const,
    url: e.url,
    events: JSON.parse(e.events) as EventType[],
    description: e.description,
    status: e.status,
    disabled_reason: e.disabled_reason,
    created_at: s(e.created_at),
    secret_rotated_at: s(e.rotated_at),
    previous_secret_expires_at: e.previous_secret && (e.previous_expires ?? 0) > now ? s(e.previous_expires) : null,
  };
}

export type EndpointView = ReturnType<typeof endpointView>;

export function listEndpoints(sql: SqlStorage, now: number): EndpointView[] {
  return rows<EndpointRow>(sql, "SELECT * FROM endpoints ORDER BY created_at").map((e) => endpointView(e, now));
}

export interface HookRow {
  id: string;
  secret: string;
  template: string;
  model: string;
  max_tokens: number | null;
  temperature: number | null;
  session_id: string | null;
  endpoint_id: string | null;
  created_at: number;
}

export function createHook(sql: SqlStorage, h: HookRow): void {
  sql.exec(
    "INSERT INTO hooks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    h.id,
    h.secret,
    h.template,
    h.model,
    h.max_tokens,
    h.temperature,
    h.session_id,
    h.endpoint_id,
    h.created_at,
  );
}

export function getHookRow(sql: SqlStorage, id: string): HookRow | null {
  return first<HookRow>(sql, "SELECT * FROM hooks WHERE id = ?", id);
}

export function deleteHook(sql: SqlStorage, id: string): boolean {
  if (!getHookRow(sql, id)) return false;
  sql.exec("DELETE FROM hooks WHERE id = ?", id);
  sql.exec("DELETE FROM hook_seen WHERE hook_id = ?", id);
  return true;
}

/** Records an inbound webhook-id; false if this hook accepted it before (a replay). Forgets ids older than `keepMs`. */
export function markHookMessage(sql: SqlStorage, hookId: string, msgId: string, now: number, keepMs: number): boolean {
  sql.exec("DELETE FROM hook_seen WHERE at < ?", now - keepMs);
  if (first(sql, "SELECT 1 FROM hook_seen WHERE hook_id = ? AND msg_id = ?", hookId, msgId)) return false;
  sql.exec("INSERT INTO hook_seen VALUES (?, ?, ?)", hookId, msgId, now);
  return true;
}

export function hookView(h: HookRow) {
  return {
    id: h.id,
    object: "hook" as const,
    url: `/v1/hooks/${h.id}`,
    template: h.template,
    model: h.model,
    max_tokens: h.max_tokens,
    temperature: h.temperature,
    session_id: h.session_id,
    endpoint_id: h.endpoint_id,
    created_at: Math.floor(h.created_at / 1000),
  };
}
