/**
 * A chat request's `model`: a served model id, or `<base>:<adapter id>` for one of the tenant's LoRA
 * adapters. Anything else, another tenant's adapter included, is 404.
 *
 * With storage grants on (and a backend that fetches storage itself) the adapter's files stay in R2:
 * each step grants the backend reads of exactly its two objects, with the sizes and SHA-256s recorded
 * at upload, and the backend fetches and checks them (docs/lora-adapters.md). Otherwise the edge reads
 * the files and sends them inline.
 */
import type { Backends } from "../backends/dispatch";
import { listModels } from "../backends/dispatch";
import type { AdapterFiles, AdapterGrants } from "../backends/types";
import { HttpError } from "../errors";
import { mintGrants, validKey } from "../storage/grants";
import type { GrantSigner } from "../storage/grants";
import { adapterFileKeys, getAdapter, getAdapterFiles } from "./store";
import type { FileRecord } from "./store";

/** Where a step's adapter comes from: its files, read now, or the R2 objects the backend will fetch. */
export type AdapterSource =
  | { kind: "inline"; files: AdapterFiles }
  | { kind: "stored"; key: string; config: FileRecord & { r2Key: string }; weights: FileRecord & { r2Key: string } };

/**
 * `fetchable`: the backend that serves adapters fetches storage through grants. Then an adapter whose
 * meta records its files (and whose object keys a grant can name) stays in R2; else its files are read.
 */
export async function resolveModel(
  r2: R2Bucket,
  tenant: string,
  model: string,
  backends: Backends,
  fetchable = false,
): Promise<{ base: string; adapter: AdapterSource | null }> {
  const notFound = () =>
    new HttpError(404, { message: `The model '${model}' does not exist or is not served here.`, param: "model", code: "model_not_found" });
  if (listModels(backends).includes(model)) return { base: model, adapter: null };
  const cut = model.lastIndexOf(":");
  const base = model.slice(0, cut);
  if (cut <= 0 || !backends.gpu?.models().includes(base)) throw notFound();
  const id = model.slice(cut + 1);
  const meta = /^[a-z0-9][a-z0-9_-]{0,63}$/.test(id) ? await getAdapter(r2, tenant, id) : null;
  if (!meta || meta.model !== base) throw notFound();
  const keys = adapterFileKeys(tenant, id);
  if (fetchable && meta.files && validKey(keys.config) && validKey(keys.weights))
    return { base, adapter: { kind: "stored", key: meta.key, config: { ...meta.files.config, r2Key: keys.config }, weights: { ...meta.files.weights, r2Key: keys.weights } } };
  const files = await getAdapterFiles(r2, tenant, id);
  if (!files) throw notFound();
  return { base, adapter: { kind: "inline", files: { key: meta.key, ...files } } };
}

/** The step's `adapter`: the files, or read grants (short-lived, minted now) for exactly its two objects. */
export async function adapterForStep(src: AdapterSource, signer: GrantSigner | null): Promise<AdapterFiles | AdapterGrants> {
  if (src.kind === "inline") return src.files;
  if (!signer) throw new Error("a stored adapter needs a grant signer");
  const [config, weights] = await mintGrants(signer, [
    { key: src.config.r2Key, mode: "read" },
    { key: src.weights.r2Key, mode: "read" },
  ]);
  return {
    key: src.key,
    config: { grant: config!, bytes: src.config.bytes, sha256: src.config.sha256 },
    weights: { grant: weights!, bytes: src.weights.bytes, sha256: src.weights.sha256 },
  };
}
