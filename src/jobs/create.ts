/**
 * Accepting a background request: what can be checked at once is checked (the model exists, the
 * session exists and is the tenant's), so a 202 means the job is well-formed and queued; the
 * tenant's object stores it and hands its message to the JOBS queue.
 */
import { backendsFor, listModels } from "../backends/dispatch";
import { randomHex } from "../crypto";
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import type { ChatRequest } from "../schemas";
import { getSession } from "../sessions/store";
import { memoKey } from "./memo";
import { tenantStore } from "./messages";

export interface JobOptions {
  /** Deliver the job's events only to this endpoint (an inbound hook's). */
  endpointId?: string | null;
  hookId?: string | null;
}

export async function enqueueJob(env: Bindings, tenant: string, req: ChatRequest, opts: JobOptions = {}) {
  if (!listModels(backendsFor(env)).includes(req.model))
    throw new HttpError(404, {
      message: `The model '${req.model}' does not exist or is not served here.`,
      param: "model",
      code: "model_not_found",
    });
  if (req.sessionId) await getSession(env.SESSIONS, req.sessionId, tenant);
  const id = "job_" + randomHex(12);
  const request = { ...req, stream: false, includeUsage: false, background: true };
  return tenantStore(env, tenant).createJob(tenant, {
    id,
    request,
    memoKey: await memoKey(request),
    endpointId: opts.endpointId ?? null,
    hookId: opts.hookId ?? null,
  });
}

/** True when a `Prefer` header (RFC 7240) asks for `respond-async`. */
export function prefersAsync(header: string | undefined): boolean {
  return (header ?? "").split(",").some((p) => p.trim().split(";")[0]!.trim().toLowerCase() === "respond-async");
}
