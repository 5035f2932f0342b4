import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decideResume, TIE_MARGIN } from "./resume-policy";
import type { PolicyInput, Rates, StoredRange } from "./resume-policy";

const B8 = 32 * 2 * 8 * 128 * 2; // Llama-3-8B BF16 K/V bytes per token
const H200: Rates = { prefillTokPerS: 37_000, transferBytesPerS: 1e9, decodeBytesPerS: 100e9, verifyBytesPerS: 20e9, firstByteS: 0.002, codedRatio: 0.33 };

function ranges(T: number, size: number, forms: { raw: boolean; coded: boolean }): StoredRange[] {
  const out: StoredRange[] = [];
  for (let s = 0; s < T; s += size) out.push({ tokenStart: s, tokenEnd: Math.min(T, s + size), ...forms });
  return out;
}

const input = (over: Partial<PolicyInput>): PolicyInput => ({
  historyTokens: 4096, turnTokens: 200, rawBytesPerToken: B8, ranges: ranges(4096, 1024, { raw: true, coded: true }),
  canCode: true, canSplit: false, rates: H200, ...over,
});

describe("Resume policy", () => {
  describe("restore", () => {
    it("should recompute when nothing is stored", () => {
      const d = decideResume(input({ ranges: [] }));
      expect(d).toMatchObject({ restore: "recompute", tokens: 0 });
      expect(d.estimates.raw_s).toBeNull();
      expect(d.estimates.coded_s).toBeNull();
    });

    it("should pick coded in its band of storage rates, raw above it, recompute below it or when prefill is cheap", () => {
      // A speculator at 0.5x of prefill decodes D = b·P/0.5 ≈ 9.7 GB/s of BF16: coded beats recompute above
      // X = 2·b·ρ·P ≈ 3.2 GB/s and raw below X ≈ D (docs/design-notes.md, "Resume policy").
      const D = (B8 * H200.prefillTokPerS!) / 0.5;
      expect(decideResume(input({ rates: { ...H200, transferBytesPerS: 4e9, decodeBytesPerS: D } })).restore).toBe("coded");
      expect(decideResume(input({ rates: { ...H200, transferBytesPerS: 1e9, decodeBytesPerS: D } })).restore).toBe("recompute");
      expect(decideResume(input({ rates: { ...H200, transferBytesPerS: 20e9, decodeBytesPerS: D } })).restore).toBe("raw");
      expect(decideResume(input({ rates: { ...H200, prefillTokPerS: 2e6 } })).restore).toBe("recompute");
    });

    it("should offer only the forms that exist for the whole history", () => {
      const rawOnly = decideResume(input({ ranges: ranges(4096, 1024, { raw: true, coded: false }), rates: { ...H200, transferBytesPerS: 0.1e9 } }));
      expect(rawOnly.estimates.coded_s).toBeNull();
      expect(rawOnly.restore).not.toBe("coded");
      const mixed = ranges(4096, 1024, { raw: true, coded: false });
      mixed[2] = { ...mixed[2]!, raw: false, coded: true };
      const d = decideResume(input({ ranges: mixed }));
      expect(d.estimates.raw_s).toBeNull();
      expect(d.estimates.coded_s).not.toBeNull();
    });

    it("should overlap a recomputed front with a loaded back when allowed, and balance the two", () => {
      const rates = { ...H200, transferBytesPerS: 2e9, prefillTokPerS: 37_000 };
      const d = decideResume(input({ canSplit: true, ranges: ranges(4096, 256, { raw: true, coded: false }), rates }));
      expect(d.restore).toBe("split");
      expect(d.splitAt).toBeGreaterThan(0);
      expect(d.estimates.split_s!).toBeLessThan(Math.min(d.estimates.recompute_s, d.estimates.raw_s!));
      // At the balance point neither half waits long for the other: within one chunk's time.
      const front = d.splitAt / rates.prefillTokPerS;
      expect(Math.abs(front - d.estimates.split_s!)).toBeLessThan((256 * B8) / rates.transferBytesPerS + 0.01);
    });

    it("should follow an operator's override", () => {
      const d = decideResume(input({ force: "coded", rates: { ...H200, transferBytesPerS: 50e9 } }));
      expect(d).toMatchObject({ restore: "coded", store: "coded" });
      expect(decideResume(input({ force: "recompute" }))).toMatchObject({ restore: "recompute", store: "none", tokens: 0 });
      expect(decideResume(input({ forceStore: "both" })).store).toBe("both");
    });

    it("should always pick the cheapest estimate it offers (property)", () => {
      const rate = (lo: number, hi: number) => fc.double({ min: lo, max: hi, noNaN: true });
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 16384 }), fc.integer({ min: 1, max: 4096 }), fc.boolean(), fc.boolean(), fc.boolean(),
          rate(100, 1e6), rate(1e6, 1e11), rate(1e6, 1e12), rate(1e6, 1e11), rate(1e-4, 0.1), rate(0.05, 1),
          (T, size, raw, coded, split, P, X, D, V, l, rho) => {
            const d = decideResume(input({
              historyTokens: T, ranges: ranges(T, size, { raw, coded }), canSplit: split,
              rates: { prefillTokPerS: P, transferBytesPerS: X, decodeBytesPerS: D, verifyBytesPerS: V, firstByteS: l, codedRatio: rho },
            }));
            const offered = Object.values(d.estimates).filter((x): x is number => x !== null);
            const chosen = { recompute: d.estimates.recompute_s, raw: d.estimates.raw_s, coded: d.estimates.coded_s, split: d.estimates.split_s }[d.restore]!;
            expect(chosen).toBe(Math.min(...offered));
            expect(d.defaulted).toBe(false);
          },
        ),
        { numRuns: 300 },
      );
    });
  });

  describe("store", () => {
    it("should store nothing when recomputing the next turn is as good as any restore", () => {
      expect(decideResume(input({ rates: { ...H200, prefillTokPerS: 2e6 } })).store).toBe("none");
    });

    it("should store both forms when raw and coded tie, else the better one", () => {
      // raw: T·b/X; coded: T·b·ρ/X + T·b/D. Equal when 1/X = ρ/X + 1/D, i.e. D = X / (1 - ρ).
      const X = 1e9, rho = 0.33;
      const tie = decideResume(input({ rates: { ...H200, transferBytesPerS: X, codedRatio: rho, decodeBytesPerS: X / (1 - rho), prefillTokPerS: 1000 } }));
      expect(tie.store).toBe("both");
      expect(decideResume(input({ rates: { ...H200, transferBytesPerS: 0.2e9, prefillTokPerS: 1000 } })).store).toBe("coded");
      expect(decideResume(input({ rates: { ...H200, transferBytesPerS: 20e9, decodeBytesPerS: 2e9, prefillTokPerS: 1000 } })).store).toBe("raw");
      expect(decideResume(input({ canCode: false, rates: { ...H200, transferBytesPerS: 0.2e9, prefillTokPerS: 1000 } })).store).toBe("raw");
      expect(TIE_MARGIN).toBeGreaterThan(0);
    });

    it("should say when a rate was not measured yet", () => {
      const d = decideResume(input({ rates: { ...H200, decodeBytesPerS: null } }));
      expect(d.defaulted).toBe(true);
      expect(d.reason).toContain("store");
    });
  });
});
