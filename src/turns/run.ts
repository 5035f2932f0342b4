/**
 * The second half of a turn: generate to the end, then commit the session turn (new KV chunk in
 * R2, record with the transcript) and release the lease, whether or not the generation succeeded.
 * On the grant path the backend has written the chunk itself; the edge checks and records it.
 */
import { readChunk } from "../backends/edge";
import type { StoredChunkReport } from "../backends/types";
import { sha256Hex } from "../crypto";
import { storedChunkRef } from "../sessions/granted";
import type { TurnStats } from "../sessions/rates";
import { commitTurn, releaseLease, renewLease, sessionBusy } from "../sessions/store";
import type { ChunkRef, NewChunk, SessionResume } from "../sessions/store";
import { recordResume, sessionResume, turnOutcome } from "./resume";
import type { Turn, TurnResult } from "./types";

/** Runs the generation to its end, calling `onText` per piece of text, then commits the session turn. */
export async function runTurn(turn: Turn, onText: (text: string) => Promise<void>): Promise<TurnResult> {
  const ids: number[] = [];
  let text = "";
  let newChunk: Uint8Array | null = null;
  const stored: StoredChunkReport[] = [];
  let stats: TurnStats | null = null;
  let done: { finishReason: "stop" | "length"; cachedTokens: number } | null = null;
  let committed: number | undefined;
  try {
    for await (const ev of turn.gen.events) {
      if (ev.type === "token") {
        ids.push(ev.id);
        text += ev.text;
        if (ev.text) await onText(ev.text);
      } else if (ev.type === "kv") newChunk = ev.chunk;
      else if (ev.type === "kv_stored") stored.push(ev.chunk);
      else if (ev.type === "stats") stats = ev.stats;
      else if (ev.type === "done") done = { finishReason: ev.finishReason, cachedTokens: ev.cachedTokens };
    }
    if (!done) throw new Error(`backend ${turn.gen.backend.name} ended without a done event`);
    if (turn.resume) {
      const o = turnOutcome(turn.resume, stats, stored, turn.promptIds.length, done.cachedTokens);
      await recordResume(turn.env, turn.gen.backend.name, turn.req.model, o);
      // A chunk the backend refused is dropped from the record with everything after it, so the
      // session heals even when this turn stores nothing.
      const refused = Array.isArray(stats?.restore?.refused) ? stats.restore.refused : [];
      const cut = Math.min(...refused.map((r) => (Number.isSafeInteger(r?.token_start) ? r.token_start : 0)), Infinity);
      turn.restored.kept = turn.restored.kept.filter((c) => c.tokenEnd <= cut);
      if (turn.session && turn.lease) committed = await commit(turn, ids, text, null, await storedChunkRef(turn.env.BLOBS, turn.resume.putKeys, stored), sessionResume(turn.session.resume, o));
    } else if (turn.session && turn.lease) committed = await commit(turn, ids, text, newChunk, null, turn.session.resume);
  } finally {
    if (turn.session && turn.lease) await releaseLease(turn.env, turn.session.id, turn.lease, committed);
  }
  const prompt = turn.promptIds.length;
  return {
    text,
    finishReason: done.finishReason,
    usage: {
      prompt_tokens: prompt,
      completion_tokens: ids.length,
      total_tokens: prompt + ids.length,
      prompt_tokens_details: { cached_tokens: done.cachedTokens },
    },
  };
}

/** The kept chunk records that the new chunk [start, …) continues, or null when it continues none. */
function chainTo(kept: ChunkRef[], start: number): ChunkRef[] | null {
  const prefix = kept.filter((ch) => ch.tokenEnd <= start);
  const end = prefix.length ? prefix[prefix.length - 1]!.tokenEnd : 0;
  return end === start ? prefix : null;
}

/** Writes the turn to the session (its new chunk: inline `bytes`, or one the backend stored through a
 * grant); returns the revision it committed. */
async function commit(turn: Turn, ids: number[], text: string, bytes: Uint8Array | null, granted: ChunkRef | null, resume: SessionResume | undefined): Promise<number> {
  const rec = turn.session!;
  // A turn that outlived its lease may have been overtaken: it must not write.
  if (!(await renewLease(turn.env, rec.id, turn.lease!))) throw sessionBusy(rec.id);
  const tokenIds = [...turn.promptIds, ...ids];
  let chunks: ChunkRef[] = turn.restored.kept;
  let chunk: NewChunk | null = null;
  let stored: ChunkRef | null = null;
  if (granted) {
    const chain = granted.tokenEnd <= tokenIds.length ? chainTo(chunks, granted.tokenStart) : null;
    if (chain) {
      chunks = chain;
      stored = granted;
    } else {
      console.warn("backend stored a chunk that continues no kept chunk; dropped", granted.r2Key);
      await turn.env.BLOBS.delete([granted.r2Key, ...(granted.alt ? [granted.alt.r2Key] : [])]);
    }
  }
  const parsed = bytes ? await readChunk(bytes) : null;
  if (parsed && parsed.tokenEnd <= tokenIds.length && parsed.tokenStart < parsed.tokenEnd) {
    // The new chunk continues the chunks the backend was given (or all it used of them).
    const chain = chainTo(chunks, parsed.tokenStart);
    if (chain) {
      chunks = chain;
      chunk = {
        bytes: bytes!,
        tokenStart: parsed.tokenStart,
        tokenEnd: parsed.tokenEnd,
        producer: parsed.producer,
        sha256: await sha256Hex(bytes!),
        codec: parsed.chunk.header.codec,
      };
    }
  } else if (bytes) console.warn("backend returned an unusable KV chunk; the next turn recomputes", turn.gen.backend.name);
  const after = await commitTurn(
    turn.env.SESSIONS,
    turn.env.BLOBS,
    turn.lease!,
    {
      id: rec.id,
      tenant: rec.tenant,
      created: rec.created,
      turns: rec.turns + 1,
      messages: [...turn.messages, { role: "assistant", content: text }],
      tokenIds,
      chunks,
      nextChunk: rec.nextChunk,
      ...(resume ? { resume } : {}),
    },
    chunk,
    stored,
  );
  return after.revision;
}
