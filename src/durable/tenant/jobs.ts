/**
 * Background jobs in the tenant's database: state transitions, each one atomic (the object runs one
 * call at a time), so a job runs at most once at a time however often the queue delivers it.
 */
import type { ChatRequest } from "../../schemas";
import type { ChatCompletion } from "../../turns";
import { first, rows } from "./schema";

export type JobStatus = "queued" | "in_progress" | "completed" | "failed" | "cancelled";
export const TERMINAL: readonly JobStatus[] = ["completed", "failed", "cancelled"];

export interface JobError {
  code: string;
  message: string;
}

interface JobRow {
  id: string;
  status: JobStatus;
  request: string;
  memo_key: string | null;
  endpoint_id: string | null;
  hook_id: string | null;
  result: string | null;
  error: string | null;
  reused_from: string | null;
  runs: number;
  claimed_until: number;
  created_at: number;
  started_at: number | null;
  completed_at: number | null;
}

export interface NewJob {
  id: string;
  request: ChatRequest;
  /** src/jobs/memo.ts: set for deterministic requests, whose result an identical later job may reuse. */
  memoKey?: string | null;
  /** Deliver this job's events only to this endpoint (an inbound hook's); null: every subscribed endpoint. */
  endpointId?: string | null;
  hookId?: string | null;
}

export type JobClaim =
  | { run: true; request: ChatRequest; runs: number; endpointId: string | null }
  /** A deterministic job that an identical completed job answers: finish it with `result`. */
  | { run: false; reuse: { jobId: string; result: ChatCompletion } }
  /** Nothing to do now; `retryInMs` when another run holds the job (look again after its claim). */
  | { run: false; status: JobStatus; retryInMs?: number };

export function createJob(sql: SqlStorage, job: NewJob, now: number): void {
  sql.exec(
    "INSERT INTO jobs (id, status, request, memo_key, endpoint_id, hook_id, created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?)",
    job.id,
    JSON.stringify(job.request),
    job.memoKey ?? null,
    job.endpointId ?? null,
    job.hookId ?? null,
    now,
  );
}

/**
 * Moves a queued job (or one whose run's claim has lapsed) to in_progress for `claimMs`, unless an
 * identical deterministic job completed within `memoMaxAgeMs` (then its result is the answer).
 */
export function claimJob(sql: SqlStorage, id: string, now: number, claimMs: number, memoMaxAgeMs: number): JobClaim {
  const job = first<JobRow>(sql, "SELECT * FROM jobs WHERE id = ?", id);
  if (!job) return { run: false, status: "failed" };
  if (TERMINAL.includes(job.status)) return { run: false, status: job.status };
  if (job.status === "in_progress" && job.claimed_until > now) return { run: false, status: job.status, retryInMs: job.claimed_until - now };
  const reuse = job.memo_key ? memoGet(sql, job.memo_key, now, memoMaxAgeMs) : null;
  if (reuse) return { run: false, reuse };
  sql.exec(
    "UPDATE jobs SET status = 'in_progress', runs = runs + 1, claimed_until = ?, started_at = coalesce(started_at, ?) WHERE id = ?",
    now + claimMs,
    now,
    id,
  );
  return { run: true, request: JSON.parse(job.request) as ChatRequest, runs: job.runs + 1, endpointId: job.endpoint_id };
}

/** Gives a claimed job back to the queue (its session was busy, or the backend was unavailable). */
export function releaseJob(sql: SqlStorage, id: string): void {
  sql.exec("UPDATE jobs SET status = 'queued', claimed_until = 0 WHERE id = ? AND status = 'in_progress'", id);
}

export type JobOutcome =
  | { status: "completed"; result: ChatCompletion; reusedFrom?: string }
  | { status: "failed"; error: JobError }
  | { status: "cancelled" };

/** Ends a job that is not yet terminal; false if it already was (a duplicate run finishing late). */
export function finishJob(sql: SqlStorage, id: string, outcome: JobOutcome, now: number, fromStatus: JobStatus[]): boolean {
  const job = first<{ status: JobStatus }>(sql, "SELECT status FROM jobs WHERE id = ?", id);
  if (!job || !fromStatus.includes(job.status)) return false;
  sql.exec(
    "UPDATE jobs SET status = ?, result = ?, error = ?, reused_from = ?, completed_at = ?, claimed_until = 0 WHERE id = ?",
    outcome.status,
    outcome.status === "completed" ? JSON.stringify(outcome.result) : null,
    outcome.status === "failed" ? JSON.stringify(outcome.error) : null,
    outcome.status === "completed" ? (outcome.reusedFrom ?? null) : null,
    now,
    id,
  );
  return true;
}

export function jobRouting(sql: SqlStorage, id: string): { endpointId: string | null; memoKey: string | null } {
  const j = first<{ endpoint_id: string | null; memo_key: string | null }>(sql, "SELECT endpoint_id, memo_key FROM jobs WHERE id = ?", id);
  return { endpointId: j?.endpoint_id ?? null, memoKey: j?.memo_key ?? null };
}

/** The completed job whose result a request with memo `key` may reuse, if one finished within `maxAgeMs`. */
function memoGet(sql: SqlStorage, key: string, now: number, maxAgeMs: number): { jobId: string; result: ChatCompletion } | null {
  const hit = first<{ job_id: string; result: string | null }>(
    sql,
    "SELECT memo.job_id, jobs.result FROM memo JOIN jobs ON jobs.id = memo.job_id WHERE memo.key = ? AND memo.created_at > ? AND jobs.status = 'completed'",
    key,
    now - maxAgeMs,
  );
  return hit?.result ? { jobId: hit.job_id, result: JSON.parse(hit.result) as ChatCompletion } : null;
}

export function memoPut(sql: SqlStorage, key: string, jobId: string, now: number): void {
  sql.exec("INSERT OR REPLACE INTO memo VALUES (?, ?, ?)", key, jobId, now);
}

/** What `GET /v1/jobs/:id` shows, less the deliveries (src/durable/tenant/deliveries.ts adds them). */
export function jobView(sql: SqlStorage, id: string) {
  const j = first<JobRow>(sql, "SELECT * FROM jobs WHERE id = ?", id);
  if (!j) return null;
  const req = JSON.parse(j.request) as ChatRequest;
  const s = (ms: number | null) => (ms === null ? null : Math.floor(ms / 1000));
  return {
    id: j.id,
    object: "chat.completion.job" as const,
    status: j.status,
    model: req.model,
    session_id: req.sessionId ?? null,
    hook_id: j.hook_id,
    created_at: s(j.created_at),
    started_at: s(j.started_at),
    completed_at: s(j.completed_at),
    runs: j.runs,
    result: j.result ? (JSON.parse(j.result) as ChatCompletion) : null,
    error: j.error ? (JSON.parse(j.error) as JobError) : null,
    reused_result_of: j.reused_from,
    events: rows<{ id: string; type: string; created_at: number }>(sql, "SELECT id, type, created_at FROM events WHERE job_id = ? ORDER BY created_at", id).map(
      (e) => ({ id: e.id, type: e.type, created_at: s(e.created_at) }),
    ),
  };
}

export type JobView = NonNullable<ReturnType<typeof jobView>>;
