/**
 * Wires the embedded edge model (src/edge-model/) into the router: the backend itself, the prompt
 * encoding every backend shares (the router tokenizes once; the GPU backend receives token ids),
 * and chunk decoding for session restore and commit.
 */
import { EdgeBackend } from "../edge-model/backend";
import { encodeChat } from "../edge-model/chat-template";
import { loadTokenizer } from "../edge-model/tokenizer";
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import type { ChatMessage } from "../schemas";
import { decodeChunk } from "../sessions/chunk";
import type { KvChunk } from "./types";

/** The edge backend, or null when no edge model is configured. */
export function getEdgeBackend(env: Bindings): EdgeBackend | null {
  return env.EDGE_MODEL_KEY ? new EdgeBackend(env) : null;
}

/**
 * Prompt token ids for `messages` under SmolLM2's chat template, with the generation prompt.
 * OpenAI's `developer` role is the newer name of `system`; the template knows only `system`.
 * The tokenizer lives in R2 beside the model: if it cannot be read nothing can serve (503).
 *
 * @example
 * ```ts
 * await encodeChatPrompt(env, [{ role: "user", content: "Hi" }]); // [1, 9690, 198, …, 1, 520, 9531, 198]
 * ```
 */
export async function encodeChatPrompt(env: Bindings, messages: ChatMessage[]): Promise<number[]> {
  let tok;
  try {
    tok = await loadTokenizer(env.BLOBS, env.EDGE_MODEL_KEY);
  } catch (err) {
    console.error("tokenizer unavailable", err);
    throw new HttpError(503, {
      message: "The tokenizer is not available; no backend can serve this request. Retry later.",
      code: "backend_unavailable",
      headers: { "Retry-After": "5" },
    });
  }
  return encodeChat(
    tok,
    messages.map((m) => ({ role: m.role === "developer" ? "system" : m.role, content: m.content })),
  );
}

export interface ReadChunk {
  chunk: KvChunk;
  tokenStart: number;
  tokenEnd: number;
  producer: string;
}

/** Fully verified container (structure and payload SHA-256), or null for bytes that are not one. */
export async function readChunk(bytes: Uint8Array): Promise<ReadChunk | null> {
  const r = await decodeChunk(bytes);
  if (!r.ok) return null;
  const h = r.chunk.header;
  return { chunk: r.chunk, tokenStart: h.token_start, tokenEnd: h.token_end, producer: h.producer };
}
