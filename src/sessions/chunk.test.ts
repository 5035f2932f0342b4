import { describe, expect, it } from "vitest";
import { sha256Hex } from "../crypto";
import { CHUNK_PREFIX_BYTES, decodeChunk, encodeChunk, parseChunk, type ChunkFields } from "./chunk";

const fields: ChunkFields = { producer: "sha256:ab+test", codec: "raw-f32", layers: 2, kv_heads: 3, head_dim: 4, token_start: 5, token_end: 7 };
const payloadBytes = 2 * 2 * 3 * 2 * 4 * 4; // layers x {K,V} x heads x tokens x dim x f32

function payload(): Uint8Array {
  const f = new Float32Array(payloadBytes / 4).map((_, i) => i * 0.5 - 3);
  return new Uint8Array(f.buffer);
}

/** Container bytes with a hand-made header (to build chunks the encoder refuses to make). */
function withHeader(header: unknown, body: Uint8Array, version = 1): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(CHUNK_PREFIX_BYTES + json.length + body.length);
  out.set([0x52, 0x50, 0x4b, 0x56]);
  new DataView(out.buffer).setUint16(4, version, true);
  new DataView(out.buffer).setUint32(6, json.length, true);
  out.set(json, CHUNK_PREFIX_BYTES);
  out.set(body, CHUNK_PREFIX_BYTES + json.length);
  return out;
}

describe("KV chunk container", () => {
  describe("round trip", () => {
    it("should decode what it encodes, header and payload", async () => {
      const p = payload();
      const bytes = await encodeChunk(fields, p);
      const r = await decodeChunk(bytes);
      expect(r.ok).toBe(true);
      if (!r.ok) return;
      expect(r.chunk.header).toMatchObject({ ...fields, payload_bytes: p.length });
      expect(r.chunk.header.payload_sha256).toMatch(/^[0-9a-f]{64}$/);
      expect(Array.from(r.chunk.payload)).toEqual(Array.from(p));
    });

    it("should be byte-for-byte deterministic", async () => {
      expect(Array.from(await encodeChunk(fields, payload()))).toEqual(Array.from(await encodeChunk(fields, payload())));
    });

    it("should refuse to encode a payload that does not match the shape", async () => {
      await expect(encodeChunk(fields, payload().subarray(4))).rejects.toThrow(/payload_bytes/);
    });
  });

  describe("hostile bytes", () => {
    it("should reject every truncation without throwing", async () => {
      const bytes = await encodeChunk(fields, payload());
      for (const n of [0, 1, 4, 9, 10, 11, 40, bytes.length - 1]) {
        const r = await decodeChunk(bytes.subarray(0, n));
        expect(r.ok, `length ${n}`).toBe(false);
      }
    });

    // The header has no checksum of its own (a flipped letter of the producer still parses; the
    // consumer then rejects the producer, and the router checks the whole object's SHA-256).
    it("should reject a flipped bit in the prefix or the payload", async () => {
      const bytes = await encodeChunk(fields, payload());
      const payloadStart = bytes.length - payloadBytes;
      const positions = [...Array(CHUNK_PREFIX_BYTES).keys(), ...Array.from({ length: payloadBytes / 5 }, (_, k) => payloadStart + 5 * k)];
      for (const i of positions) {
        const bad = bytes.slice();
        bad[i]! ^= 0x10;
        expect((await decodeChunk(bad)).ok, `byte ${i}`).toBe(false);
      }
    });

    it("should name what is wrong", async () => {
      const good = await encodeChunk(fields, payload());
      const h = (await decodeChunk(good)) as { ok: true; chunk: { header: object } };
      const p = payload();
      const cases: [Uint8Array, RegExp][] = [
        [Uint8Array.from([0x50, ...good.subarray(1)]), /magic/],
        [withHeader(h.chunk.header, p, 2), /version/],
        [withHeader("not json", p), /JSON/],
        [withHeader("[1,2]", p), /object/],
        [withHeader({ ...h.chunk.header, layers: 0 }, p), /layers/],
        [withHeader({ ...h.chunk.header, head_dim: 1.5 }, p), /head_dim/],
        [withHeader({ ...h.chunk.header, token_end: 5 }, p), /token_end/],
        [withHeader({ ...h.chunk.header, token_start: -1 }, p), /token_start/],
        [withHeader({ ...h.chunk.header, producer: "" }, p), /producer/],
        [withHeader({ ...h.chunk.header, codec: "RAW F32" }, p), /codec/],
        [withHeader({ ...h.chunk.header, payload_sha256: "XYZ" }, p), /payload_sha256/],
        [withHeader({ ...h.chunk.header, token_end: 8 }, p), /does not match the shape/],
        [withHeader(h.chunk.header, p.subarray(8)), /payload is/],
        [withHeader({ ...h.chunk.header, payload_sha256: "0".repeat(64) }, p), /SHA-256 mismatch/],
      ];
      for (const [bytes, err] of cases) {
        const r = await decodeChunk(bytes);
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.error).toMatch(err);
      }
    });

    it("should reject a header length that runs past the end or is huge", () => {
      const bytes = withHeader("{}", new Uint8Array(0));
      new DataView(bytes.buffer).setUint32(6, 0xffffffff, true);
      expect(parseChunk(bytes)).toMatchObject({ ok: false, error: expect.stringMatching(/header length/) });
      new DataView(bytes.buffer).setUint32(6, 100, true);
      expect(parseChunk(bytes)).toMatchObject({ ok: false, error: expect.stringMatching(/past the end/) });
    });

    it("should accept unknown codecs with any payload size, and ignore unknown header keys", async () => {
      const body = new Uint8Array([1, 2, 3]);
      const sha = await sha256Hex(body);
      const header = { ...fields, codec: "spec-v1", payload_bytes: 3, payload_sha256: sha, extra: { x: 1 } };
      const r = await decodeChunk(withHeader(header, body));
      expect(r.ok).toBe(true);
      if (r.ok) expect(r.chunk.header).not.toHaveProperty("extra");
    });
  });
});
