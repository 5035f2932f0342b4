/**
 * What the edge keeps for the resume policy, per backend kind and model, in the SESSIONS KV:
 *
 *   resume:<backend>:<model>   RateRecord (JSON): measured rates (EWMA), what the backend can do,
 *                              and counters of every decision and every fallback
 *
 * The backend measures each turn (its `stats` and `kv_stored` events); `applyTurn` folds one turn
 * into the record (pure), `recordTurn` reads, folds and writes it once per turn. KV is eventually
 * consistent and allows one write per second per key, so under load some samples and counts are
 * lost to races; rates are averages and the counters are a monitor, not a ledger. A Durable Object
 * per model would make them exact.
 */
import type { Rates, ResumeDecision } from "./resume-policy";

/** Weight of a new sample in the running average: ~3 turns to follow a real change, noise damped. */
export const EWMA_ALPHA = 0.3;
/** Samples smaller than these say more about fixed costs than about rates; they are not used. */
const MIN_PREFILL_TOKENS = 32;
const MIN_TRANSFER_BYTES = 64 * 1024;

/** What a backend reports about one turn (docs/backend-wire-format.md, `stats` and `kv_stored`). */
export interface TurnStats {
  restore?: {
    mode?: string;
    tokens?: number;
    fetch_bytes?: number;
    fetch_s?: number;
    first_byte_s?: number;
    decode_s?: number;
    decoded_bytes?: number;
    verify_s?: number;
    verify_bytes?: number;
    refused?: { token_start: number; reason: string }[];
  };
  prefill?: { tokens?: number; s?: number };
  codecs?: string[];
  split?: boolean;
  /** BF16 bytes of K and V per token of the backend's model. */
  kv_bytes_per_token?: number;
}

export interface StoredStat {
  codec: string;
  bytes: number;
  tokens: number;
}

export interface RateRecord {
  rates: Rates;
  rawBytesPerToken: number | null;
  canCode: boolean;
  canSplit: boolean;
  updated: number;
  /** Prometheus-style counter name (with labels) -> count. */
  counters: Record<string, number>;
}

export const emptyRateRecord = (): RateRecord => ({
  rates: { prefillTokPerS: null, transferBytesPerS: null, decodeBytesPerS: null, verifyBytesPerS: null, firstByteS: null, codedRatio: null },
  rawBytesPerToken: null,
  canCode: false,
  canSplit: false,
  updated: 0,
  counters: {},
});

const rateKey = (backend: string, model: string) => `resume:${backend}:${model}`;

export async function loadRates(kv: KVNamespace, backend: string, model: string): Promise<RateRecord> {
  try {
    const rec = await kv.get<RateRecord>(rateKey(backend, model), "json");
    return rec && typeof rec === "object" && rec.rates ? { ...emptyRateRecord(), ...rec } : emptyRateRecord();
  } catch {
    return emptyRateRecord();
  }
}

const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : null);

function ewma(old: number | null, sample: number | null): number | null {
  if (sample === null || !(sample > 0) || !Number.isFinite(sample)) return old;
  return old === null ? sample : old + EWMA_ALPHA * (sample - old);
}

/** What happened in one turn, as the edge saw it. */
export interface TurnOutcome {
  decision: ResumeDecision | null;
  /** Tokens the backend reported as restored (cached_tokens). */
  restoredTokens: number;
  /** Tokens it had to compute of the prompt. */
  computedTokens: number;
  /** Why stored chunks were not used: missing, size, checksum, mac, container, producer, undecodable, network … */
  fallbacks: string[];
  stats: TurnStats | null;
  stored: StoredStat[];
  rawBytesPerToken: number;
}

function bump(c: Record<string, number>, name: string, by = 1): void {
  if (by) c[name] = (c[name] ?? 0) + by;
}

/** The record after one turn (pure). */
export function applyTurn(rec: RateRecord, o: TurnOutcome, now = Date.now()): RateRecord {
  const r = { ...rec.rates };
  const s = o.stats;
  const pre = s?.prefill;
  const pTok = num(pre?.tokens), pS = num(pre?.s);
  if (pTok !== null && pS && pTok >= MIN_PREFILL_TOKENS) r.prefillTokPerS = ewma(r.prefillTokPerS, pTok / pS);
  const res = s?.restore;
  const fb = num(res?.fetch_bytes), fs = num(res?.fetch_s), first = num(res?.first_byte_s);
  if (fb !== null && fs && fb >= MIN_TRANSFER_BYTES) {
    r.transferBytesPerS = ewma(r.transferBytesPerS, fb / Math.max(fs - (first ?? 0), 1e-6));
    r.firstByteS = ewma(r.firstByteS, first);
  }
  const db = num(res?.decoded_bytes), ds = num(res?.decode_s);
  if (db && ds) r.decodeBytesPerS = ewma(r.decodeBytesPerS, db / ds);
  const vb = num(res?.verify_bytes), vs = num(res?.verify_s);
  if (vb && vs && vb >= MIN_TRANSFER_BYTES) r.verifyBytesPerS = ewma(r.verifyBytesPerS, vb / vs);
  for (const st of o.stored)
    if (st.codec !== "raw-bf16" && st.codec !== "raw-f32" && st.tokens > 0 && o.rawBytesPerToken > 0)
      r.codedRatio = ewma(r.codedRatio, st.bytes / (st.tokens * o.rawBytesPerToken));
  const counters = { ...rec.counters };
  if (o.decision) {
    bump(counters, `reprise_resume_decisions_total{restore="${o.decision.restore}"}`);
    bump(counters, `reprise_resume_store_decisions_total{store="${o.decision.store}"}`);
  }
  bump(counters, "reprise_resume_turns_total");
  bump(counters, "reprise_resume_restored_tokens_total", o.restoredTokens);
  bump(counters, "reprise_resume_computed_tokens_total", o.computedTokens);
  for (const why of o.fallbacks) bump(counters, `reprise_resume_fallbacks_total{reason="${why}"}`);
  for (const st of o.stored) {
    bump(counters, `reprise_resume_stored_chunks_total{codec="${st.codec}"}`);
    bump(counters, `reprise_resume_stored_bytes_total{codec="${st.codec}"}`, st.bytes);
  }
  const codecs = s?.codecs;
  const kvb = num(s?.kv_bytes_per_token);
  return {
    rates: r,
    rawBytesPerToken: kvb && Number.isSafeInteger(kvb) ? kvb : rec.rawBytesPerToken,
    canCode: Array.isArray(codecs) ? codecs.includes("spec-v1") : rec.canCode,
    canSplit: typeof s?.split === "boolean" ? s.split : rec.canSplit,
    updated: now,
    counters,
  };
}

/** Folds one turn into the stored record. Never throws: a lost sample only costs accuracy. */
export async function recordTurn(kv: KVNamespace, backend: string, model: string, o: TurnOutcome): Promise<void> {
  try {
    const rec = await loadRates(kv, backend, model);
    await kv.put(rateKey(backend, model), JSON.stringify(applyTurn(rec, o)));
  } catch (err) {
    console.warn("resume rates not recorded", err);
  }
}

/** Every record under `resume:`, for /metrics. */
export async function listRateRecords(kv: KVNamespace): Promise<{ backend: string; model: string; rec: RateRecord }[]> {
  const out: { backend: string; model: string; rec: RateRecord }[] = [];
  let cursor: string | undefined;
  do {
    const page = await kv.list({ prefix: "resume:", cursor });
    for (const k of page.keys) {
      const [, backend = "", model = ""] = k.name.split(":");
      out.push({ backend, model, rec: await loadRates(kv, backend, model) });
    }
    cursor = page.list_complete ? undefined : page.cursor;
  } while (cursor);
  return out;
}
