/** The Worker's queue handler: one consumer per queue (wrangler.toml, [[queues.consumers]]). */
import type { Bindings } from "./env";
import { runJobBatch } from "./jobs/consumer";
import type { DeliveryMessage, JobMessage } from "./jobs/messages";
import { deadLetterBatch, deliverBatch } from "./webhooks/consumer";

export async function handleQueue(batch: MessageBatch<unknown>, env: Bindings): Promise<void> {
  if (batch.queue === "reprise-jobs") return runJobBatch(batch as MessageBatch<JobMessage>, env);
  if (batch.queue === "reprise-deliveries") return deliverBatch(batch as MessageBatch<DeliveryMessage>, env);
  if (batch.queue === "reprise-dead-letters") return deadLetterBatch(batch as MessageBatch<DeliveryMessage | JobMessage>, env);
  console.error("message from an unknown queue", batch.queue);
  batch.retryAll();
}
