/**
 * Consumers of the DELIVERIES and DEAD_LETTERS queues.
 *
 * A delivery message is a pointer: the tenant's object says whether (round, attempt) is still to be
 * made and with what, this consumer makes the request, and the object records what happened and
 * schedules the next step. A message is acknowledged once the attempt is recorded; if recording
 * fails the queue redelivers it and the claim's expiry lets it through again.
 */
import type { Bindings } from "../env";
import { tenantStore } from "../jobs/messages";
import type { DeliveryMessage, JobMessage } from "../jobs/messages";
import { attempt, DEFAULT_TIMEOUT_MS } from "./deliver";
import { openSecret } from "./secrets";
import { outboundPolicy } from "./ssrf";

function settings(env: Bindings) {
  const timeout = Number(env.WEBHOOK_TIMEOUT_MS);
  const redirects = Number(env.WEBHOOK_MAX_REDIRECTS);
  return {
    policy: outboundPolicy(env),
    timeoutMs: Number.isFinite(timeout) && timeout > 0 ? timeout : DEFAULT_TIMEOUT_MS,
    maxRedirects: Number.isInteger(redirects) && redirects > 0 ? Math.min(redirects, 5) : 0,
  };
}

/** Delivers a batch: attempts run concurrently (they wait on the network, not the CPU). */
export async function deliverBatch(batch: MessageBatch<DeliveryMessage>, env: Bindings): Promise<void> {
  const opts = settings(env);
  await Promise.all(
    batch.messages.map(async (msg) => {
      try {
        await deliverOne(msg.body, env, opts);
        msg.ack();
      } catch (err) {
        console.error("delivery failed to run; the queue retries it", msg.body.eventId, err);
        msg.retry({ delaySeconds: 1 });
      }
    }),
  );
}

async function deliverOne(m: DeliveryMessage, env: Bindings, opts: ReturnType<typeof settings>): Promise<void> {
  const store = tenantStore(env, m.tenant);
  const claim = await store.claimDelivery(m);
  if (claim.kind !== "go") return;
  const secrets = await Promise.all(claim.secrets.map((s) => openSecret(env.WEBHOOK_SECRETS_KEY, m.endpointId, s)));
  const outcome = await attempt({ url: claim.url, secrets, msgId: claim.eventId, payload: claim.payload }, opts);
  await store.recordAttempt(m, outcome);
}

/**
 * The dead-letter queue: deliveries after their last try (sent by the tenant's object), and any
 * message whose consumer kept crashing (sent by Queues after max_retries). Each is recorded where
 * the API shows it; a job whose consumer kept crashing is failed, so its event still goes out.
 */
export async function deadLetterBatch(batch: MessageBatch<DeliveryMessage | JobMessage>, env: Bindings): Promise<void> {
  for (const msg of batch.messages) {
    const m = msg.body;
    const store = tenantStore(env, m.tenant);
    if (m.kind === "delivery") await store.deadLetter(m, m.attempt > 0 ? `no success after ${m.attempt} attempts` : "the delivery consumer failed repeatedly");
    else
      await store.finishJob(m.jobId, {
        status: "failed",
        error: { code: "job_crashed", message: "The job's consumer failed repeatedly; the job was given up." },
      });
    msg.ack();
  }
}
