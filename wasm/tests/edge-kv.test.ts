// The edge model's KV codec (wasm/src/edge_kv.c, edge-kv-v1) inside workerd: exact round trips of
// bfloat16-precision and arbitrary float16 values, and hostile payloads that never trap or decode
// to other values.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeEdgeKv, EdgeKvDims, encodeEdgeKv } from "../../src/kv-codec/edge-kv";

/** float32 -> float16 bits after rounding to bfloat16 (the edge graph's kv_round). */
function kvRound(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = (u[0]! + 0x7fff + ((u[0]! >> 16) & 1)) & 0xffff0000; // round to nearest even at bit 16
  const v = f[0]!;
  // float32 (bfloat16-exact) -> float16 bits
  const s = v < 0 || Object.is(v, -0) ? 0x8000 : 0, a = Math.abs(v);
  if (a === 0) return s;
  let e = Math.floor(Math.log2(a));
  if (a < 2 ** e) e -= 1;
  if (a >= 2 ** (e + 1)) e += 1;
  if (e < -14) return s | Math.round(a / 2 ** -24); // subnormal
  return s | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
}

/** KV-like values: per (layer, kind, head, channel) a scale, Gaussian values around it. */
function kvLike(d: EdgeKvDims, seed: number): Uint16Array[] {
  let x = seed >>> 0;
  const rnd = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const gauss = () => Math.sqrt(-2 * Math.log(rnd() + 1e-12)) * Math.cos(2 * Math.PI * rnd());
  const blocks: Uint16Array[] = [];
  for (let b = 0; b < 2 * d.layers; b++) {
    const scale = Array.from({ length: d.kvHeads * d.headDim }, () => Math.exp(gauss() * 1.2));
    const v = new Uint16Array(d.tokens * d.kvHeads * d.headDim);
    for (let i = 0; i < v.length; i++) v[i] = kvRound(gauss() * scale[i % scale.length]!);
    blocks.push(v);
  }
  return blocks;
}

const join = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
};

function roundTrip(d: EdgeKvDims, blocks: Uint16Array[]) {
  const payload = join(encodeEdgeKv(d, (l, k, into) => into.set(blocks[l * 2 + k]!)));
  const got: Uint16Array[] = [];
  const st = decodeEdgeKv(payload, d, (l, k, v) => (got[l * 2 + k] = v.slice()));
  return { payload, st, got };
}

const same = (a: Uint16Array[], b: Uint16Array[]) => a.length === b.length && a.every((x, i) => Buffer.from(x.buffer).equals(Buffer.from(b[i]!.buffer)));

describe("edge-kv-v1 codec", () => {
  describe("round trips", () => {
    it.each([1, 7, 64])("should return the exact bits of KV-like values, %i tokens", (tokens) => {
      const d = { layers: 30, kvHeads: 3, headDim: 64, tokens };
      const blocks = kvLike(d, tokens);
      const { payload, st, got } = roundTrip(d, blocks);
      expect(st).toBe("OK");
      expect(same(got, blocks)).toBe(true);
      // bfloat16 precision in float16: well under the 16 raw bits per value once a few tokens are in
      if (tokens >= 64) expect((payload.length * 8) / (2 * 30 * tokens * 192)).toBeLessThan(11.5);
    });

    it("should return the exact bits of any float16 patterns (NaN, inf, subnormals, random)", () => {
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 5 }), fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 64 }), (tokens, pool) => {
          const d = { layers: 2, kvHeads: 3, headDim: 8, tokens };
          const blocks = Array.from({ length: 4 }, (_, b) => Uint16Array.from({ length: tokens * 24 }, (_, i) => pool[(i * 7 + b) % pool.length]!));
          const { st, got } = roundTrip(d, blocks);
          return st === "OK" && same(got, blocks);
        }),
        { numRuns: 300, seed: 5 },
      );
    });
  });

  describe("hostile payloads", () => {
    const d = { layers: 2, kvHeads: 3, headDim: 8, tokens: 6 };
    const blocks = kvLike(d, 9);
    const payload = roundTrip(d, blocks).payload;

    it("should give a status for the wrong shape, magic, version and length", () => {
      const run = (p: Uint8Array, dims = d) => decodeEdgeKv(p, dims, () => {});
      expect(run(payload, { ...d, tokens: 7 })).toBe("SHAPE_MISMATCH");
      expect(run(payload.slice(0, 3))).toBe("BAD_MAGIC");
      expect(run(Uint8Array.from([...payload.slice(0, 4), 2, ...payload.slice(5)]))).toBe("BAD_VERSION");
      expect(run(payload.slice(0, payload.length - 1))).toBe("TRUNCATED");
      expect(run(Uint8Array.from([...payload, 0]))).toBe("CORRUPT");
    });

    it("should never trap nor return values other than the encoded ones, whatever bytes change", () => {
      fc.assert(
        fc.property(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 8 }), fc.option(fc.nat(), { nil: undefined }), (edits, cut) => {
          let p = payload.slice();
          for (const [pos, flip] of edits) p[pos % p.length]! ^= flip;
          if (cut !== undefined) p = p.slice(0, cut % (p.length + 1));
          const got: Uint16Array[] = [];
          const st = decodeEdgeKv(p, d, (l, k, v) => (got[l * 2 + k] = v.slice()));
          return st !== "BAD_CALL" && (st !== "OK" || same(got, blocks));
        }),
        { numRuns: 2000, seed: 17 },
      );
    });
  });
});
