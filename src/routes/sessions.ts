import { Hono } from "hono";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { createSession, deleteSession, getSession, sessionView } from "../sessions/store";

/**
 * Session lifecycle. A session holds a conversation's transcript, token ids and KV-cache chunks so
 * that a later `POST /v1/chat/completions` with `session_id` sends only the new messages.
 */
export const sessions = new Hono<AppEnv>();

sessions.post("/", async (c) => {
  // The body is optional and has no fields yet; anything but nothing or `{}` is refused so that
  // fields added later cannot silently change meaning for old clients.
  const text = await c.req.text();
  if (text.trim() !== "") {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new HttpError(400, { message: "We could not parse the JSON body of your request.", code: "invalid_json" });
    }
    if (typeof body !== "object" || body === null || Array.isArray(body))
      throw new HttpError(400, { message: "The request body must be a JSON object.", code: "invalid_request" });
    const extra = Object.keys(body)[0];
    if (extra !== undefined)
      throw new HttpError(400, {
        message: `Unrecognized request argument supplied: ${extra}`,
        param: extra,
        code: "unknown_parameter",
      });
  }
  const rec = await createSession(c.env.SESSIONS, c.var.apiKey.tenant);
  return c.json({ id: rec.id, object: "session", created: rec.created }, 201);
});

sessions.get("/:id", async (c) => {
  const rec = await getSession(c.env.SESSIONS, c.req.param("id"), c.var.apiKey.tenant);
  return c.json(sessionView(rec));
});

sessions.delete("/:id", async (c) => {
  const id = c.req.param("id");
  const blobs = await deleteSession(c.env, id, c.var.apiKey.tenant);
  return c.json({ id, object: "session.deleted", deleted: true, deleted_chunks: blobs });
});
