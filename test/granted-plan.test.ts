// The grant path's planning and bookkeeping on the edge (src/sessions/granted.ts), against real R2:
// which objects a decision grants, and what the edge records of what the backend says it stored.
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { storedReport } from "../src/backends/gpu-http";
import { applyTurn, emptyRateRecord } from "../src/sessions/rates";
import type { TurnStats } from "../src/sessions/rates";
import { fallbackReasons } from "../src/turns/resume";
import { sha256Hex } from "../src/crypto";
import { candidateChunks, grantPlan, storedChunkRef } from "../src/sessions/granted";
import { decideResume } from "../src/sessions/resume-policy";
import type { ResumeDecision } from "../src/sessions/resume-policy";
import type { ChunkRef, SessionRecord } from "../src/sessions/store";
import type { GrantSigner } from "../src/storage/grants";

const signer: GrantSigner = { kind: "worker", origin: "http://edge.test", secret: "s" };
const P = "reprise-gpu/0.1.0;weights=sha256:00;dtype=bfloat16;device=cpu";
const ref = (n: number, start: number, end: number, codec: string, alt?: string): ChunkRef => ({
  r2Key: `sessions/sess_p/${n}.kv`, tokenStart: start, tokenEnd: end, producer: P, sha256: "a".repeat(64), bytes: 100, codec, mac: "b".repeat(64),
  ...(alt ? { alt: { r2Key: `sessions/sess_p/${n}.alt.kv`, codec: alt, sha256: "c".repeat(64), bytes: 300, mac: "d".repeat(64) } } : {}),
});
const record = (chunks: ChunkRef[]): SessionRecord => ({
  id: "sess_p", tenant: "t", created: 0, revision: 3, turns: 3, messages: [], tokenIds: Array.from({ length: 120 }, (_, i) => i), chunks, nextChunk: 3,
});
const decision = (d: Partial<ResumeDecision>): ResumeDecision => ({
  restore: "raw", tokens: 100, splitAt: 0, store: "raw", defaulted: false, reason: "", estimates: { recompute_s: 1, raw_s: 1, coded_s: 1, split_s: null }, ...d,
});
const prompt = Array.from({ length: 130 }, (_, i) => (i < 120 ? i : 7));
const opts = { canCode: true, maxNewTokens: 40, rawBytesPerToken: 1000 };

describe("Grant planning", () => {
  const rec = record([ref(0, 0, 50, "spec-v1", "raw-bf16"), ref(1, 50, 100, "raw-bf16"), ref(2, 100, 125, "raw-bf16")]);

  it("should keep only chunks inside the reusable prefix, and say which forms exist", () => {
    const cand = candidateChunks(rec, prompt, () => true);
    expect(cand.tokens).toBe(100); // the third chunk runs past the common prefix (120)
    expect(cand.ranges).toEqual([{ tokenStart: 0, tokenEnd: 50, raw: true, coded: true }, { tokenStart: 50, tokenEnd: 100, raw: true, coded: false }]);
    expect(candidateChunks(rec, prompt, (p) => p !== P).tokens).toBe(0);
  });

  it("should grant exactly the chosen form of each chunk and create-only grants for the stored forms", async () => {
    const cand = candidateChunks(rec, prompt, () => true);
    const coded = await grantPlan(signer, env.BLOBS, rec, cand, decision({ restore: "coded", store: "both" }), opts);
    expect(coded.plan.chunks.map((c) => [c.grant.key, c.grant.mode, c.codec])).toEqual([
      ["sessions/sess_p/0.kv", "read", "spec-v1"],
      ["sessions/sess_p/1.kv", "read", "raw-bf16"],
    ]);
    expect(coded.plan.put.map((p) => [p.grant.key, p.grant.mode, p.form])).toEqual([
      ["sessions/sess_p/3.kv", "create", "coded"],
      ["sessions/sess_p/3.alt.kv", "create", "raw"],
    ]);
    expect(coded.plan.put[0]!.grant.maxBytes).toBe(40 * 1000 + (1 << 20));
    expect(coded.plan).toMatchObject({ restoreFrom: 0, exportFrom: 100 });
    const raw = await grantPlan(signer, env.BLOBS, rec, cand, decision({ restore: "raw", store: "none" }), opts);
    expect(raw.plan.chunks.map((c) => c.grant.key)).toEqual(["sessions/sess_p/0.alt.kv", "sessions/sess_p/1.kv"]);
    expect(raw.plan.put).toEqual([]);
    const split = await grantPlan(signer, env.BLOBS, rec, cand, decision({ restore: "split", splitAt: 50 }), opts);
    expect(split.plan.chunks.map((c) => c.grant.key)).toEqual(["sessions/sess_p/1.kv"]);
    expect(split.plan.restoreFrom).toBe(50);
    const none = await grantPlan(signer, env.BLOBS, rec, cand, decision({ restore: "recompute", store: "coded" }), { ...opts, canCode: false });
    expect(none.plan.chunks).toEqual([]);
    expect(none.plan.put.map((p) => p.form)).toEqual(["raw"]);
    expect(none.kept.map((c) => c.tokenEnd)).toEqual([50, 100]);
  });

  it("should remove an orphan at the create key before granting it", async () => {
    await env.BLOBS.put("sessions/sess_p/3.kv", "left by a turn that died before its commit");
    const cand = candidateChunks(rec, prompt, () => true);
    await grantPlan(signer, env.BLOBS, rec, cand, decision({}), opts);
    expect(await env.BLOBS.head("sessions/sess_p/3.kv")).toBeNull();
  });

  it("should follow the policy end to end: a decision from the ranges, grants from the decision", async () => {
    const cand = candidateChunks(rec, prompt, () => true);
    const d = decideResume({ historyTokens: cand.tokens, turnTokens: 40, rawBytesPerToken: 1000, ranges: cand.ranges, canCode: true, canSplit: false,
      rates: { prefillTokPerS: 10, transferBytesPerS: 1e9, decodeBytesPerS: 1e9, verifyBytesPerS: 1e9, firstByteS: 0.001, codedRatio: 0.3 } });
    expect(d.restore).not.toBe("recompute");
    const gp = await grantPlan(signer, env.BLOBS, rec, cand, d, opts);
    expect(gp.plan.chunks.length).toBe(2);
  });
});

describe("What the backend says it stored", () => {
  const report = (key: string, bytes: number, sha256: string) => ({ key, codec: "spec-v1", bytes, sha256, mac: "e".repeat(64), tokenStart: 100, tokenEnd: 130, producer: P });

  it("should record a stored chunk whose object has the reported size and SHA-256", async () => {
    const body = new TextEncoder().encode("chunk bytes as the backend wrote them");
    const sha = await sha256Hex(body);
    await env.BLOBS.put("sessions/sess_q/3.kv", body, { sha256: sha });
    const r = await storedChunkRef(env.BLOBS, ["sessions/sess_q/3.kv"], [report("sessions/sess_q/3.kv", body.byteLength, sha)]);
    expect(r).toMatchObject({ r2Key: "sessions/sess_q/3.kv", bytes: body.byteLength, sha256: sha, codec: "spec-v1", tokenStart: 100, tokenEnd: 130 });
  });

  it("should record nothing for a report that does not match the object, names another key, or is missing", async () => {
    const body = new TextEncoder().encode("other bytes");
    await env.BLOBS.put("sessions/sess_q/4.kv", body, { sha256: await sha256Hex(body) });
    expect(await storedChunkRef(env.BLOBS, ["sessions/sess_q/4.kv"], [report("sessions/sess_q/4.kv", body.byteLength + 1, await sha256Hex(body))])).toBeNull();
    expect(await storedChunkRef(env.BLOBS, ["sessions/sess_q/4.kv"], [report("sessions/sess_q/4.kv", body.byteLength, "0".repeat(64))])).toBeNull();
    expect(await storedChunkRef(env.BLOBS, ["sessions/sess_q/4.kv"], [report("sessions/other/4.kv", body.byteLength, await sha256Hex(body))])).toBeNull();
    expect(await storedChunkRef(env.BLOBS, ["sessions/sess_q/5.kv"], [report("sessions/sess_q/5.kv", 10, "1".repeat(64))])).toBeNull();
  });
});

describe("Hostile backend reports (property)", () => {
  const anything = fc.anything({ maxDepth: 3, withNullPrototype: false });

  it("should turn any kv_stored event into a well-typed report or nothing", () => {
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom("key", "codec", "bytes", "sha256", "mac", "token_start", "token_end", "producer", "x"), anything), (ev) => {
        const r = storedReport(ev);
        if (r) {
          for (const k of ["key", "codec", "sha256", "mac", "producer"] as const) expect(typeof r[k]).toBe("string");
          for (const k of ["bytes", "tokenStart", "tokenEnd"] as const) expect(Number.isSafeInteger(r[k]) && r[k] >= 0).toBe(true);
        }
      }),
      { numRuns: 300 },
    );
  });

  it("should keep rates positive and finite, or unknown, whatever the stats say", () => {
    fc.assert(
      fc.property(anything, anything, (restore, prefill) => {
        const stats = { restore, prefill, codecs: ["spec-v1"], kv_bytes_per_token: 23040 } as unknown as TurnStats;
        const rec = applyTurn(emptyRateRecord(), { decision: null, restoredTokens: 0, computedTokens: 0, fallbacks: fallbackReasons(stats), stats, stored: [], rawBytesPerToken: 23040 });
        for (const v of Object.values(rec.rates)) expect(v === null || (Number.isFinite(v) && v > 0)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});
