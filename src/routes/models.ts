import { Hono } from "hono";
import type { Context } from "hono";
import { backendsFor, listModels } from "../backends/dispatch";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { listAdapters } from "../adapters/store";

/** `GET /v1/models`: every model a configured backend serves, in OpenAI's list shape. */
export const models = new Hono<AppEnv>();

// Model ids carry no creation date of their own; report the project's first release.
const CREATED = 1764288000; // 2025-11-28T00:00:00Z

const modelObject = (id: string) => ({ id, object: "model", created: CREATED, owned_by: "reprise" });

/** Served models, then the tenant's LoRA adapters as `<base>:<adapter id>` on the bases the GPU serves. */
async function modelIds(c: Context<AppEnv>): Promise<string[]> {
  const b = backendsFor(c.env);
  const gpu = new Set(b.gpu?.models() ?? []);
  const own = gpu.size ? await listAdapters(c.env.BLOBS, c.var.apiKey.tenant) : [];
  return [...listModels(b), ...own.filter((a) => gpu.has(a.model)).map((a) => `${a.model}:${a.id}`)];
}

models.get("/", async (c) => c.json({ object: "list", data: (await modelIds(c)).map(modelObject) }));

models.get("/:id", async (c) => {
  const id = c.req.param("id");
  if (!(await modelIds(c)).includes(id))
    throw new HttpError(404, { message: `The model '${id}' does not exist.`, param: "model", code: "model_not_found" });
  return c.json(modelObject(id));
});
