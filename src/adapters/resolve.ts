/**
 * A chat request's `model`: a served model id, or `<base>:<adapter id>` for one of the tenant's LoRA
 * adapters, whose files then go to the GPU backend with the step (inline until the backend fetches
 * them through storage grants). Anything else, another tenant's adapter included, is 404.
 */
import type { Backends } from "../backends/dispatch";
import { listModels } from "../backends/dispatch";
import type { AdapterFiles } from "../backends/types";
import { HttpError } from "../errors";
import { getAdapter, getAdapterFiles } from "./store";

export async function resolveModel(r2: R2Bucket, tenant: string, model: string, backends: Backends): Promise<{ base: string; adapter: AdapterFiles | null }> {
  const notFound = () =>
    new HttpError(404, { message: `The model '${model}' does not exist or is not served here.`, param: "model", code: "model_not_found" });
  if (listModels(backends).includes(model)) return { base: model, adapter: null };
  const cut = model.lastIndexOf(":");
  const base = model.slice(0, cut);
  if (cut <= 0 || !backends.gpu?.models().includes(base)) throw notFound();
  const id = model.slice(cut + 1);
  const meta = /^[a-z0-9][a-z0-9_-]{0,63}$/.test(id) ? await getAdapter(r2, tenant, id) : null;
  const files = meta && meta.model === base ? await getAdapterFiles(r2, tenant, id) : null;
  if (!meta || !files) throw notFound();
  return { base, adapter: { key: meta.key, ...files } };
}
