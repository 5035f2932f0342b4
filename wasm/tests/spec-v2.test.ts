// The wasm spec-v2 decoder inside workerd against the NumPy reference's committed vectors
// (vectors/kv-codec/manifest-v2.json): every v2-* chunk decodes to exactly the target's raw bits;
// hostile bytes (truncations, flipped header/table/word bytes, random headers) give a non-OK status
// or, when they still decode, exactly the target: never a trap or OK with wrong values.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeSpecChunk } from "../../src/kv-codec/spec-v1";
import { CODEC_STATUS } from "../../src/kv-codec/wasm";
import { ChunkCase, LoadedChunk, expectOf, fixedPredictor, loadChunkCase, manifestV2 } from "./vectors";

const cases = (manifestV2.cases as ChunkCase[]).filter((c) => c.kind === "chunk" && c.name.startsWith("v2-"));
const decode = (v: LoadedChunk, bytes: Uint8Array) => decodeSpecChunk(bytes, fixedPredictor(v.pred, expectOf(v.c).layers), expectOf(v.c));
const same = (a: ArrayBufferView, b: ArrayBufferView) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
/** OK only with the exact target bits. */
const exact = (v: LoadedChunk, r: ReturnType<typeof decode>) =>
  r.status !== "OK" || (r.mode === "bf16" ? same(r.bits, v.target!) : same(r.codes, v.codes!) && same(r.exps, v.exps!));

describe("wasm spec-v2 decoder", () => {
  it("should have both modes among the committed v2 vectors", () => {
    expect(new Set(cases.map((c) => c.mode))).toEqual(new Set(["bf16", "fp8"]));
  });

  it.each(cases.map((c) => [c.name, c] as const))("should decode %s bit for bit", async (_, c) => {
    const v = await loadChunkCase(c);
    const r = decode(v, v.chunk);
    expect(r.status).toBe("OK");
    if (r.status !== "OK") return;
    expect(r.mode).toBe(c.mode);
    if (r.mode === "fp8") {
      expect(same(r.codes, v.codes!)).toBe(true);
      expect(same(r.exps, v.exps!)).toBe(true);
    } else {
      expect(r.bits.length).toBe(v.target!.length);
      expect(same(r.bits, v.target!)).toBe(true);
    }
  });
});

describe("wasm spec-v2 decoder on hostile bytes", () => {
  const names = ["v2-bf16-improved", "v2-fp8-improved", "v2-bf16-adversarial"];
  const loaded = Promise.all(names.map((n) => loadChunkCase(cases.find((c) => c.name === n)!)));

  it("should reject every truncation and every trailing byte", async () => {
    for (const v of await loaded) {
      for (let len = 0; len < v.chunk.length; len++) {
        const r = decode(v, v.chunk.subarray(0, len));
        expect(r.status, `${v.c.name} cut at ${len}`).not.toBe("OK");
      }
      expect(decode(v, Uint8Array.from([...v.chunk, 0])).status).toBe("CORRUPT");
    }
  });

  it("should never claim OK with wrong values when any single byte is flipped", async () => {
    const wrong: string[] = [];
    for (const v of await loaded)
      for (let pos = 6; pos < v.chunk.length; pos++)
        for (const flip of [0x01, 0x80, 0xff]) {
          const b = v.chunk.slice();
          b[pos]! ^= flip;
          const r = decode(v, b);
          if (!CODEC_STATUS.includes(r.status) || r.status === "BAD_CALL" || !exact(v, r)) wrong.push(`${v.c.name} ${pos}^${flip} -> ${r.status}`);
        }
    expect(wrong).toEqual([]);
  });

  it("should never trap or decode wrong values on random headers and edits", async () => {
    const all = await loaded;
    const edit = fc.record({
      base: fc.nat({ max: all.length - 1 }),
      head: fc.option(fc.uint8Array({ minLength: 66, maxLength: 66 }), { nil: undefined }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 6 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
    });
    fc.assert(
      fc.property(edit, ({ base, head, edits, cut }) => {
        const v = all[base]!;
        let b: Uint8Array = v.chunk.slice();
        if (head) b.set(head.subarray(6), 6); // keep magic and version: exercise the v2 parser
        for (const [pos, flip] of edits) b[6 + (pos % (b.length - 6))]! ^= flip;
        if (cut !== undefined) b = b.slice(0, cut % (b.length + 1));
        const r = decode(v, b);
        return CODEC_STATUS.includes(r.status) && r.status !== "BAD_CALL" && exact(v, r);
      }),
      { numRuns: 600, seed: 20261202 },
    );
  });
});
