/**
 * How long a light step may compute, and whether a step fits before it starts.
 *
 * A deployed Worker has a CPU-time limit per request (30 s by default, `[limits] cpu_ms` raises it to
 * at most 5 min); a request over it is stopped mid-turn, which would lose the turn. So the edge model
 * takes a step only when its estimate fits EDGE_STEP_BUDGET_MS (default 25 s, under the default
 * limit), and stops generating (finish_reason "length") before the budget runs out if the estimate
 * was wrong. The estimate comes from the isolate's own measurements:
 *
 *   forward(S tokens) ≈ callMs + (S - 1) · tokenMs
 *
 * where callMs is one decode step (S = 1: every Linear dequantizes its whole weight on every call,
 * so the fixed cost dominates) and tokenMs the cost of each further prompt token in a prefill
 * piece. Both are moving averages of what this isolate measured; a new isolate starts from
 * DEFAULT_RATES.
 */

export interface EdgeRates {
  /** One forward pass of one token (a decode step), ms. */
  callMs: number;
  /** Each further token of a prefill piece, ms. */
  tokenMs: number;
}

/**
 * Rates before the isolate has measured any: workerd on the 2-core dev container under load,
 * 2026-12-01 (decode steps 700-1050 ms, 32-token prefill pieces 1.4-1.7 s), rounded up a little.
 */
export const DEFAULT_RATES: EdgeRates = { callMs: 800, tokenMs: 25 };
/** Default budget of one light step: under Workers' default 30 s CPU limit, with room for the rest of the request. */
export const DEFAULT_STEP_BUDGET_MS = 25_000;
/** Weight of a new measurement in the moving averages. */
const ALPHA = 0.3;

/** EDGE_STEP_BUDGET_MS from the Worker's vars, or the default. */
export function stepBudgetMs(v: string | undefined): number {
  const n = Number(v);
  return v !== undefined && v !== "" && Number.isFinite(n) && n > 0 ? n : DEFAULT_STEP_BUDGET_MS;
}

/** Estimated ms of one forward pass over `tokens` new tokens. */
export function forwardMs(r: EdgeRates, tokens: number): number {
  return tokens <= 0 ? 0 : r.callMs + (tokens - 1) * r.tokenMs;
}

/** Estimated ms of a step: prefill `pieces` (token counts of each piece), then `newTokens - 1` decode steps. */
export function stepMs(r: EdgeRates, pieces: readonly number[], newTokens: number): number {
  const prefill = pieces.reduce((s, n) => s + forwardMs(r, n), 0);
  return prefill + Math.max(0, newTokens - 1) * r.callMs;
}

/**
 * The most new tokens a step can generate within `budgetMs` after prefilling `pieces`
 * (0 when even the prefill does not fit).
 *
 * @example
 * ```ts
 * maxNewTokens({ callMs: 500, tokenMs: 10 }, [100], 10_000) // 17: prefill 1490 ms, then 500 ms per token
 * ```
 */
export function maxNewTokens(r: EdgeRates, pieces: readonly number[], budgetMs: number): number {
  const prefill = stepMs(r, pieces, 1);
  if (prefill > budgetMs) return 0;
  return 1 + Math.floor((budgetMs - prefill) / r.callMs);
}

/** Folds one measured forward pass of `tokens` tokens taking `ms` into the isolate's rates. */
export function observe(r: EdgeRates, tokens: number, ms: number): EdgeRates {
  if (!(ms > 0) || tokens < 1) return r;
  if (tokens === 1) return { ...r, callMs: r.callMs + ALPHA * (ms - r.callMs) };
  const perToken = Math.max(0, (ms - r.callMs) / (tokens - 1));
  return { ...r, tokenMs: r.tokenMs + ALPHA * (perToken - r.tokenMs) };
}
