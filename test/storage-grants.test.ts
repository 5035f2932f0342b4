// Storage grants (src/storage/grants.ts) and the Worker's signed streaming route
// (src/routes/storage.ts), called over a real HTTP socket into this worker (SELF_ORIGIN), as the
// GPU backend calls it.
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { sha256Hex, toBase64, sha256 } from "../src/crypto";
import { chunkMac, macKey, verifyChunkMac } from "../src/storage/chunk-mac";
import { mintGrants, presignS3, verifyWorkerGrant, MAX_GRANT_TTL_S } from "../src/storage/grants";
import type { Grant, GrantSigner } from "../src/storage/grants";

const t = env as unknown as { SELF_ORIGIN: Fetcher; STORAGE_GRANT_SECRET: string };
let origin = "";
let signer: GrantSigner;

beforeAll(async () => {
  origin = await (await t.SELF_ORIGIN.fetch("http://self/")).text();
  signer = { kind: "worker", origin, secret: t.STORAGE_GRANT_SECRET };
});

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let off = 0; off < n; off += 65536) crypto.getRandomValues(out.subarray(off, Math.min(n, off + 65536)));
  return out;
}

async function use(g: Grant, body?: Uint8Array, extra: Record<string, string> = {}) {
  return fetch(g.url, { method: g.method, headers: { ...g.headers, ...extra }, body });
}

describe("presignS3 (SigV4 query signing)", () => {
  it("should reproduce AWS's published presigned-URL example", async () => {
    // "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", Amazon S3 API
    // Reference: GET examplebucket/test.txt, 2013-05-24T00:00:00Z, 86400 s, the documentation's keys.
    const url = await presignS3({
      url: new URL("https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Expires=86400"),
      method: "GET",
      headers: {},
      accessKeyId: "AKIAIOSFODNN7EXAMPLE",
      secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
      region: "us-east-1",
      datetime: "20130524T000000Z",
    });
    const q = new URL(url).searchParams;
    expect(q.get("X-Amz-Credential")).toBe("AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request");
    expect(q.get("X-Amz-SignedHeaders")).toBe("host");
    expect(q.get("X-Amz-Signature")).toBe("aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
  });

  it("should sign If-None-Match into an R2 create grant and expire it as asked", async () => {
    const r2: GrantSigner = { kind: "r2-s3", endpoint: "https://acct.r2.cloudflarestorage.com", bucket: "reprise-blobs", accessKeyId: "AKID", secretAccessKey: "SECRET", region: "auto" };
    const [read, create] = await mintGrants(r2, [{ key: "sessions/s1/0.kv", mode: "read" }, { key: "sessions/s1/1.kv", mode: "create", maxBytes: 1000 }], { ttlS: 90, now: Date.UTC(2026, 11, 1) });
    const rq = new URL(read!.url);
    expect(rq.pathname).toBe("/reprise-blobs/sessions/s1/0.kv");
    expect(rq.searchParams.get("X-Amz-Expires")).toBe("90");
    expect(rq.searchParams.get("X-Amz-SignedHeaders")).toBe("host");
    expect(read!.method).toBe("GET");
    expect(new URL(create!.url).searchParams.get("X-Amz-SignedHeaders")).toBe("host;if-none-match");
    expect(create!.headers).toEqual({ "if-none-match": "*" });
    expect(create!.method).toBe("PUT");
    expect(create!.expires - read!.expires).toBe(0);
  });
});

describe("worker grants", () => {
  it("should verify what it minted and nothing else", async () => {
    const [g] = await mintGrants(signer, [{ key: "adapters/a1/adapter_model.safetensors", mode: "read" }]);
    const u = new URL(g!.url);
    const key = "adapters/a1/adapter_model.safetensors";
    expect(u.pathname).toBe("/storage/v1/objects/" + key);
    expect(await verifyWorkerGrant(signer.kind === "worker" ? signer.secret : "", "GET", key, u.searchParams)).toMatchObject({ ok: true, key, mode: "read" });
    expect(await verifyWorkerGrant("another secret", "GET", key, u.searchParams)).toMatchObject({ ok: false, code: "bad_signature" });
    expect(await verifyWorkerGrant(t.STORAGE_GRANT_SECRET, "GET", "adapters/a2/adapter_model.safetensors", u.searchParams)).toMatchObject({ ok: false, code: "bad_signature" });
    expect(await verifyWorkerGrant(t.STORAGE_GRANT_SECRET, "PUT", key, u.searchParams)).toMatchObject({ ok: false, status: 405 });
    const later = Date.now() + 121_000;
    expect(await verifyWorkerGrant(t.STORAGE_GRANT_SECRET, "GET", key, u.searchParams, later)).toMatchObject({ ok: false, code: "expired" });
  });

  it("should refuse to mint for keys that could escape their prefix", async () => {
    for (const key of ["", "../x", "a//b", "a/./b", "/abs", "a/b/", ".hidden", "a b"])
      await expect(mintGrants(signer, [{ key, mode: "read" }])).rejects.toThrow(/invalid object key/);
  });

  it("should cap the lifetime of a grant", async () => {
    const [g] = await mintGrants(signer, [{ key: "k", mode: "read" }], { ttlS: 86_400, now: 1_000_000 });
    expect(g!.expires).toBe(1000 + MAX_GRANT_TTL_S);
  });
});

describe("the streaming route", () => {
  it("should stream a stored object to a read grant, whole and by range", async () => {
    const bytes = randomBytes(3 << 20);
    await env.BLOBS.put("route/read.bin", bytes);
    const [g] = await mintGrants(signer, [{ key: "route/read.bin", mode: "read" }]);
    const res = await use(g!);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-length")).toBe(String(bytes.byteLength));
    expect(await sha256Hex(new Uint8Array(await res.arrayBuffer()))).toBe(await sha256Hex(bytes));
    const part = await use(g!, undefined, { range: "bytes=1000-1999" });
    expect(part.status).toBe(206);
    expect(new Uint8Array(await part.arrayBuffer())).toEqual(bytes.subarray(1000, 2000));
    const head = await fetch(g!.url, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-length")).toBe(String(bytes.byteLength));
  });

  it("should answer 404 for a granted object that is not there", async () => {
    const [g] = await mintGrants(signer, [{ key: "route/missing.bin", mode: "read" }]);
    const res = await use(g!);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("not_found");
  });

  it("should create an object once, with its checksum, and never overwrite it", async () => {
    const bytes = randomBytes(1 << 20);
    const [g] = await mintGrants(signer, [{ key: "route/new.bin", mode: "create", maxBytes: 2 << 20 }]);
    const sum = toBase64(await sha256(bytes));
    const res = await use(g!, bytes, { "x-amz-checksum-sha256": sum });
    expect(res.status, await res.clone().text()).toBe(201);
    const body = (await res.json()) as { size: number; sha256: string };
    expect(body).toMatchObject({ size: bytes.byteLength, sha256: await sha256Hex(bytes) });
    const again = await use(g!, randomBytes(100));
    expect(again.status).toBe(412);
    const stored = await env.BLOBS.get("route/new.bin");
    expect(await sha256Hex(new Uint8Array(await stored!.arrayBuffer()))).toBe(await sha256Hex(bytes));
  });

  it("should refuse bodies over the grant's bound, without If-None-Match, or with a wrong checksum", async () => {
    const [big, plain, wrong] = await mintGrants(signer, [
      { key: "route/big.bin", mode: "create", maxBytes: 1000 },
      { key: "route/plain.bin", mode: "create", maxBytes: 1000 },
      { key: "route/wrong.bin", mode: "create", maxBytes: 1000 },
    ]);
    expect((await use(big!, randomBytes(1001))).status).toBe(413);
    expect((await fetch(plain!.url, { method: "PUT", body: randomBytes(10) })).status).toBe(412);
    const bad = toBase64(await sha256(new Uint8Array([1, 2, 3])));
    expect((await use(wrong!, randomBytes(10), { "x-amz-checksum-sha256": bad })).status).toBe(400);
    for (const k of ["route/big.bin", "route/plain.bin", "route/wrong.bin"]) expect(await env.BLOBS.head(k)).toBeNull();
  });

  it("should refuse expired grants and grants used for the other direction", async () => {
    const [old] = await mintGrants(signer, [{ key: "route/read.bin", mode: "read" }], { ttlS: 1, now: Date.now() - 60_000 });
    expect((await use(old!)).status).toBe(403);
    const [r, w] = await mintGrants(signer, [{ key: "route/read.bin", mode: "read" }, { key: "route/other.bin", mode: "create", maxBytes: 10 }]);
    expect((await fetch(r!.url, { method: "PUT", headers: { "if-none-match": "*" }, body: "x" })).status).toBe(405);
    expect((await fetch(w!.url)).status).toBe(405);
    expect((await fetch(r!.url, { method: "DELETE" })).status).toBe(405);
  });

  it("should accept a minted URL only as minted, whatever is changed (property)", async () => {
    await env.BLOBS.put("route/fuzz.bin", "fuzz");
    const [g] = await mintGrants(signer, [{ key: "route/fuzz.bin", mode: "read" }]);
    const base = new URL(g!.url);
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant("param" as const), name: fc.constantFrom("mode", "exp", "sig", "max", "extra"), value: fc.string({ maxLength: 80 }) }),
      fc.record({ kind: fc.constant("drop" as const), name: fc.constantFrom("mode", "exp", "sig") }),
      fc.record({ kind: fc.constant("path" as const), value: fc.string({ minLength: 1, maxLength: 40 }) }),
      fc.record({ kind: fc.constant("flip" as const), at: fc.nat(63) }),
    );
    await fc.assert(
      fc.asyncProperty(mutation, async (m) => {
        const u = new URL(base);
        if (m.kind === "param") u.searchParams.set(m.name, m.value);
        else if (m.kind === "drop") u.searchParams.delete(m.name);
        else if (m.kind === "path") u.pathname = "/storage/v1/objects/" + m.value;
        else {
          const sig = u.searchParams.get("sig")!;
          u.searchParams.set("sig", sig.slice(0, m.at) + (sig[m.at] === "0" ? "1" : "0") + sig.slice(m.at + 1));
        }
        const res = await fetch(u.href);
        const text = await res.text();
        const same = u.pathname === base.pathname && ["mode", "exp", "sig", "max"].every((p) => u.searchParams.get(p) === base.searchParams.get(p));
        if (same) expect(res.status).toBe(200);
        else {
          expect(res.status, `${u.href} -> ${text}`).toBeGreaterThanOrEqual(400);
          expect(res.status).toBeLessThan(500);
          expect(text).not.toContain("fuzz");
        }
      }),
      { numRuns: 150 },
    );
  });
});

describe("chunk MAC", () => {
  // The same vector is checked by gpu-backend/tests/test_storage_remote.py: both sides must agree byte for byte.
  const header = {
    producer: "reprise-gpu/0.1.0;weights=sha256:00;dtype=bfloat16;device=cpu", codec: "spec-v1", layers: 30, kv_heads: 3,
    head_dim: 64, token_start: 0, token_end: 40, payload_bytes: 1234, payload_sha256: "ab".repeat(32),
  };
  const MAC = "3678ef19a28249274566922b12d7fd2a23781a09f6a4cd18f122ed520d42f47f";

  it("should match the Python backend's MAC and bind the key and every field", async () => {
    const k = await macKey(" test-secret\n");
    expect(await chunkMac(k, "sessions/sess_00/0.kv", header)).toBe(MAC);
    expect(await verifyChunkMac(k, "sessions/sess_00/0.kv", header, MAC)).toBe(true);
    expect(await verifyChunkMac(k, "sessions/sess_01/0.kv", header, MAC)).toBe(false);
    expect(await verifyChunkMac(k, "sessions/sess_00/0.kv", { ...header, token_end: 41 }, MAC)).toBe(false);
    expect(await verifyChunkMac(await macKey("other"), "sessions/sess_00/0.kv", header, MAC)).toBe(false);
    expect(await verifyChunkMac(k, "sessions/sess_00/0.kv", header, MAC.toUpperCase())).toBe(false);
  });
});

