/**
 * The contract between the router and a backend (docs/architecture.md, "Edge Backend interface").
 * A backend turns prompt token ids (plus verified KV chunks for a prefix of them) into a stream of
 * token events, one KV chunk for the tokens whose KV it computed, and a final done event.
 */
import type { KvChunk } from "../sessions/chunk";

export type { KvChunk };

export interface Backend {
  /** "edge" | "gpu" */
  readonly name: string;
  models(): string[];
  generate(req: GenerateRequest, signal?: AbortSignal): AsyncIterable<GenerateEvent>;
}

export interface GenerateRequest {
  model: string;
  promptIds: number[];
  /** Verified chunks covering [0, n) of promptIds, in order. */
  restored: KvChunk[];
  sampling: SamplingOptions;
  /** A LoRA adapter to apply (GPU backend only): its cache key and PEFT files. */
  adapter?: AdapterFiles;
}

export interface AdapterFiles {
  key: string;
  config: Uint8Array;
  weights: Uint8Array;
}

export interface SamplingOptions {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed?: number;
  stop: string[];
}

export type GenerateEvent =
  | { type: "token"; id: number; text: string }
  /** Container bytes (docs/kv-chunk-format.md) of the new range. */
  | { type: "kv"; chunk: Uint8Array }
  | { type: "done"; finishReason: "stop" | "length"; cachedTokens: number };
