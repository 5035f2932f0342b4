// The wasm spec-v1 decoder inside workerd against the Python reference's committed vectors
// (vectors/kv-codec/): every chunk decodes to exactly the target's bits; hostile bytes (the committed
// corpus, then fast-check mutations) give the reference's status, never a trap or wrong values.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeSpecV1 } from "../../src/kv-codec/spec-v1";
import { CODEC_STATUS, codecWasm } from "../../src/kv-codec/wasm";
import { applyRecipe, hostile, resign } from "./hostile";
import { ChunkCase, expectOf, fixedPredictor, loadChunkCase, manifest } from "./vectors";

const chunkCases = (manifest.cases as ChunkCase[]).filter((c) => c.kind === "chunk");

describe("wasm spec-v1 decoder", () => {
  describe("committed vectors", () => {
    it.each(chunkCases.map((c) => [c.name, c] as const))("should decode %s bit for bit", async (_, c) => {
      const v = await loadChunkCase(c);
      const r = decodeSpecV1(v.chunk, fixedPredictor(v.pred, expectOf(c).layers), expectOf(c));
      expect(r.status).toBe("OK");
      if (r.status !== "OK") return;
      if (c.mode === "fp8") {
        expect(r.mode).toBe("fp8");
        if (r.mode !== "fp8") return;
        expect(Buffer.from(r.codes).equals(Buffer.from(v.codes!))).toBe(true);
        expect(Array.from(r.exps)).toEqual(Array.from(v.exps!));
      } else {
        expect(r.mode).toBe("bf16");
        if (r.mode !== "bf16") return;
        expect(r.bits.length).toBe(v.target!.length);
        expect(Buffer.from(r.bits.buffer).equals(Buffer.from(v.target!.buffer))).toBe(true);
      }
    });
  });
});

describe("wasm spec-v1 decoder on hostile bytes", () => {
  const bases = new Map<string, Awaited<ReturnType<typeof loadChunkCase>>>();
  const base = async (name: string) => {
    if (!bases.has(name)) bases.set(name, await loadChunkCase(chunkCases.find((c) => c.name === name)!));
    return bases.get(name)!;
  };
  const decode = (v: Awaited<ReturnType<typeof loadChunkCase>>, bytes: Uint8Array, pred = v.pred) =>
    decodeSpecV1(bytes, fixedPredictor(pred, expectOf(v.c).layers), expectOf(v.c));
  /** OK only with the exact target: anything else is a wrong decode. */
  const exact = (v: Awaited<ReturnType<typeof loadChunkCase>>, r: ReturnType<typeof decode>) =>
    r.status !== "OK" ||
    (r.mode === "bf16" ? Buffer.from(r.bits.buffer).equals(Buffer.from(v.target!.buffer))
      : Buffer.from(r.codes).equals(Buffer.from(v.codes!)) && Buffer.from(r.exps.buffer).equals(Buffer.from(v.exps!.buffer)));

  it("should give the Python reference's status for every entry of the committed corpus", async () => {
    const wrong: string[] = [];
    for (const r of hostile.entries) {
      const v = await base(r.base);
      const got = decode(v, await applyRecipe(v.chunk, r));
      if (got.status !== r.status || !exact(v, got)) wrong.push(`${JSON.stringify(r)} -> ${got.status}`);
    }
    expect(wrong).toEqual([]);
    expect(hostile.entries.length).toBeGreaterThan(700);
  });

  const names = ["bf16-improved", "fp8-improved", "bf16-adversarial"];
  const edit = fc.record({
    base: fc.constantFrom(...names),
    edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 6 }),
    cut: fc.option(fc.nat(), { nil: undefined }),
    resign: fc.boolean(),
  });

  it("should never trap or decode wrong values, whatever bytes are edited", async () => {
    await fc.assert(
      fc.asyncProperty(edit, async ({ base: name, edits, cut, resign: again }) => {
        const v = await base(name);
        let b: Uint8Array = v.chunk.slice();
        for (const [pos, flip] of edits) b[6 + (pos % (b.length - 6))]! ^= flip; // past magic and version
        if (cut !== undefined) b = b.slice(0, cut % (b.length + 1));
        if (again) b = await resign(b);
        const r = decode(v, b);
        return CODEC_STATUS.includes(r.status) && r.status !== "BAD_CALL" && exact(v, r);
      }),
      { numRuns: 600, seed: 20261201 },
    );
  });

  it("should reject random bytes behind a valid magic and version", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (tail) => {
        const b = Uint8Array.from([0x52, 0x50, 0x53, 0x43, 1, 0, ...tail]);
        const r = decodeSpecV1(b, { predict: () => new Float32Array(2 * 2 * 6 * 8) }, { fingerprint: "spec-v1 test vectors", layers: 2, kvHeads: 2, headDim: 8, tokenStart: 3, tokenEnd: 9 });
        return r.status !== "OK" && r.status !== "BAD_CALL";
      }),
      { numRuns: 1500, seed: 7 },
    );
  });

  it("should never return values for another prediction", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...names), fc.nat(), fc.double({ min: -4, max: 4, noNaN: true }), async (name, at, delta) => {
        const v = await base(name);
        const pred = v.pred.slice();
        pred[at % pred.length] = pred[at % pred.length]! + delta;
        const r = decode(v, v.chunk, pred);
        return ["OK", "CORRUPT", "VALUE_CHECKSUM"].includes(r.status) && exact(v, r);
      }),
      { numRuns: 300, seed: 3 },
    );
  });
});

describe("wasm SHA-256", () => {
  it("should equal WebCrypto's digest at every length around the block boundaries", async () => {
    const w = codecWasm();
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (bytes) => {
        w.reset();
        const p = w.put(bytes), out = w.alloc(32);
        expect(w.fn.sha256_digest(p, bytes.length, out)).toBe(0);
        const want = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
        return Buffer.from(w.u8(out, 32)).equals(Buffer.from(want));
      }),
      { numRuns: 400, seed: 11 },
    );
  });
});
