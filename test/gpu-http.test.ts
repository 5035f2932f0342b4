// The GPU backend client: signing, request framing and response parsing against byte fixtures
// built from docs/backend-wire-format.md. The end-to-end run against the real backend is in
// test/gpu-dispatch.test.ts (when scripts/test_all.sh has started one).
import { describe, expect, it } from "vitest";
import { encodeGenerateBody, frame, KIND_ADAPTER, KIND_JSON, KIND_KV, parseGenerateStream, readFrames, signRequest } from "../src/backends/gpu-http";
import type { GenerateEvent } from "../src/backends/types";
import { encodeChunk } from "../src/sessions/chunk";

const enc = new TextEncoder();
const json = (o: object) => frame(KIND_JSON, enc.encode(JSON.stringify(o)));
const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const p of parts) (out.set(p, off), (off += p.byteLength));
  return out;
};
/** A body delivered `step` bytes at a time, to cross every frame boundary. */
const streamOf = (bytes: Uint8Array, step: number) =>
  new ReadableStream<Uint8Array>({
    start(ctl) {
      for (let i = 0; i < bytes.byteLength; i += step) ctl.enqueue(bytes.slice(i, i + step));
      ctl.close();
    },
  });
const collect = async (body: ReadableStream<Uint8Array>) => {
  const out: GenerateEvent[] = [];
  for await (const ev of parseGenerateStream(body)) out.push(ev);
  return out;
};

describe("GPU backend client", () => {
  describe("signRequest", () => {
    it("should sign timestamp + '.' + body with HMAC-SHA256 (vector from Python's hmac)", async () => {
      const sig = await signRequest("s3cret", "1764345600", new Uint8Array([1, 2, 3, 255]));
      expect(sig).toBe("v1=b491271bf5b4e685c873fcc82be8377937a492cbafe9371c53e87425134870e7");
    });
  });

  describe("encodeGenerateBody", () => {
    it("should write the JSON header frame and one KV frame per restored chunk", async () => {
      const payload = new Uint8Array(1 * 2 * 1 * 2 * 2 * 2); // layers 1, kv_heads 1, 2 tokens, head_dim 2, bf16
      const bytes = await encodeChunk(
        { producer: "reprise-gpu/0.1;x", codec: "raw-bf16", layers: 1, kv_heads: 1, head_dim: 2, token_start: 0, token_end: 2 },
        payload,
      );
      const { parseChunk } = await import("../src/sessions/chunk");
      const chunk = (parseChunk(bytes) as { ok: true; chunk: import("../src/backends/types").KvChunk }).chunk;
      const body = encodeGenerateBody("smollm2-135m", {
        model: "smollm2-135m-instruct",
        promptIds: [1, 2, 3],
        restored: [chunk],
        sampling: { maxTokens: 5, temperature: 0, topP: 1, seed: -1, stop: ["\n\n"] },
      });
      const frames = [];
      for await (const f of readFrames(streamOf(body, 7))) frames.push(f);
      expect(frames.map((f) => f.kind)).toEqual([KIND_JSON, KIND_KV]);
      expect(JSON.parse(new TextDecoder().decode(frames[0]!.payload))).toEqual({
        version: 1,
        model: "smollm2-135m",
        prompt_token_ids: [1, 2, 3],
        sampling: { max_tokens: 5, temperature: 0, top_p: 1, seed: Number.MAX_SAFE_INTEGER, stop: ["\n\n"] },
        chunks: 1,
      });
      expect(frames[1]!.payload).toEqual(bytes);
    });

    const sampling = { maxTokens: 5, temperature: 0, topP: 1, stop: [] };
    const grant = (key: string) => ({ key, mode: "read" as const, method: "GET" as const, url: `http://s/${key}`, headers: {}, expires: 1 });

    it("should send an adapter's read grants in the header and no adapter frame", async () => {
      const adapter = {
        key: "a".repeat(64),
        config: { grant: grant("adapters/t/p/adapter_config.json"), bytes: 700, sha256: "b".repeat(64) },
        weights: { grant: grant("adapters/t/p/adapter_model.safetensors"), bytes: 9000, sha256: "c".repeat(64) },
      };
      const body = encodeGenerateBody("smollm2-135m", { model: "m", promptIds: [1], restored: [], sampling, adapter });
      const frames = [];
      for await (const f of readFrames(streamOf(body, 64))) frames.push(f);
      expect(frames.map((f) => f.kind)).toEqual([KIND_JSON]);
      expect(JSON.parse(new TextDecoder().decode(frames[0]!.payload)).adapter).toEqual(adapter);
    });

    it("should send an adapter's files inline as two adapter frames without grants", async () => {
      const adapter = { key: "a".repeat(64), config: new Uint8Array([123, 125]), weights: new Uint8Array([1, 2, 3]) };
      const body = encodeGenerateBody("smollm2-135m", { model: "m", promptIds: [1], restored: [], sampling, adapter });
      // readFrames (the response reader) knows no adapter kind: split the request by hand
      const kinds: number[] = [];
      const payloads: Uint8Array[] = [];
      for (let off = 0; off < body.byteLength; ) {
        const n = new DataView(body.buffer, body.byteOffset + off + 1, 4).getUint32(0, true);
        kinds.push(body[off]!);
        payloads.push(body.subarray(off + 5, off + 5 + n));
        off += 5 + n;
      }
      expect(kinds).toEqual([KIND_JSON, KIND_ADAPTER, KIND_ADAPTER]);
      expect(JSON.parse(new TextDecoder().decode(payloads[0])).adapter).toEqual({ key: adapter.key, inline: true });
      expect([...payloads[1]!, ...payloads[2]!]).toEqual([123, 125, 1, 2, 3]);
    });
  });

  describe("parseGenerateStream", () => {
    const kv = new Uint8Array([0x52, 0x50, 0x4b, 0x56, 9, 9, 9]);
    const ok = concat([
      json({ type: "token", id: 504, text: "The" }),
      json({ type: "token", id: 3575, text: " capital", extra: "ignored" }),
      frame(KIND_KV, kv),
      json({ type: "done", finish_reason: "length", usage: { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 1 } }),
    ]);

    for (const step of [1, 3, 5, ok.byteLength])
      it(`should yield tokens, the chunk and done whatever the read size (${step})`, async () => {
        expect(await collect(streamOf(ok, step))).toEqual([
          { type: "token", id: 504, text: "The" },
          { type: "token", id: 3575, text: " capital" },
          { type: "kv", chunk: kv },
          { type: "done", finishReason: "length", cachedTokens: 1 },
        ]);
      });

    it("should throw on an error event", async () => {
      const body = concat([json({ type: "token", id: 1, text: "a" }), json({ type: "error", error: { code: "internal", message: "boom" } })]);
      await expect(collect(streamOf(body, 4))).rejects.toThrow(/boom/);
    });

    it("should throw when the stream is cut before done", async () => {
      await expect(collect(streamOf(ok.slice(0, ok.byteLength - 10), 16))).rejects.toThrow(/inside a frame/);
      await expect(collect(streamOf(json({ type: "token", id: 1, text: "a" }), 16))).rejects.toThrow(/without a done/);
    });

    it("should throw on an unknown frame kind or an oversized frame", async () => {
      await expect(collect(streamOf(frame(0x07, new Uint8Array(1)), 8))).rejects.toThrow(/unknown frame kind/);
      const huge = new Uint8Array([KIND_JSON, 0xff, 0xff, 0xff, 0x7f]);
      await expect(collect(streamOf(huge, 8))).rejects.toThrow(/frame of/);
    });
  });
});
