import { Hono } from "hono";
import { gpuModelMap } from "../backends/gpu-http";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { AdapterError, MAX_CONFIG_BYTES, MODEL_SHAPES, checkAdapter, maxWeightsBytes } from "../adapters/validate";
import { adapterKey, deleteAdapter, fileRecords, getAdapter, listAdapters, putAdapter } from "../adapters/store";
import type { AdapterMeta } from "../adapters/store";

/**
 * LoRA adapters (docs/lora-adapters.md): `POST /v1/adapters` (multipart: `adapter_config` and
 * `adapter_model` files as PEFT writes them, optional `name` and `model`), `GET /v1/adapters`,
 * `GET` / `DELETE /v1/adapters/:id`. Served as `model: "<base>:<id>"` on the GPU backend.
 */
export const adapters = new Hono<AppEnv>();

const ID = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const DEFAULT_MODEL = "smollm2-135m-instruct";

const bad = (message: string, param: string | null = null, code = "invalid_adapter") =>
  new HttpError(400, { message, param, code });

// `files` (per-file sizes and hashes, for the backend's fetch) is internal: not part of the adapter object
const view = ({ files: _files, ...m }: AdapterMeta) => ({ object: "adapter", ...m, model_id: `${m.model}:${m.id}` });

/** The upload limit for a base model: its largest valid adapter (ADAPTER_MAX_BYTES may lower it). */
export function uploadLimit(env: AppEnv["Bindings"], preset: string): number {
  const shape = MODEL_SHAPES[preset];
  const own = shape ? maxWeightsBytes(shape) + MAX_CONFIG_BYTES + (64 << 10) : 0;
  const cap = Number(env.ADAPTER_MAX_BYTES);
  return Number.isFinite(cap) && cap > 0 ? Math.min(own, cap) : own;
}

async function fileBytes(form: FormData, field: string): Promise<Uint8Array> {
  const v = form.get(field);
  if (v === null) throw bad(`the multipart field '${field}' is missing`, field);
  return typeof v === "string" ? new TextEncoder().encode(v) : new Uint8Array(await v.arrayBuffer());
}

adapters.post("/", async (c) => {
  const tenant = c.var.apiKey.tenant;
  const presets = gpuModelMap(c.env.GPU_BACKEND_MODELS);
  const declared = Number(c.req.header("content-length") ?? "0");
  // the model field is inside the body; the size check before reading it uses the largest base model served
  const limit = Math.max(0, ...[...presets.values()].map((p) => uploadLimit(c.env, p)));
  if (declared > limit)
    throw bad(`The upload is ${declared} bytes; adapters for these models are at most ${limit} bytes.`, "adapter_model", "adapter_too_large");
  let form: FormData;
  try {
    form = await c.req.formData();
  } catch {
    throw bad("The body must be multipart/form-data with adapter_config and adapter_model files.");
  }
  const model = (form.get("model") as string | null) ?? DEFAULT_MODEL;
  const preset = presets.get(model);
  const shape = preset ? MODEL_SHAPES[preset] : undefined;
  if (!preset || !shape) throw bad(`The model '${model}' does not take adapters here.`, "model", "model_not_found");
  const config = await fileBytes(form, "adapter_config");
  const weights = await fileBytes(form, "adapter_model");
  if (config.byteLength + weights.byteLength > uploadLimit(c.env, preset))
    throw bad(`The adapter is ${config.byteLength + weights.byteLength} bytes; for ${model} the limit is ${uploadLimit(c.env, preset)}.`, "adapter_model", "adapter_too_large");
  const name = form.get("name");
  if (name !== null && (typeof name !== "string" || !ID.test(name)))
    throw bad("name must be 1-64 characters of [a-z0-9_-], starting with a letter or digit.", "name");
  let info;
  try {
    info = checkAdapter(config, weights, shape);
  } catch (e) {
    if (e instanceof AdapterError) throw bad(e.message);
    throw e;
  }
  const id = name ?? "lora-" + crypto.randomUUID().replaceAll("-", "").slice(0, 12);
  const meta: AdapterMeta = {
    id, model, key: await adapterKey(config, weights), rank: info.rank, lora_alpha: info.alpha,
    target_modules: info.targetModules, base_model_name_or_path: info.baseModel,
    bytes: config.byteLength + weights.byteLength, created: Math.floor(Date.now() / 1000),
    files: await fileRecords(config, weights),
  };
  if (!(await putAdapter(c.env.BLOBS, tenant, meta, config, weights)))
    throw new HttpError(409, { message: `An adapter named '${id}' exists already.`, param: "name", code: "adapter_exists" });
  return c.json(view(meta), 201);
});

adapters.get("/", async (c) => c.json({ object: "list", data: (await listAdapters(c.env.BLOBS, c.var.apiKey.tenant)).map(view) }));

const notFound = (id: string) => new HttpError(404, { message: `No adapter '${id}'.`, param: "id", code: "adapter_not_found" });

adapters.get("/:id", async (c) => {
  const id = c.req.param("id");
  const m = ID.test(id) ? await getAdapter(c.env.BLOBS, c.var.apiKey.tenant, id) : null;
  if (!m) throw notFound(id);
  return c.json(view(m));
});

adapters.delete("/:id", async (c) => {
  const id = c.req.param("id");
  if (!ID.test(id) || !(await deleteAdapter(c.env.BLOBS, c.var.apiKey.tenant, id))) throw notFound(id);
  return c.json({ id, object: "adapter", deleted: true });
});
