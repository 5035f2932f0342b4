/**
 * One Durable Object per tenant: background jobs, webhook endpoints, events, deliveries and their
 * attempts, dead letters and inbound hooks, in the object's SQLite database (schema in
 * tenant/schema.ts). Every state change is one call, run alone, so it is atomic and every reader
 * sees it at once (jobs and deliveries in KV could be read stale or updated twice).
 *
 * The object is also the outbox: it hands queue messages over after writing the state they point
 * at, and its alarm sends again whatever a crash kept from the queue (tenant/deliveries.ts).
 */
import { DurableObject } from "cloudflare:workers";
import type { Bindings } from "../env";
import type { DeliveryMessage, JobMessage } from "../jobs/messages";
import { MAX_HOP_S, parseJitter, parseSchedule } from "../webhooks/schedule";
import * as D from "./tenant/deliveries";
import * as E from "./tenant/endpoints";
import * as J from "./tenant/jobs";
import { first, rows, SCHEMA } from "./tenant/schema";

/** A queue message that has not arrived this long after it was due is taken as lost and sent again. */
export const SWEEP_GRACE_MS = 5 * 60_000;
/** How long a delivery attempt may hold its claim: the 15 s request timeout plus margin. */
const DELIVERY_HOLD_MS = 60_000;
/** Queues take at most 100 messages per sendBatch. */
const SEND_BATCH = 100;

export class TenantStore extends DurableObject<Bindings> {
  private readonly sql: SqlStorage;

  constructor(ctx: DurableObjectState, env: Bindings) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(SCHEMA);
  }

  // --- jobs ---------------------------------------------------------------------------------

  async createJob(tenant: string, job: J.NewJob): Promise<J.JobView> {
    this.remember(tenant);
    J.createJob(this.sql, job, Date.now());
    await this.flush();
    return J.jobView(this.sql, job.id)!;
  }

  claimJob(id: string, claimMs: number): J.JobClaim {
    return J.claimJob(this.sql, id, Date.now(), claimMs);
  }

  /** Gives a claimed job back (busy session, no backend) and sends it again after `delaySeconds`. */
  async requeueJob(id: string, delaySeconds: number): Promise<void> {
    J.releaseJob(this.sql, id);
    await this.sendJob(id, delaySeconds);
  }

  /** Sends job `id` to the queue after `delaySeconds` (another run holds it: look again then). */
  async sendJob(id: string, delaySeconds: number): Promise<void> {
    this.sql.exec("UPDATE jobs SET sent_at = ? WHERE id = ?", Date.now(), id);
    try {
      await this.env.JOBS.send({ kind: "job", tenant: this.tenant(), jobId: id }, { delaySeconds });
    } catch (err) {
      console.warn("queue send failed; the alarm retries", err);
      this.sql.exec("UPDATE jobs SET sent_at = NULL WHERE id = ?", id);
      await this.schedule(null);
    }
  }

  /** Ends a job and emits its event; false if it had already ended. */
  async finishJob(id: string, outcome: J.JobOutcome, memoKey?: string | null): Promise<boolean> {
    const now = Date.now();
    const from: J.JobStatus[] = outcome.status === "cancelled" ? ["queued"] : ["queued", "in_progress"];
    if (!J.finishJob(this.sql, id, outcome, now, from)) return false;
    if (memoKey && outcome.status === "completed" && !outcome.reusedFrom) J.memoPut(this.sql, memoKey, id, now);
    const type = `chat.completion.${outcome.status}` as E.EventType;
    const only = J.jobEndpoint(this.sql, id);
    const targets = only ? (E.getEndpointRow(this.sql, only)?.status === "enabled" ? [only] : []) : E.subscribers(this.sql, type);
    D.emitEvent(this.sql, type, id, targets, only, now);
    await this.flush();
    return true;
  }

  /** Cancels a queued job; otherwise returns its status unchanged (null: no such job). */
  async cancelJob(id: string): Promise<J.JobView | null> {
    const job = J.jobView(this.sql, id);
    if (!job) return null;
    if (job.status === "queued") await this.finishJob(id, { status: "cancelled" });
    return this.getJob(id);
  }

  memoResult(key: string, maxAgeMs: number) {
    return J.memoGet(this.sql, key, Date.now(), maxAgeMs);
  }

  getJob(id: string) {
    const job = J.jobView(this.sql, id);
    return job && { ...job, deliveries: D.deliveriesOfJob(this.sql, id) };
  }

  // --- webhook endpoints --------------------------------------------------------------------

  createEndpoint(tenant: string, e: E.NewEndpoint): E.EndpointView {
    this.remember(tenant);
    E.createEndpoint(this.sql, e, Date.now());
    return this.getEndpoint(e.id)!;
  }

  getEndpoint(id: string): E.EndpointView | null {
    const e = E.getEndpointRow(this.sql, id);
    return e && E.endpointView(e, Date.now());
  }

  listEndpoints(): E.EndpointView[] {
    return E.listEndpoints(this.sql, Date.now());
  }

  deleteEndpoint(id: string): boolean {
    return E.deleteEndpoint(this.sql, id);
  }

  rotateSecret(id: string, secret: string, overlapMs: number): E.EndpointView | null {
    return E.rotateSecret(this.sql, id, secret, overlapMs, Date.now()) ? this.getEndpoint(id) : null;
  }

  /** Redelivers the selected events to an enabled endpoint; null: no such endpoint, or it is disabled. */
  async replay(id: string, sel: D.ReplaySelector): Promise<number | null> {
    const e = E.getEndpointRow(this.sql, id);
    if (!e || e.status !== "enabled") return null;
    const n = D.replay(this.sql, id, JSON.parse(e.events) as string[], sel, Date.now());
    await this.flush();
    return n;
  }

  deadLetters(endpointId: string) {
    return D.deadLettersOf(this.sql, endpointId);
  }

  // --- deliveries -----------------------------------------------------------------------------

  async claimDelivery(m: DeliveryMessage): Promise<D.DeliveryClaim> {
    const claim = D.claimDelivery(this.sql, m, Date.now(), DELIVERY_HOLD_MS);
    if (claim.kind === "early") await this.flush();
    return claim;
  }

  async recordAttempt(m: DeliveryMessage, outcome: D.AttemptOutcome): Promise<D.AttemptResult> {
    const policy = { schedule: parseSchedule(this.env.WEBHOOK_RETRY_SCHEDULE), jitter: parseJitter(this.env.WEBHOOK_RETRY_JITTER) };
    const r = D.recordAttempt(this.sql, m, outcome, Date.now(), policy);
    if (r === "retry" || r === "dead") await this.flush();
    return r;
  }

  deadLetter(m: DeliveryMessage, reason: string): void {
    D.deadLetter(this.sql, m, reason, Date.now());
  }

  // --- inbound hooks --------------------------------------------------------------------------

  createHook(tenant: string, h: E.HookRow) {
    this.remember(tenant);
    E.createHook(this.sql, h);
    return E.hookView(h);
  }

  /** The hook with its secret's ciphertext (for verifying an inbound event), or null. */
  getHookRow(id: string): E.HookRow | null {
    return E.getHookRow(this.sql, id);
  }

  getHook(id: string) {
    const h = E.getHookRow(this.sql, id);
    return h && E.hookView(h);
  }

  deleteHook(id: string): boolean {
    return E.deleteHook(this.sql, id);
  }

  tenantName(): string {
    return this.tenant();
  }

  markHookMessage(hookId: string, msgId: string, keepMs: number): boolean {
    return E.markHookMessage(this.sql, hookId, msgId, Date.now(), keepMs);
  }

  // --- outbox ---------------------------------------------------------------------------------

  override async alarm(): Promise<void> {
    await this.flush();
  }

  private remember(tenant: string): void {
    this.sql.exec("INSERT OR IGNORE INTO meta VALUES ('tenant', ?)", tenant);
  }

  private tenant(): string {
    return first<{ value: string }>(this.sql, "SELECT value FROM meta WHERE key = 'tenant'")?.value ?? "";
  }

  /**
   * Hands every due message to its queue (deliveries with their delay, capped at one 12 h hop;
   * dead deliveries to the dead-letter queue; unsent jobs), marking each sent first so a
   * concurrent flush does not send it twice; a failed send is unmarked for the alarm to retry.
   */
  private async flush(): Promise<void> {
    const now = Date.now();
    const tenant = this.tenant();
    const { deliver, dead } = D.outbox(this.sql, now, SWEEP_GRACE_MS, SEND_BATCH);
    const jobs = rows<{ id: string }>(
      this.sql,
      "SELECT id FROM jobs WHERE status = 'queued' AND (sent_at IS NULL OR sent_at < ?) LIMIT ?",
      now - SWEEP_GRACE_MS,
      SEND_BATCH,
    );
    D.markSent(this.sql, [...deliver, ...dead], now);
    for (const j of jobs) this.sql.exec("UPDATE jobs SET sent_at = ? WHERE id = ?", now, j.id);
    const msg = (d: D.OutboxItem): DeliveryMessage => ({ kind: "delivery", tenant, eventId: d.eventId, endpointId: d.endpointId, round: d.round, attempt: d.attempt });
    try {
      if (deliver.length)
        await this.env.DELIVERIES.sendBatch(
          deliver.map((d) => ({ body: msg(d), delaySeconds: Math.min(MAX_HOP_S, Math.max(0, Math.ceil((d.nextAt - now) / 1000))) })),
        );
      if (dead.length) await this.env.DEAD_LETTERS.sendBatch(dead.map((d) => ({ body: msg(d) })));
      if (jobs.length) await this.env.JOBS.sendBatch(jobs.map((j) => ({ body: { kind: "job", tenant, jobId: j.id } satisfies JobMessage })));
    } catch (err) {
      console.warn("queue send failed; the alarm retries", err);
      for (const d of [...deliver, ...dead]) this.sql.exec("UPDATE deliveries SET sent_at = NULL WHERE event_id = ? AND endpoint_id = ?", d.eventId, d.endpointId);
      for (const j of jobs) this.sql.exec("UPDATE jobs SET sent_at = NULL WHERE id = ?", j.id);
    }
    const more = deliver.length === SEND_BATCH || dead.length === SEND_BATCH || jobs.length === SEND_BATCH;
    await this.schedule(more ? now + 1000 : null);
  }

  /** Keeps an alarm set while anything could still need a (re)send. */
  private async schedule(soon: number | null): Promise<void> {
    const unsent = first(this.sql, "SELECT 1 FROM deliveries WHERE state IN ('pending', 'dead') AND sent_at IS NULL LIMIT 1");
    const sweep = D.nextSweepAt(this.sql, SWEEP_GRACE_MS);
    const queued = first(this.sql, "SELECT 1 FROM jobs WHERE status = 'queued' AND sent_at IS NULL LIMIT 1") ? "unsent" : first(this.sql, "SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1");
    const at = soon ?? (unsent || queued === "unsent" ? Date.now() + 10_000 : sweep ?? (queued ? Date.now() + SWEEP_GRACE_MS : null));
    if (at === null) return;
    const cur = await this.ctx.storage.getAlarm();
    if (cur === null || cur > at || cur < Date.now()) await this.ctx.storage.setAlarm(at);
  }
}
