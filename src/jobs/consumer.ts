/**
 * Consumer of the JOBS queue: runs a background chat completion with the same turn code as
 * `POST /v1/chat/completions` (src/turns/), then hands the outcome to the tenant's object, which
 * emits the event and delivers it.
 *
 * The jobs of a batch run concurrently: most wait on Durable Objects, queues or the GPU backend,
 * and edge-model steps interleave as concurrent HTTP requests do. A session turn that finds its session busy, and a job that finds
 * no backend, go back to the queue with a delay instead of failing: a session's background turns
 * are never lost, only later.
 */
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import { completeTurn, prepareTurn } from "../turns";
import { MEMO_MAX_AGE_MS } from "./memo";
import { byTenant, tenantStore } from "./messages";
import type { JobMessage } from "./messages";
import type { JobClaim } from "../durable/tenant/jobs";

/** How long one run may hold a job; a consumer that dies is replaced after this. */
export const JOB_CLAIM_MS = 10 * 60_000;
/** Runs a job may take (retries after an unavailable backend or a crash) before it fails. */
export const MAX_JOB_RUNS = 8;
/** A busy session is retried for this many runs (~1 s apart, growing to 30 s) before the job fails. */
const MAX_BUSY_RUNS = 200;

export async function runJobBatch(batch: MessageBatch<JobMessage>, env: Bindings): Promise<void> {
  await Promise.all(
    [...byTenant(batch.messages)].map(async ([tenant, msgs]) => {
      const store = tenantStore(env, tenant);
      let claims: JobClaim[];
      try {
        claims = await store.claimJobs(msgs.map((m) => m.body.jobId), JOB_CLAIM_MS, MEMO_MAX_AGE_MS);
      } catch (err) {
        console.error("job claims failed; the queue retries them", tenant, err);
        for (const m of msgs) m.retry({ delaySeconds: 2 });
        return;
      }
      await Promise.all(
        msgs.map(async (msg, i) => {
          try {
            await runJob(msg.body, claims[i]!, env);
            msg.ack();
          } catch (err) {
            console.error("job consumer failed; the queue retries it", msg.body.jobId, err);
            msg.retry({ delaySeconds: 2 });
          }
        }),
      );
    }),
  );
}

async function runJob(m: JobMessage, claim: JobClaim, env: Bindings): Promise<void> {
  const store = tenantStore(env, m.tenant);
  if (!claim.run) {
    // Another run holds it: look again once its claim lapses (it may have died).
    if ("retryInMs" in claim && claim.retryInMs !== undefined) await store.sendJob(m.jobId, delay(claim.retryInMs / 1000 + 1));
    return; // ended, or answered by an identical job's result
  }
  try {
    const turn = await prepareTurn(env, m.tenant, claim.request);
    const result = await completeTurn(turn);
    await store.finishJob(m.jobId, { status: "completed", result });
  } catch (err) {
    const busy = err instanceof HttpError && err.code === "session_busy";
    const unavailable = err instanceof HttpError && err.status === 503;
    const crashed = !(err instanceof HttpError);
    if ((busy && claim.runs < MAX_BUSY_RUNS) || ((unavailable || crashed) && claim.runs < MAX_JOB_RUNS)) {
      if (crashed) console.error("job run failed; retrying", m.jobId, err);
      await store.requeueJob(m.jobId, delay(busy ? Math.min(30, claim.runs) : 2 ** claim.runs));
      return;
    }
    const e = err instanceof HttpError ? err : new HttpError(500, { message: "The job failed with an internal error." });
    await store.finishJob(m.jobId, { status: "failed", error: { code: e.code ?? "job_failed", message: e.message } });
  }
}

function delay(seconds: number): number {
  return Math.max(1, Math.min(12 * 3600, Math.ceil(seconds)));
}
