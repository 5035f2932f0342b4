/**
 * The resume side of a turn on the grant path: decide (src/sessions/resume-policy.ts) from the
 * session's stored chunks and the measured rates, then grant the backend exactly the objects of the
 * decision; after the turn, fold what happened into the rates, the counters and the session record.
 */
import type { Backend, StoragePlan, StoredChunkReport } from "../backends/types";
import type { Bindings } from "../env";
import type { ChatRequest } from "../schemas";
import { candidateChunks, grantPlan } from "../sessions/granted";
import { acceptsProducer } from "../sessions/restore";
import { loadRates, recordTurn } from "../sessions/rates";
import type { TurnOutcome, TurnStats } from "../sessions/rates";
import { decideResume } from "../sessions/resume-policy";
import type { StoreMode } from "../sessions/resume-policy";
import type { ChunkRef, SessionRecord, SessionResume } from "../sessions/store";
import type { GrantSigner } from "../storage/grants";
import type { TurnResume } from "./types";

/** BF16 K/V bytes per token of SmolLM2-135M (30 layers x K,V x 3 heads x 64 x 2 B), until the backend reports its own. */
export const DEFAULT_RAW_BYTES_PER_TOKEN = 23_040;
/** Bound on a new chunk's bytes per token while the backend's is unknown: an 8B model's F16 K/V is 128 KiB. */
export const UNKNOWN_KV_BYTES_BOUND = 256 * 1024;

export async function planGrantedTurn(
  env: Bindings,
  signer: GrantSigner,
  backend: Backend,
  req: ChatRequest,
  session: SessionRecord | null,
  promptIds: number[],
): Promise<{ storage: StoragePlan; kept: ChunkRef[]; resume: TurnResume }> {
  if (!session) {
    // Nothing to restore and nowhere to keep a chunk: the backend stores nothing and sends none back.
    return { storage: { chunks: [], restoreFrom: 0, exportFrom: 0, put: [] }, kept: [], resume: { decision: null, putKeys: [], rawBytesPerToken: 0 } };
  }
  const rates = await loadRates(env.SESSIONS, backend.name, req.model);
  // Until a backend has reported its codecs, ask for what the policy wants: one without a coder stores raw.
  const canCode = rates.updated === 0 || rates.canCode;
  const b = rates.rawBytesPerToken ?? DEFAULT_RAW_BYTES_PER_TOKEN;
  const cand = candidateChunks(session, promptIds, (p) => acceptsProducer(backend, p));
  const decision = decideResume({
    historyTokens: cand.tokens,
    turnTokens: promptIds.length - cand.tokens + req.maxTokens,
    rawBytesPerToken: b,
    ranges: cand.ranges,
    canCode,
    canSplit: rates.canSplit,
    rates: rates.rates,
    ...(forcedPolicy(env.RESUME_POLICY) ? { force: forcedPolicy(env.RESUME_POLICY) } : {}),
    ...(forcedStore(env.RESUME_STORE) ? { forceStore: forcedStore(env.RESUME_STORE) } : {}),
  });
  const gp = await grantPlan(signer, env.BLOBS, session, cand, decision, {
    canCode,
    maxNewTokens: promptIds.length - cand.tokens + req.maxTokens,
    rawBytesPerToken: rates.rawBytesPerToken ?? UNKNOWN_KV_BYTES_BOUND,
  });
  return { storage: gp.plan, kept: gp.kept, resume: { decision, putKeys: gp.putKeys, rawBytesPerToken: b } };
}

function forcedPolicy(v: string | undefined): "recompute" | "raw" | "coded" | "split" | undefined {
  return v === "recompute" || v === "raw" || v === "coded" || v === "split" ? v : undefined;
}

function forcedStore(v: string | undefined): StoreMode | undefined {
  return v === "none" || v === "raw" || v === "coded" || v === "both" ? v : undefined;
}

/** Why the backend did not use stored chunks, one reason per refused chunk. */
export function fallbackReasons(stats: TurnStats | null): string[] {
  const refused = stats?.restore?.refused;
  return Array.isArray(refused) ? refused.map((r) => (typeof r?.reason === "string" && /^[a-z_]{1,32}$/.test(r.reason) ? r.reason : "other")) : [];
}

/** The outcome of a finished grant-path turn, for the rates record and the session. */
export function turnOutcome(resume: TurnResume, stats: TurnStats | null, stored: StoredChunkReport[], promptTokens: number, cachedTokens: number): TurnOutcome {
  return {
    decision: resume.decision,
    restoredTokens: cachedTokens,
    computedTokens: Math.max(0, promptTokens - cachedTokens),
    fallbacks: fallbackReasons(stats),
    stats,
    stored: stored.map((s) => ({ codec: s.codec, bytes: s.bytes, tokens: s.tokenEnd - s.tokenStart })),
    rawBytesPerToken: resume.rawBytesPerToken,
  };
}

/** The numbers of a turn's stats, flat: restore.fetch_s -> fetch_s, prefill.s -> prefill_s. */
function measuredOf(stats: TurnStats | null): Record<string, number> | null {
  if (!stats) return null;
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(stats.restore ?? {})) if (typeof v === "number") out[k] = v;
  for (const [k, v] of Object.entries(stats.prefill ?? {})) if (typeof v === "number") out[`prefill_${k}`] = v;
  return out;
}

/** The session's `resume` field after this turn. */
export function sessionResume(prev: SessionResume | undefined, o: TurnOutcome): SessionResume {
  const counters = { ...(prev?.counters ?? {}) };
  const add = (k: string, n = 1) => {
    if (n) counters[k] = (counters[k] ?? 0) + n;
  };
  if (o.decision) add(`restore_${o.decision.restore}`);
  if (o.decision) add(`store_${o.decision.store}`);
  for (const f of o.fallbacks) add(`fallback_${f}`);
  add("restored_tokens", o.restoredTokens);
  add("computed_tokens", o.computedTokens);
  const d = o.decision;
  return {
    last: d
      ? { restore: d.restore, store: d.store, restoredTokens: o.restoredTokens, computedTokens: o.computedTokens, estimates: { ...d.estimates }, reason: d.reason, fallbacks: o.fallbacks, measured: measuredOf(o.stats) }
      : null,
    counters,
  };
}

export async function recordResume(env: Bindings, backend: string, model: string, o: TurnOutcome): Promise<void> {
  await recordTurn(env.SESSIONS, backend, model, o);
}
