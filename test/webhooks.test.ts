// Background jobs and webhook delivery end to end, in workerd with the real queues and Durable
// Objects, against a real receiver process (test/receiver/server.mjs) that verifies every request
// with the official `standardwebhooks` package. Time is compressed: the Worker's retry schedule
// here is ten attempts about a second apart (vitest.config.ts), the attempt timeout 1.5 s.
import { describe, expect, it } from "vitest";
import { api, errorOf } from "./helpers";
import { configure, endpointFor, getJob, received, receiverName, settledJob, submitJob, tenantKey, waitFor } from "./webhook-helpers";

describe("background jobs", () => {
  it("should answer 202 with a queued job, run it from the queue and deliver a signed event", async () => {
    const key = await tenantKey("basic");
    const name = receiverName("basic");
    const ep = await endpointFor(key, name);
    expect(ep.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const job = await submitJob(key, { max_tokens: 2 });
    expect(job).toMatchObject({ object: "chat.completion.job", status: "queued" });
    const done = await settledJob(key, job.id);
    expect(done.status).toBe("completed");
    expect(done.result!.usage.completion_tokens).toBeGreaterThan(0);
    expect(done.events).toEqual([expect.objectContaining({ type: "chat.completion.completed" })]);
    expect(done.deliveries).toEqual([expect.objectContaining({ endpoint_id: ep.id, state: "delivered" })]);
    const log = await received(name);
    expect(log.requests).toHaveLength(1);
    const r = log.requests[0]!;
    expect(r.verified).toBe(true);
    expect(r.id).toBe(done.events[0]!.id);
    expect(r.body).toEqual({ id: r.id, object: "event", type: "chat.completion.completed", created_at: expect.any(Number), data: { id: job.id } });
  });
});
