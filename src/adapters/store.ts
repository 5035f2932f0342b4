/**
 * LoRA adapters in R2, owned by a tenant (docs/lora-adapters.md):
 *
 *   adapters/<tenant>/<id>/adapter_config.json
 *   adapters/<tenant>/<id>/adapter_model.safetensors
 *   adapters/<tenant>/<id>/meta.json        written last: an adapter exists once its meta does
 *
 * Another tenant's adapter is simply not found. `key` is the SHA-256 the GPU backend caches it by:
 * sha256(u64 LE length of the config | config | weights), over the exact stored bytes. `files` records
 * each file's size and SHA-256 (R2 verifies them on put), so that with storage grants the backend can
 * fetch the files itself and check them; adapters stored before it have none and travel inline.
 */
import { sha256Hex } from "../crypto";

/** Size and SHA-256 (hex) of one stored file. */
export interface FileRecord {
  bytes: number;
  sha256: string;
}

export interface AdapterMeta {
  id: string;
  /** The public base model id, e.g. smollm2-135m-instruct. */
  model: string;
  key: string;
  rank: number;
  lora_alpha: number;
  target_modules: string[];
  base_model_name_or_path: string | null;
  bytes: number;
  created: number;
  files?: { config: FileRecord; weights: FileRecord };
}

export const CONFIG_FILE = "adapter_config.json";
export const WEIGHTS_FILE = "adapter_model.safetensors";

const prefix = (tenant: string) => `adapters/${encodeURIComponent(tenant)}/`;
const dir = (tenant: string, id: string) => `${prefix(tenant)}${id}/`;

/** The R2 keys of an adapter's two files. */
export function adapterFileKeys(tenant: string, id: string): { config: string; weights: string } {
  return { config: dir(tenant, id) + CONFIG_FILE, weights: dir(tenant, id) + WEIGHTS_FILE };
}

/** `files` of an adapter's meta. */
export async function fileRecords(config: Uint8Array, weights: Uint8Array): Promise<{ config: FileRecord; weights: FileRecord }> {
  const rec = async (b: Uint8Array) => ({ bytes: b.byteLength, sha256: await sha256Hex(b) });
  return { config: await rec(config), weights: await rec(weights) };
}

/** The backend's cache key of the two files. */
export async function adapterKey(config: Uint8Array, weights: Uint8Array): Promise<string> {
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(config.byteLength), true);
  const ds = new crypto.DigestStream("SHA-256");
  const w = ds.getWriter();
  await w.write(len);
  await w.write(config);
  await w.write(weights);
  await w.close();
  return [...new Uint8Array(await ds.digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export async function getAdapter(r2: R2Bucket, tenant: string, id: string): Promise<AdapterMeta | null> {
  const obj = await r2.get(dir(tenant, id) + "meta.json");
  return obj ? ((await obj.json()) as AdapterMeta) : null;
}

/** The stored files, for the backend (inline fallback of the grant path). */
export async function getAdapterFiles(r2: R2Bucket, tenant: string, id: string): Promise<{ config: Uint8Array; weights: Uint8Array } | null> {
  const k = adapterFileKeys(tenant, id);
  const [c, w] = await Promise.all([r2.get(k.config), r2.get(k.weights)]);
  if (!c || !w) return null;
  return { config: new Uint8Array(await c.arrayBuffer()), weights: new Uint8Array(await w.arrayBuffer()) };
}

/** Stores files then meta; false if the id is taken (nothing written then). */
export async function putAdapter(r2: R2Bucket, tenant: string, meta: AdapterMeta, config: Uint8Array, weights: Uint8Array): Promise<boolean> {
  const d = dir(tenant, meta.id);
  if (await r2.head(d + "meta.json")) return false;
  // with the recorded SHA-256s, R2 refuses a body that does not match them
  await r2.put(d + CONFIG_FILE, config, meta.files ? { sha256: meta.files.config.sha256 } : {});
  await r2.put(d + WEIGHTS_FILE, weights, meta.files ? { sha256: meta.files.weights.sha256 } : {});
  // create-only: a concurrent upload of the same id loses here and leaves the winner's files alone
  const ok = await r2.put(d + "meta.json", JSON.stringify(meta), { onlyIf: { etagDoesNotMatch: "*" } });
  return ok !== null;
}

export async function listAdapters(r2: R2Bucket, tenant: string): Promise<AdapterMeta[]> {
  const metas: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await r2.list({ prefix: prefix(tenant), cursor });
    metas.push(...page.objects.map((o) => o.key).filter((k) => k.endsWith("/meta.json")));
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  const out = await Promise.all(metas.map(async (k) => (await (await r2.get(k))?.json()) as AdapterMeta | undefined));
  return out.filter((m): m is AdapterMeta => !!m).sort((a, b) => a.created - b.created || a.id.localeCompare(b.id));
}

/** Deletes meta first (the adapter is gone at once), then its files; false if it did not exist. */
export async function deleteAdapter(r2: R2Bucket, tenant: string, id: string): Promise<boolean> {
  const d = dir(tenant, id);
  if (!(await r2.head(d + "meta.json"))) return false;
  await r2.delete(d + "meta.json");
  await r2.delete([d + CONFIG_FILE, d + WEIGHTS_FILE]);
  return true;
}
