/** Wires the embedded edge model (src/edge-model/) into the router. */
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import type { ChatMessage } from "../schemas";
import type { Backend, KvChunk } from "./types";

export function getEdgeBackend(_env: Bindings): Backend | null {
  return null;
}

export async function encodeChatPrompt(_env: Bindings, _messages: ChatMessage[]): Promise<number[]> {
  throw new HttpError(503, { message: "The edge model is not available.", code: "backend_unavailable" });
}

export interface ReadChunk {
  chunk: KvChunk;
  tokenStart: number;
  tokenEnd: number;
  producer: string;
}

export function readChunk(_bytes: Uint8Array): ReadChunk | null {
  return null;
}
