/**
 * Consumers of the DELIVERIES and DEAD_LETTERS queues.
 *
 * A delivery message is a pointer: the tenant's object says whether (round, attempt) is still to be
 * made and with what, this consumer makes the request, and the object records what happened and
 * schedules the next step. A message is acknowledged once the attempt is recorded; if recording
 * fails the queue redelivers it and the claim's expiry lets it through again.
 */
import type { Bindings } from "../env";
import { byTenant, tenantStore } from "../jobs/messages";
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

/**
 * Delivers a batch: per tenant, one call claims every attempt, the attempts run concurrently (they
 * wait on the network, not the CPU), and one call records them all.
 */
export async function deliverBatch(batch: MessageBatch<DeliveryMessage>, env: Bindings): Promise<void> {
  const opts = settings(env);
  await Promise.all(
    [...byTenant(batch.messages)].map(async ([tenant, msgs]) => {
      try {
        const store = tenantStore(env, tenant);
        const claims = await store.claimDeliveries(msgs.map((m) => m.body));
        const results = await Promise.all(
          msgs.map(async (msg, i) => {
            const claim = claims[i]!;
            if (claim.kind !== "go") return null;
            const secrets = await Promise.all(claim.secrets.map((s) => openSecret(env.WEBHOOK_SECRETS_KEY, claim.endpointId, s)));
            const outcome = await attempt({ url: claim.url, secrets, msgId: claim.eventId, payload: claim.payload }, opts);
            return { m: msg.body, outcome };
          }),
        );
        const made = results.filter((r) => r !== null);
        if (made.length) await store.recordAttempts(made);
        for (const m of msgs) m.ack();
      } catch (err) {
        // Claimed attempts stay held until their hold lapses; the queue's redelivery or the sweep makes them then.
        console.error("deliveries failed to run; the queue retries them", tenant, err);
        for (const m of msgs) m.retry({ delaySeconds: 5 });
      }
    }),
  );
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
