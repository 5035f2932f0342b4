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
/** How often the alarm sweeps while anything is in flight. */
const SWEEP_INTERVAL_MS = 60_000;
/** How long a delivery attempt may hold its claim: the 15 s request timeout plus margin. */
const DELIVERY_HOLD_MS = 60_000;
/** Queues take at most 100 messages per sendBatch. */
const SEND_BATCH = 100;

export class TenantStore extends DurableObject<Bindings> {
  private readonly sql: SqlStorage;
  /** Set once this instance knows an alarm is armed (the alarm re-arms itself while work remains). */
  private alarmSet = false;

  constructor(ctx: DurableObjectState, env: Bindings) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(SCHEMA);
  }

  // --- jobs ---------------------------------------------------------------------------------

  async createJob(tenant: string, job: J.NewJob): Promise<J.JobView> {
    this.remember(tenant);
    J.createJob(this.sql, job, Date.now());
    await this.send({ jobs: [{ id: job.id, delaySeconds: 0 }] });
    return J.jobView(this.sql, job.id)!;
  }

  /**
   * Claims the jobs of one queue batch (one call for all: every call to the object is a round trip
   * and a write), finishing at once those that an identical job's result answers (src/jobs/memo.ts).
   */
  async claimJobs(ids: string[], claimMs: number, memoMaxAgeMs: number): Promise<J.JobClaim[]> {
    const now = Date.now();
    const deliver: D.OutboxItem[] = [];
    const claims = ids.map((id) => {
      const claim = J.claimJob(this.sql, id, now, claimMs, memoMaxAgeMs);
      if (!claim.run && "reuse" in claim) {
        const result = { ...claim.reuse.result, id: "chatcmpl-" + crypto.randomUUID().replaceAll("-", ""), created: Math.floor(now / 1000) };
        deliver.push(...(this.end(id, { status: "completed", result, reusedFrom: claim.reuse.jobId }, now) ?? []));
      }
      return claim;
    });
    await this.send({ deliver });
    return claims;
  }

  /** Gives a claimed job back (busy session, no backend) and sends it again after `delaySeconds`. */
  async requeueJob(id: string, delaySeconds: number): Promise<void> {
    J.releaseJob(this.sql, id);
    await this.sendJob(id, delaySeconds);
  }

  /** Sends job `id` to the queue after `delaySeconds` (another run holds it: look again then). */
  async sendJob(id: string, delaySeconds: number): Promise<void> {
    await this.send({ jobs: [{ id, delaySeconds }] });
  }

  /** Ends a job and emits its event; false if it had already ended. */
  async finishJob(id: string, outcome: J.JobOutcome): Promise<boolean> {
    const out = this.end(id, outcome, Date.now());
    if (out) await this.send({ deliver: out });
    return out !== null;
  }

  /** Ends a job and emits its event; returns the deliveries to send, or null if it had already ended. */
  private end(id: string, outcome: J.JobOutcome, now: number): D.OutboxItem[] | null {
    const from: J.JobStatus[] = outcome.status === "cancelled" ? ["queued"] : ["queued", "in_progress"];
    if (!J.finishJob(this.sql, id, outcome, now, from)) return null;
    const { endpointId: only, memoKey } = J.jobRouting(this.sql, id);
    if (memoKey && outcome.status === "completed" && !outcome.reusedFrom) J.memoPut(this.sql, memoKey, id, now);
    const type = `chat.completion.${outcome.status}` as E.EventType;
    const targets = only ? (E.getEndpointRow(this.sql, only)?.status === "enabled" ? [only] : []) : E.subscribers(this.sql, type);
    return D.emitEvent(this.sql, type, id, targets, only, now);
  }

  /** Cancels a queued job; otherwise returns its status unchanged (null: no such job). */
  async cancelJob(id: string): Promise<J.JobView | null> {
    const job = J.jobView(this.sql, id);
    if (!job) return null;
    if (job.status === "queued") await this.finishJob(id, { status: "cancelled" });
    return this.getJob(id);
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
    const out = D.replay(this.sql, id, JSON.parse(e.events) as string[], sel, Date.now());
    await this.send({ deliver: out });
    return out.length;
  }

  deadLetters(endpointId: string) {
    return D.deadLettersOf(this.sql, endpointId);
  }

  // --- deliveries -----------------------------------------------------------------------------

  /** Claims the attempts of one queue batch (see claimJobs for why in one call). */
  async claimDeliveries(ms: DeliveryMessage[]): Promise<D.DeliveryClaim[]> {
    const now = Date.now();
    const claims = ms.map((m) => D.claimDelivery(this.sql, m, now, DELIVERY_HOLD_MS));
    await this.send({ deliver: claims.flatMap((c) => (c.kind === "early" ? [c.next] : [])) });
    return claims;
  }

  /** Records the attempts of one batch and sends what follows each: a retry, a dead letter, or nothing. */
  async recordAttempts(results: { m: DeliveryMessage; outcome: D.AttemptOutcome }[]): Promise<D.AttemptResult["state"][]> {
    const policy = { schedule: parseSchedule(this.env.WEBHOOK_RETRY_SCHEDULE), jitter: parseJitter(this.env.WEBHOOK_RETRY_JITTER) };
    const now = Date.now();
    const rs = results.map(({ m, outcome }) => D.recordAttempt(this.sql, m, outcome, now, policy));
    await this.send({
      deliver: rs.flatMap((r) => (r.state === "retry" ? [r.next] : [])),
      dead: rs.flatMap((r) => (r.state === "dead" ? [r.next] : [])),
    });
    return rs.map((r) => r.state);
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

  /**
   * The sweep: sends what a failed send or a crash kept from the queue (messages never handed
   * over, and messages that should have arrived SWEEP_GRACE_MS ago but whose attempt nobody
   * made), and re-arms itself while anything is still in flight.
   */
  override async alarm(): Promise<void> {
    this.alarmSet = false;
    const now = Date.now();
    const { deliver, dead } = D.outbox(this.sql, now, SWEEP_GRACE_MS, SEND_BATCH);
    const jobs = rows<{ id: string }>(
      this.sql,
      "SELECT id FROM jobs WHERE status = 'queued' AND (sent_at IS NULL OR sent_at < ?) LIMIT ?",
      now - SWEEP_GRACE_MS,
      SEND_BATCH,
    ).map((j) => ({ id: j.id, delaySeconds: 0 }));
    await this.send({ deliver, dead, jobs });
    const busy = D.outboxBusy(this.sql) || first(this.sql, "SELECT 1 FROM jobs WHERE status IN ('queued', 'in_progress') LIMIT 1");
    if (busy) await this.ctx.storage.setAlarm(now + (deliver.length === SEND_BATCH ? 1_000 : SWEEP_INTERVAL_MS));
  }

  private remember(tenant: string): void {
    this.sql.exec("INSERT OR IGNORE INTO meta VALUES ('tenant', ?)", tenant);
  }

  private tenant(): string {
    return first<{ value: string }>(this.sql, "SELECT value FROM meta WHERE key = 'tenant'")?.value ?? "";
  }

  /**
   * Hands messages to their queues after the state they point at is written: deliveries with
   * their delay (one hop of at most 12 h), dead deliveries to the dead-letter queue, jobs. Each is
   * marked sent first, so the sweep does not send it again; a failed send is unmarked, and the
   * alarm (set whenever anything is in flight) sends it later.
   */
  private async send(out: { deliver?: D.OutboxItem[]; dead?: D.OutboxItem[]; jobs?: { id: string; delaySeconds: number }[] }): Promise<void> {
    const now = Date.now();
    const tenant = this.tenant();
    const deliver = out.deliver ?? [];
    const dead = out.dead ?? [];
    const jobs = out.jobs ?? [];
    D.markSent(this.sql, [...deliver, ...dead], now);
    for (const j of jobs) this.sql.exec("UPDATE jobs SET sent_at = ? WHERE id = ?", now, j.id);
    const msg = (d: D.OutboxItem): DeliveryMessage => ({ kind: "delivery", tenant, eventId: d.eventId, endpointId: d.endpointId, round: d.round, attempt: d.attempt });
    try {
      for (let i = 0; i < deliver.length; i += SEND_BATCH)
        await this.env.DELIVERIES.sendBatch(
          deliver.slice(i, i + SEND_BATCH).map((d) => ({ body: msg(d), delaySeconds: Math.min(MAX_HOP_S, Math.max(0, Math.ceil((d.nextAt - now) / 1000))) })),
        );
      if (dead.length) await this.env.DEAD_LETTERS.sendBatch(dead.map((d) => ({ body: msg(d) })));
      for (const j of jobs) await this.env.JOBS.send({ kind: "job", tenant, jobId: j.id } satisfies JobMessage, { delaySeconds: j.delaySeconds });
    } catch (err) {
      console.warn("queue send failed; the alarm retries", err);
      for (const d of [...deliver, ...dead]) this.sql.exec("UPDATE deliveries SET sent_at = NULL WHERE event_id = ? AND endpoint_id = ?", d.eventId, d.endpointId);
      for (const j of jobs) this.sql.exec("UPDATE jobs SET sent_at = NULL WHERE id = ?", j.id);
    }
    if (!this.alarmSet && (deliver.length || dead.length || jobs.length)) {
      if ((await this.ctx.storage.getAlarm()) === null) await this.ctx.storage.setAlarm(now + SWEEP_INTERVAL_MS);
      this.alarmSet = true;
    }
  }
}
