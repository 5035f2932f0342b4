/**
 * The resume policy: per turn, how to get the KV of the stored history (recompute it, restore raw
 * chunks, restore coded chunks, or load raw chunks for the back of the history while recomputing the
 * front), and what to store of the new turn (raw, coded, both or nothing). One pure function of the
 * history, the model's shape and the measured rates; equations in docs/design-notes.md ("Resume policy").
 *
 *   T tokens of history, b = 2 * L * 2 * KH * D bytes/token (BF16), ρ = coded bytes per raw byte,
 *   P prefill tokens/s, X transfer bytes/s, V raw verify+restore bytes/s, D decoder bytes/s (BF16 out,
 *   speculator included), ℓ first-byte latency of a fetch, n chunks; a 2-stage pipeline over n equal
 *   chunks (fetch of chunk i+1 overlaps the work on chunk i) takes  pipe(F, C) = (F + C)/n + max(F, C)·(n-1)/n.
 *   recompute  t_rc  = T / P
 *   raw        t_raw = ℓ + pipe(T·b / X, T·b / V)
 *   coded      t_cod = ℓ + pipe(T·b·ρ / X, T·b / D)     (a coded chunk needs the exact KV before it)
 *   split      t_sp  = min over chunk boundaries k of max(k / P, t_raw(T - k))
 *              (the front [0,k) is recomputed while the raw back [k,T) streams in: "compute or load? both")
 */

export type RestoreMode = "recompute" | "raw" | "coded" | "split";
export type StoreMode = "none" | "raw" | "coded" | "both";

/** Measured rates; each may be unknown (null) until the system has measured it. */
export interface Rates {
  prefillTokPerS: number | null;
  transferBytesPerS: number | null;
  decodeBytesPerS: number | null;
  /** Raw chunks verified (SHA-256, container) and copied into the cache, bytes/s. */
  verifyBytesPerS: number | null;
  firstByteS: number | null;
  /** Coded bytes per BF16 byte, measured from stored chunks (spec-v1 ~0.33). */
  codedRatio: number | null;
}

/** One stored range of the history and which forms of it exist. */
export interface StoredRange {
  tokenStart: number;
  tokenEnd: number;
  raw: boolean;
  coded: boolean;
}

export interface PolicyInput {
  /** Tokens of the stored history the new prompt can reuse (the verified common prefix). */
  historyTokens: number;
  /** Tokens this turn adds (new prompt + expected completion): the next turn's history is larger by this. */
  turnTokens: number;
  /** BF16 bytes of K and V per token: 2 * layers * 2 * kv_heads * head_dim. */
  rawBytesPerToken: number;
  ranges: StoredRange[];
  /** Whether the backend can write coded chunks (it has the speculator). */
  canCode: boolean;
  /** Whether the backend can recompute a front while it loads the back (split restores). */
  canSplit: boolean;
  rates: Rates;
  /** An operator's override (RESUME_POLICY): always this restore when possible, and the matching store. */
  force?: "recompute" | "raw" | "coded" | "split";
  /** An operator's override of what to store (RESUME_STORE). */
  forceStore?: StoreMode;
}

export interface Estimates {
  recompute_s: number;
  raw_s: number | null;
  coded_s: number | null;
  split_s: number | null;
}

export interface ResumeDecision {
  restore: RestoreMode;
  /** Tokens restored from storage: [0, tokens) for raw/coded, [splitAt, tokens) for split. */
  tokens: number;
  /** split only: the front [0, splitAt) is recomputed. */
  splitAt: number;
  store: StoreMode;
  estimates: Estimates;
  /** True when a rate was unknown and a default stood in for it. */
  defaulted: boolean;
  reason: string;
}

/**
 * Defaults until measured: a CPU-class prefill, local-disk transfer, the NumPy decoder, spec-v1's
 * measured size. Deliberately conservative for restores, so an unmeasured system recomputes short
 * histories and restores long ones raw.
 */
export const DEFAULT_RATES: Readonly<Required<{ [K in keyof Rates]: number }>> = {
  prefillTokPerS: 2_000,
  transferBytesPerS: 200e6,
  decodeBytesPerS: 20e6,
  verifyBytesPerS: 1e9,
  firstByteS: 0.005,
  codedRatio: 0.33,
};

/** Two plans whose times differ by less than this are a tie: relative rate noise seen between turns. */
export const TIE_MARGIN = 0.15;

/**
 * The decision for one turn.
 *
 * @example
 * ```ts
 * decideResume({ historyTokens: 4096, turnTokens: 300, rawBytesPerToken: 131072,
 *   ranges: [{ tokenStart: 0, tokenEnd: 4096, raw: false, coded: true }], canCode: true, canSplit: false,
 *   rates: { prefillTokPerS: 37000, transferBytesPerS: 1e9, decodeBytesPerS: 100e9, verifyBytesPerS: 5e9, firstByteS: 0.01, codedRatio: 0.33 } })
 * // { restore: "coded", tokens: 4096, store: "coded", ... }
 * ```
 */
export function decideResume(inp: PolicyInput): ResumeDecision {
  const r = filled(inp.rates);
  const defaulted = (Object.keys(DEFAULT_RATES) as (keyof Rates)[]).some((k) => !(isRate(inp.rates[k])));
  const b = inp.rawBytesPerToken;
  const T = Math.max(0, inp.historyTokens);
  const prefix = (pick: (s: StoredRange) => boolean) => contiguousPrefix(inp.ranges, T, pick);
  const rawEnd = prefix((s) => s.raw);
  const codEnd = prefix((s) => s.raw || s.coded);
  const allRaw = rawEnd === T;
  const est: Estimates = {
    recompute_s: T / r.prefillTokPerS,
    raw_s: T > 0 && allRaw ? rawTime(T, b, r, countChunks(inp.ranges, T)) : null,
    coded_s: T > 0 && codEnd === T && inp.ranges.some((s) => s.coded && s.tokenStart < T) ? codedTime(T, b, r, countChunks(inp.ranges, T)) : null,
    split_s: null,
  };
  const split = T > 0 && inp.canSplit ? bestSplit(inp.ranges, T, b, r) : null;
  if (split) est.split_s = split.time;

  const plans: { mode: RestoreMode; t: number }[] = [{ mode: "recompute", t: est.recompute_s }];
  if (est.raw_s !== null) plans.push({ mode: "raw", t: est.raw_s });
  if (est.coded_s !== null) plans.push({ mode: "coded", t: est.coded_s });
  if (est.split_s !== null && split && split.at > 0) plans.push({ mode: "split", t: est.split_s });
  plans.sort((x, y) => x.t - y.t);
  const forced = inp.force ? plans.find((p) => p.mode === inp.force) : undefined;
  const best = forced ?? plans[0]!;
  const store = inp.forceStore
    ? { mode: inp.forceStore, why: `forced (${inp.forceStore})` }
    : inp.force
    ? { mode: ({ recompute: "none", raw: "raw", split: "raw", coded: inp.canCode ? "coded" : "raw" } as const)[inp.force], why: `forced (${inp.force})` }
    : storeFor(T + Math.max(0, inp.turnTokens), b, r, inp.canCode);
  return {
    restore: best.mode,
    tokens: best.mode === "recompute" ? 0 : T,
    splitAt: best.mode === "split" ? split!.at : 0,
    store: store.mode,
    estimates: est,
    defaulted,
    reason: `${best.mode} ${fmt(best.t)} s of ${plans.map((p) => `${p.mode} ${fmt(p.t)}`).join(", ")}; store ${store.mode}: ${store.why}`,
  };
}

function isRate(v: number | null | undefined): v is number {
  return typeof v === "number" && Number.isFinite(v) && v > 0;
}

function filled(r: Rates): Required<{ [K in keyof Rates]: number }> {
  const pick = <K extends keyof Rates>(k: K) => (isRate(r[k]) ? (r[k] as number) : DEFAULT_RATES[k]);
  return {
    prefillTokPerS: pick("prefillTokPerS"), transferBytesPerS: pick("transferBytesPerS"), decodeBytesPerS: pick("decodeBytesPerS"),
    verifyBytesPerS: pick("verifyBytesPerS"), firstByteS: pick("firstByteS"), codedRatio: Math.min(1, pick("codedRatio")),
  };
}

type Filled = ReturnType<typeof filled>;

/** Two stages over n equal chunks, stage 1 of chunk i+1 overlapping stage 2 of chunk i. */
function pipe(F: number, C: number, n: number): number {
  const k = Math.max(1, n);
  return (F + C) / k + (Math.max(F, C) * (k - 1)) / k;
}

export function rawTime(T: number, b: number, r: Filled, n: number): number {
  return r.firstByteS + pipe((T * b) / r.transferBytesPerS, (T * b) / r.verifyBytesPerS, n);
}

export function codedTime(T: number, b: number, r: Filled, n: number): number {
  return r.firstByteS + pipe((T * b * r.codedRatio) / r.transferBytesPerS, (T * b) / r.decodeBytesPerS, n);
}

/** End of the run of ranges from token 0 (capped at T) whose every range satisfies `pick`. */
function contiguousPrefix(ranges: StoredRange[], T: number, pick: (s: StoredRange) => boolean): number {
  let end = 0;
  for (const s of ranges) {
    if (end >= T || s.tokenStart !== end || !pick(s)) break;
    end = Math.min(s.tokenEnd, T);
  }
  return end;
}

function countChunks(ranges: StoredRange[], T: number): number {
  return ranges.filter((s) => s.tokenStart < T).length;
}

/** Best chunk boundary k at which to recompute [0,k) and load raw [k,T); null without raw ranges at the back. */
function bestSplit(ranges: StoredRange[], T: number, b: number, r: Filled): { at: number; time: number } | null {
  let best: { at: number; time: number } | null = null;
  // Boundaries k such that every range from k to T exists raw.
  const inside = ranges.filter((s) => s.tokenStart < T);
  for (let i = inside.length - 1; i >= 0; i--) {
    if (!inside[i]!.raw) break;
    const k = inside[i]!.tokenStart;
    if (i > 0 && inside[i - 1]!.tokenEnd !== k) break;
    const t = Math.max(k / r.prefillTokPerS, rawTime(T - k, b, r, inside.length - i));
    if (!best || t < best.time) best = { at: k, time: t };
  }
  return best;
}

/**
 * What to store of this turn: the cheapest set of forms whose best restore next turn (history T2) is
 * within TIE_MARGIN of the best any set allows. Nothing when recomputing is within the margin (chunks
 * would not pay for their writes); both when raw and coded tie (rates move between turns).
 */
function storeFor(T2: number, b: number, r: Filled, canCode: boolean): { mode: StoreMode; why: string } {
  const rc = T2 / r.prefillTokPerS;
  const raw = rawTime(T2, b, r, 1);
  // The next turn's coded chunks: at least the ones already stored, plus this one; 1 is the pessimistic case.
  const cod = canCode ? codedTime(T2, b, r, 1) : Infinity;
  const best = Math.min(rc, raw, cod);
  const tie = (t: number) => t <= best * (1 + TIE_MARGIN);
  if (tie(rc)) return { mode: "none", why: `recompute ${fmt(rc)} s ties the best restore next turn` };
  if (tie(raw) && tie(cod)) return { mode: "both", why: `raw ${fmt(raw)} s and coded ${fmt(cod)} s tie next turn` };
  return raw <= cod ? { mode: "raw", why: `raw ${fmt(raw)} s next turn` } : { mode: "coded", why: `coded ${fmt(cod)} s next turn` };
}

function fmt(t: number): string {
  return t < 0.01 ? t.toExponential(1) : t.toFixed(3);
}
