// LoRA adapter uploads through the Worker: PEFT's files (the committed demo adapter, adapters/pirate/)
// stored in R2 under the tenant, listed, read and deleted; malformed adapters get a 400 in OpenAI's
// shape and store nothing. Serving them on the GPU backend: test/adapters-gpu.test.ts.
import { SELF } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { adapterForStep, resolveModel } from "../src/adapters/resolve";
import { GpuHttpBackend } from "../src/backends/gpu-http";
import { sha256Hex, toHex } from "../src/crypto";
import type { Bindings } from "../src/env";
import { grantSigner, verifyWorkerGrant } from "../src/storage/grants";
import { BASE, KEYS, api, errorOf, r2Keys } from "./helpers";

let CONFIG: Uint8Array;
let WEIGHTS: Uint8Array;

async function demoFile(name: string): Promise<Uint8Array> {
  const res = await (env as unknown as { LORA_FILES: Fetcher }).LORA_FILES.fetch(`http://files/${name}`);
  if (!res.ok) throw new Error(`demo adapter file ${name}: ${await res.text()}`);
  return new Uint8Array(await res.arrayBuffer());
}

beforeAll(async () => {
  CONFIG = await demoFile("adapter_config.json");
  WEIGHTS = await demoFile("adapter_model.safetensors");
});

export function upload(config: Uint8Array, weights: Uint8Array, fields: Record<string, string> = {}, key: string = KEYS.a) {
  const form = new FormData();
  form.append("adapter_config", new Blob([config]), "adapter_config.json");
  form.append("adapter_model", new Blob([weights]), "adapter_model.safetensors");
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  return SELF.fetch(`${BASE}/v1/adapters`, { method: "POST", headers: { authorization: `Bearer ${key}` }, body: form });
}

/** A safetensors file rebuilt after `edit` changes its header entries or data. */
function rebuild(w: Uint8Array, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>, data: Uint8Array) => Uint8Array) {
  const n = Number(new DataView(w.buffer, w.byteOffset, 8).getBigUint64(0, true));
  const h = JSON.parse(new TextDecoder().decode(w.subarray(8, 8 + n)));
  const data = edit(h, w.slice(8 + n));
  const head = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(8 + head.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  out.set(data, 8 + head.length);
  return out;
}

const firstA = (h: Record<string, unknown>) => Object.keys(h).filter((k) => k.endsWith("lora_A.weight")).sort()[0]!;
const editConfig = (patch: Record<string, unknown>) => new TextEncoder().encode(JSON.stringify({ ...JSON.parse(new TextDecoder().decode(CONFIG)), ...patch }));

describe("LoRA adapters", () => {
  describe("POST /v1/adapters", () => {
    it("stores a PEFT adapter for the tenant and lists, reads and deletes it", async () => {
      const res = await upload(CONFIG, WEIGHTS, { name: "pirate-a" });
      expect(res.status).toBe(201);
      const ad = (await res.json()) as Record<string, unknown>;
      expect(ad).toMatchObject({ id: "pirate-a", object: "adapter", model: "smollm2-135m-instruct", rank: 8,
        target_modules: ["q_proj", "v_proj", "o_proj"], model_id: "smollm2-135m-instruct:pirate-a" });
      expect(ad.key).toMatch(/^[0-9a-f]{64}$/);
      expect(await r2Keys("adapters/tenant-a/pirate-a/")).toEqual(["adapter_config.json", "adapter_model.safetensors", "meta.json"].map((f) => `adapters/tenant-a/pirate-a/${f}`));
      const stored = new Uint8Array(await (await env.BLOBS.get("adapters/tenant-a/pirate-a/adapter_model.safetensors"))!.arrayBuffer());
      expect(stored.byteLength).toBe(WEIGHTS.byteLength);
      expect(stored.every((x, i) => x === WEIGHTS[i])).toBe(true); // (toEqual on 3 MB typed arrays takes minutes)

      const list = (await (await api("/v1/adapters")).json()) as { data: { id: string }[] };
      expect(list.data.map((a) => a.id)).toContain("pirate-a");
      expect((await api("/v1/adapters/pirate-a")).status).toBe(200);
      expect((await upload(CONFIG, WEIGHTS, { name: "pirate-a" })).status).toBe(409);

      // another tenant sees nothing of it
      expect(await errorOf(await api("/v1/adapters/pirate-a", { key: KEYS.b }))).toMatchObject({ status: 404, code: "adapter_not_found" });
      expect((await api("/v1/adapters/pirate-a", { method: "DELETE", key: KEYS.b })).status).toBe(404);
      const other = (await (await api("/v1/adapters", { key: KEYS.b })).json()) as { data: unknown[] };
      expect(other.data).toEqual([]);

      const del = await api("/v1/adapters/pirate-a", { method: "DELETE" });
      expect(await del.json()).toEqual({ id: "pirate-a", object: "adapter", deleted: true });
      expect((await api("/v1/adapters/pirate-a")).status).toBe(404);
      expect(await r2Keys("adapters/tenant-a/pirate-a/")).toEqual([]);
    });

    it("names an unnamed adapter", async () => {
      const ad = (await (await upload(CONFIG, WEIGHTS)).json()) as { id: string };
      expect(ad.id).toMatch(/^lora-[0-9a-f]{12}$/);
    });

    const cases: [string, () => [Uint8Array, Uint8Array], RegExp][] = [
      ["a config that is not JSON", () => [new TextEncoder().encode("{nope"), WEIGHTS], /not JSON/],
      ["another PEFT method", () => [editConfig({ peft_type: "IA3" }), WEIGHTS], /peft_type/],
      ["a rank outside 4-128", () => [editConfig({ r: 256 }), WEIGHTS], /r must be/],
      ["a config rank the tensors do not have", () => [editConfig({ r: 16 }), WEIGHTS], /shape/],
      ["an unsupported target module", () => [editConfig({ target_modules: ["q_proj", "lm_head"] }), WEIGHTS], /lm_head/],
      ["DoRA", () => [editConfig({ use_dora: true }), WEIGHTS], /use_dora/],
      ["another base model", () => [editConfig({ base_model_name_or_path: "meta-llama/Llama-2-7b-hf" }), WEIGHTS], /trained for/],
      ["a missing tensor", () => [CONFIG, rebuild(WEIGHTS, (h, d) => { const k = firstA(h); const [b, e] = h[k]!.data_offsets as [number, number]; delete h[k];
        for (const v of Object.values(h)) if (v.data_offsets && v.data_offsets[0]! >= e) v.data_offsets = v.data_offsets.map((x) => x - (e - b));
        return new Uint8Array([...d.subarray(0, b), ...d.subarray(e)]); })], /missing/],
      ["an extra tensor", () => [CONFIG, rebuild(WEIGHTS, (h, d) => { h["extra.weight"] = { dtype: "F32", shape: [1], data_offsets: [d.length, d.length + 4] };
        return new Uint8Array([...d, 0, 0, 0, 0]); })], /unexpected/],
      ["a wrong shape", () => [CONFIG, rebuild(WEIGHTS, (h, d) => { const k = firstA(h); const s = h[k]!.shape; h[k]!.shape = [s[0]! * 2, s[1]! / 2]; return d; })], /shape/],
      ["a NaN", () => [CONFIG, rebuild(WEIGHTS, (h, d) => { const k = firstA(h); new DataView(d.buffer).setFloat32(h[k]!.data_offsets[0]! + 12, NaN, true); return d; })], /non-finite/],
      ["an infinity", () => [CONFIG, rebuild(WEIGHTS, (h, d) => { new DataView(d.buffer).setFloat32(d.length - 4, -Infinity, true); return d; })], /non-finite/],
      ["bytes that are not safetensors", () => [CONFIG, WEIGHTS.slice(0, 1000)], /not a valid safetensors/],
      ["an oversize file", () => [CONFIG, new Uint8Array(Number((env as unknown as { ADAPTER_MAX_BYTES: string }).ADAPTER_MAX_BYTES) + 1)], /limit|at most/],
    ];
    for (const [what, make, message] of cases)
      it(`answers 400 for ${what} and stores nothing`, async () => {
        const before = await r2Keys("adapters/");
        const [c, w] = make();
        const e = await errorOf(await upload(c, w, { name: "broken" }));
        expect(e).toMatchObject({ status: 400, type: "invalid_request_error" });
        expect(e.message).toMatch(message);
        expect(await r2Keys("adapters/")).toEqual(before);
      });
  });

  describe("model ids", () => {
    it("answers 404 for an adapter of another tenant or none", async () => {
      await upload(CONFIG, WEIGHTS, { name: "mine" });
      for (const [model, key] of [["smollm2-135m-instruct:mine", KEYS.b], ["smollm2-135m-instruct:nothing", KEYS.a]] as const) {
        const res = await api("/v1/chat/completions", { key, body: { model, messages: [{ role: "user", content: "hi" }] } });
        expect(await errorOf(res)).toMatchObject({ status: 404, code: "model_not_found", param: "model" });
      }
    });

    it("leaves a recorded adapter in R2 for a backend that fetches it, and reads the files otherwise", async () => {
      await upload(CONFIG, WEIGHTS, { name: "where" });
      const backends = { edge: null, gpu: new GpuHttpBackend({ ...env, GPU_BACKEND_URL: "http://127.0.0.1:1" } as Bindings) };
      const model = "smollm2-135m-instruct:where";
      const stored = (await resolveModel(env.BLOBS, "tenant-a", model, backends, true)).adapter!;
      if (stored.kind !== "stored") throw new Error("expected the stored form");
      expect(stored.config).toMatchObject({ bytes: CONFIG.byteLength, sha256: await sha256Hex(CONFIG) });
      expect(stored.weights).toMatchObject({ bytes: WEIGHTS.byteLength, sha256: await sha256Hex(WEIGHTS) });
      // R2 holds the recorded SHA-256 too: it verified the body on put
      expect(toHex((await env.BLOBS.head(stored.weights.r2Key))!.checksums.sha256!)).toBe(stored.weights.sha256);
      const secret = "resolve-test-secret";
      const step = await adapterForStep(stored, grantSigner({ STORAGE_GRANTS: "worker", STORAGE_GRANT_ORIGIN: "http://edge", STORAGE_GRANT_SECRET: secret }));
      if (!("grant" in step.config) || !("grant" in step.weights)) throw new Error("expected grants");
      for (const [f, key] of [[step.config, stored.config.r2Key], [step.weights, stored.weights.r2Key]] as const) {
        const url = new URL(f.grant.url);
        expect(f.grant).toMatchObject({ key, mode: "read", method: "GET" });
        expect(await verifyWorkerGrant(secret, "GET", key, url.searchParams)).toMatchObject({ ok: true, key, mode: "read" });
        expect(f.grant.expires - Date.now() / 1000).toBeLessThanOrEqual(120);
      }
      const inline = (await resolveModel(env.BLOBS, "tenant-a", model, backends, false)).adapter!;
      if (inline.kind !== "inline") throw new Error("expected the files");
      // hashes, not toEqual: vitest's deep equality over 3 MB takes seconds
      expect([await sha256Hex(inline.files.config), await sha256Hex(inline.files.weights)]).toEqual([stored.config.sha256, stored.weights.sha256]);
      // an adapter stored before sizes and hashes were recorded travels inline even with grants
      const metaKey = stored.config.r2Key.replace("adapter_config.json", "meta.json");
      const { files: _f, ...old } = (await (await env.BLOBS.get(metaKey))!.json()) as Record<string, unknown>;
      await env.BLOBS.put(metaKey, JSON.stringify(old));
      expect((await resolveModel(env.BLOBS, "tenant-a", model, backends, true)).adapter!.kind).toBe("inline");
    });
  });
});
