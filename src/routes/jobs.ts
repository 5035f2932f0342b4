import { Hono } from "hono";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { tenantStore } from "../jobs/messages";

/**
 * Background jobs (`POST /v1/chat/completions` with `background: true` makes them): status,
 * result and every delivery attempt of their events; cancel while queued. Another tenant's job
 * is a 404, as if it did not exist.
 */
export const jobs = new Hono<AppEnv>();

const notFound = (id: string) => new HttpError(404, { message: `No job '${id}'.`, code: "job_not_found" });

jobs.get("/:id", async (c) => {
  const job = await tenantStore(c.env, c.var.apiKey.tenant).getJob(c.req.param("id"));
  if (!job) throw notFound(c.req.param("id"));
  return c.json(job);
});

jobs.post("/:id/cancel", async (c) => {
  const id = c.req.param("id");
  const job = await tenantStore(c.env, c.var.apiKey.tenant).cancelJob(id);
  if (!job) throw notFound(id);
  if (job.status !== "cancelled")
    throw new HttpError(409, { message: `Job '${id}' is ${job.status}; only a queued job can be cancelled.`, code: "job_not_cancellable" });
  return c.json(job);
});
