/**
 * The second half of a turn: generate to the end, then commit the session turn (new KV chunk in
 * R2, record with the transcript) and release the lease, whether or not the generation succeeded.
 */
import { readChunk } from "../backends/edge";
import { sha256Hex } from "../crypto";
import { commitTurn, releaseLease } from "../sessions/store";
import type { ChunkRef, NewChunk } from "../sessions/store";
import type { Turn, TurnResult } from "./types";

/** Runs the generation to its end, calling `onText` per piece of text, then commits the session turn. */
export async function runTurn(turn: Turn, onText: (text: string) => Promise<void>): Promise<TurnResult> {
  const ids: number[] = [];
  let text = "";
  let newChunk: Uint8Array | null = null;
  let done: { finishReason: "stop" | "length"; cachedTokens: number } | null = null;
  try {
    for await (const ev of turn.gen.events) {
      if (ev.type === "token") {
        ids.push(ev.id);
        text += ev.text;
        if (ev.text) await onText(ev.text);
      } else if (ev.type === "kv") newChunk = ev.chunk;
      else if (ev.type === "done") done = { finishReason: ev.finishReason, cachedTokens: ev.cachedTokens };
    }
    if (!done) throw new Error(`backend ${turn.gen.backend.name} ended without a done event`);
    if (turn.session && turn.lease) await commit(turn, ids, text, newChunk);
  } finally {
    if (turn.session && turn.lease) await releaseLease(turn.env.SESSIONS, turn.session.id, turn.lease);
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

async function commit(turn: Turn, ids: number[], text: string, bytes: Uint8Array | null): Promise<void> {
  const rec = turn.session!;
  const tokenIds = [...turn.promptIds, ...ids];
  let chunks: ChunkRef[] = turn.restored.kept;
  let chunk: NewChunk | null = null;
  const parsed = bytes ? await readChunk(bytes) : null;
  if (parsed && parsed.tokenEnd <= tokenIds.length && parsed.tokenStart < parsed.tokenEnd) {
    // The new chunk continues the chunks the backend was given (or all it used of them).
    const prefix = chunks.filter((ch) => ch.tokenEnd <= parsed.tokenStart);
    const end = prefix.length ? prefix[prefix.length - 1]!.tokenEnd : 0;
    if (end === parsed.tokenStart) {
      chunks = prefix;
      chunk = {
        bytes: bytes!,
        tokenStart: parsed.tokenStart,
        tokenEnd: parsed.tokenEnd,
        producer: parsed.producer,
        sha256: await sha256Hex(bytes!),
      };
    }
  } else if (bytes) console.warn("backend returned an unusable KV chunk; the next turn recomputes", turn.gen.backend.name);
  await commitTurn(
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
    },
    chunk,
  );
}
