import { Hono } from "hono";
import { backendsFor, listModels } from "../backends/dispatch";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";

/** `GET /v1/models`: every model a configured backend serves, in OpenAI's list shape. */
export const models = new Hono<AppEnv>();

// Model ids carry no creation date of their own; report the project's first release.
const CREATED = 1764288000; // 2025-11-28T00:00:00Z

const modelObject = (id: string) => ({ id, object: "model", created: CREATED, owned_by: "reprise" });

models.get("/", (c) => c.json({ object: "list", data: listModels(backendsFor(c.env)).map(modelObject) }));

models.get("/:id", (c) => {
  const id = c.req.param("id");
  if (!listModels(backendsFor(c.env)).includes(id))
    throw new HttpError(404, { message: `The model '${id}' does not exist.`, param: "model", code: "model_not_found" });
  return c.json(modelObject(id));
});
