// The Worker's own byte-level BPE (src/edge-model/bpe.ts) against @huggingface/tokenizers reading the
// HF tokenizer.json, on random text (the fixtures in edge-model.test.ts hold both to transformers).
import { Tokenizer } from "@huggingface/tokenizers";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { Bpe } from "../src/edge-model/bpe";

const files = env as unknown as { EDGE_FILES: Fetcher };
let ours: Bpe;
let hf: Tokenizer;

beforeAll(async () => {
  const get = async (p: string) => {
    const r = await files.EDGE_FILES.fetch(`http://edge-files${p}`);
    if (!r.ok) throw new Error(`${p}: ${r.status}`);
    return r;
  };
  ours = new Bpe(new Uint8Array(await (await get("/tokenizer")).arrayBuffer()));
  hf = new Tokenizer(await (await get("/tokenizer.json")).json(), {});
});

const hfIds = (s: string) => hf.encode(s, { add_special_tokens: false }).ids;

describe("Edge BPE", () => {
  it("should encode like @huggingface/tokenizers on random text, specials and unknown bytes included", () => {
    const piece = fc.oneof(
      fc.string({ unit: "grapheme", maxLength: 12 }),
      fc.string({ unit: "binary", maxLength: 8 }),
      fc.constantFrom("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", " ", "  ", "\n\n", "'s", "'ll", "123456", "\u0004\u0006", "ñ", "🙂"),
      fc.lorem({ maxCount: 3 }),
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 8 }), (parts) => {
        const s = parts.join("");
        expect(ours.encode(s)).toEqual(hfIds(s));
      }),
      { numRuns: 500, seed: 42 },
    );
  });

  it("should map every token id to its bytes and back for the single-byte tokens", () => {
    expect(ours.vocabSize).toBe(49152);
    expect(new TextDecoder().decode(ours.tokenBytes(ours.encode("Hello")[0]!))).toBe("Hello");
    expect(ours.encode("<|im_start|>user")).toEqual([1, ...hfIds("user")]);
    expect(() => ours.tokenBytes(49152)).toThrow(RangeError);
  });
});
