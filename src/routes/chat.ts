import { Hono } from "hono";
import type { Context } from "hono";
import type { AppEnv } from "../env";
import { enqueueJob, prefersAsync } from "../jobs/create";
import { HttpError } from "../errors";
import { parseChatRequest, parseJson } from "../schemas";
import { completeTurn, prepareTurn, runTurn, systemFingerprint } from "../turns";
import type { Turn } from "../turns";

/** `POST /v1/chat/completions`, OpenAI-compatible, plus `session_id` for resumable turns. */
export const chat = new Hono<AppEnv>();

chat.post("/", async (c) => {
  const req = parseChatRequest(parseJson(await c.req.text()));
  if (req.background || prefersAsync(c.req.header("prefer"))) {
    if (req.stream) throw new HttpError(400, { message: "A background request cannot stream.", param: "stream", code: "invalid_value" });
    const job = await enqueueJob(c.env, c.var.apiKey.tenant, req);
    return c.json(job, 202, { location: `/v1/jobs/${job.id}`, "preference-applied": "respond-async" });
  }
  const turn = await prepareTurn(c.env, c.var.apiKey.tenant, req, c.req.raw.signal);
  return req.stream ? streamTurn(c, turn) : c.json(await completeTurn(turn));
});

/**
 * Server-sent events in OpenAI's format: a `chat.completion.chunk` per piece of text, a last chunk
 * with `finish_reason`, a usage chunk with empty `choices` if `stream_options.include_usage`, then
 * `data: [DONE]`. An error after the first byte can no longer change the status; it is sent as an
 * `{"error": …}` event and the stream ends without `[DONE]`.
 */
function streamTurn(c: Context<AppEnv>, turn: Turn): Response {
  const req = turn.req;
  const enc = new TextEncoder();
  const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
  const w = writable.getWriter();
  const send = (data: unknown) => w.write(enc.encode(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`));
  const base = { id: turn.id, object: "chat.completion.chunk", created: turn.created, model: req.model, system_fingerprint: systemFingerprint(turn) };
  const chunk = (delta: object, finish: string | null) => ({
    ...base,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(req.includeUsage ? { usage: null } : {}),
  });
  const pump = async () => {
    try {
      await send(chunk({ role: "assistant", content: "" }, null));
      const r = await runTurn(turn, (text) => send(chunk({ content: text }, null)));
      await send(chunk({}, r.finishReason));
      if (req.includeUsage) await send({ ...base, choices: [], usage: r.usage });
      await send("[DONE]");
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, { message: "Internal server error" });
      if (!(err instanceof HttpError)) console.error("stream failed", err);
      await send(e.toBody()).catch(() => {});
    } finally {
      await w.close().catch(() => {});
    }
  };
  const pumping = pump();
  try {
    c.executionCtx.waitUntil(pumping); // the turn commits even if the client stops reading
  } catch {
    // no ExecutionContext (app.request in unit tests): the open stream keeps the work alive
  }
  return new Response(readable, {
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" },
  });
}
