import { describe, expect, it } from "vitest";
import { forwardMs, maxNewTokens, observe, stepBudgetMs, stepMs } from "./budget";
import { PREFILL_PIECE_TOKENS, prefillPieces } from "./pacing";

const r = { callMs: 500, tokenMs: 10 };

describe("Edge step budget", () => {
  describe("estimates", () => {
    it("should cost one call per forward pass plus each further prompt token", () => {
      expect(forwardMs(r, 0)).toBe(0);
      expect(forwardMs(r, 1)).toBe(500);
      expect(forwardMs(r, 100)).toBe(500 + 99 * 10);
      // Two prefill pieces of 64 and 36, then 9 decode steps for 10 new tokens.
      expect(stepMs(r, [64, 36], 10)).toBe(500 + 63 * 10 + 500 + 35 * 10 + 9 * 500);
    });

    it("should give the most new tokens that fit, and 0 when the prefill alone does not", () => {
      const n = maxNewTokens(r, [100], 10_000);
      expect(stepMs(r, [100], n)).toBeLessThanOrEqual(10_000);
      expect(stepMs(r, [100], n + 1)).toBeGreaterThan(10_000);
      expect(maxNewTokens(r, [100], 1_000)).toBe(0);
    });
  });

  describe("measurements", () => {
    it("should move callMs on decode steps and tokenMs on prefill pieces, and ignore nonsense", () => {
      const d = observe(r, 1, 1500);
      expect(d.callMs).toBeGreaterThan(r.callMs);
      expect(d.tokenMs).toBe(r.tokenMs);
      const p = observe(r, 51, 500 + 50 * 30);
      expect(p.tokenMs).toBeGreaterThan(r.tokenMs);
      expect(p.callMs).toBe(r.callMs);
      expect(observe(r, 1, 0)).toEqual(r);
      expect(observe(r, 0, 100)).toEqual(r);
      // Repeated measurements converge on the measured value.
      let x = r;
      for (let i = 0; i < 40; i++) x = observe(x, 1, 900);
      expect(x.callMs).toBeCloseTo(900, 3);
    });
  });

  describe("configuration", () => {
    it("should read EDGE_STEP_BUDGET_MS and fall back to the default for junk", () => {
      expect(stepBudgetMs("90000")).toBe(90_000);
      for (const v of [undefined, "", "abc", "-5", "0"]) expect(stepBudgetMs(v)).toBe(25_000);
    });
  });

  describe("prefill pieces", () => {
    it("should cover the prompt exactly in fixed pieces, the last one possibly shorter", () => {
      expect(prefillPieces(0)).toEqual([]);
      expect(prefillPieces(10)).toEqual([10]);
      expect(prefillPieces(PREFILL_PIECE_TOKENS)).toEqual([PREFILL_PIECE_TOKENS]);
      expect(prefillPieces(2 * PREFILL_PIECE_TOKENS + 8)).toEqual([PREFILL_PIECE_TOKENS, PREFILL_PIECE_TOKENS, 8]);
      for (const n of [1, 777, 4096]) {
        const p = prefillPieces(n);
        expect(p.reduce((a, b) => a + b, 0)).toBe(n);
        expect(Math.max(...p)).toBeLessThanOrEqual(PREFILL_PIECE_TOKENS);
      }
    });
  });
});
