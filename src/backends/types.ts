/**
 * The contract between the router and a backend (docs/architecture.md, "Edge Backend interface").
 * A backend turns prompt token ids (plus verified KV chunks for a prefix of them) into a stream of
 * token events, one KV chunk for the tokens whose KV it computed, and a final done event.
 */
import type { KvChunk } from "../sessions/chunk";
import type { TurnStats } from "../sessions/rates";
import type { Grant } from "../storage/grants";

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
  /** A LoRA adapter to apply (GPU backend only): its cache key and PEFT files, or read grants for them. */
  adapter?: AdapterFiles | AdapterGrants;
  /** Chunks the backend fetches and stores itself through grants, instead of `restored` bytes. */
  storage?: StoragePlan;
}

export interface AdapterFiles {
  key: string;
  config: Uint8Array;
  weights: Uint8Array;
}

/** One of an adapter's files in storage: a read grant and what the edge recorded at upload. */
export interface GrantedFile {
  grant: Grant;
  bytes: number;
  sha256: string;
}

/** An adapter the backend fetches itself (docs/lora-adapters.md): no file byte passes through the edge. */
export interface AdapterGrants {
  key: string;
  config: GrantedFile;
  weights: GrantedFile;
}

/** Whether the adapter's files travel inline (as KIND_ADAPTER frames). */
export function inlineAdapter(a: AdapterFiles | AdapterGrants): a is AdapterFiles {
  return a.config instanceof Uint8Array;
}

/** A chunk the backend may fetch: its grant and what the edge recorded about it. */
export interface GrantedChunk {
  grant: Grant;
  tokenStart: number;
  tokenEnd: number;
  bytes: number;
  sha256: string;
  codec: string;
  mac: string | null;
}

/** Where the backend's chunks come from and go to this turn (docs/backend-wire-format.md, `storage`). */
export interface StoragePlan {
  /** Contiguous from `restoreFrom`, in token order. */
  chunks: GrantedChunk[];
  /** Tokens [0, restoreFrom) are recomputed even though chunks cover them (a split restore). */
  restoreFrom: number;
  /** End of the chunk chain the edge keeps; the new chunk starts here unless a given chunk fails. */
  exportFrom: number;
  /** One create grant per form to store ("raw", "coded"); empty: store nothing. */
  put: { grant: Grant; form: "raw" | "coded" }[];
}

/** A chunk the backend wrote through a create grant, as it reports it. */
export interface StoredChunkReport {
  key: string;
  codec: string;
  bytes: number;
  sha256: string;
  mac: string;
  tokenStart: number;
  tokenEnd: number;
  producer: string;
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
  /** A chunk the backend stored itself (grant path). */
  | { type: "kv_stored"; chunk: StoredChunkReport }
  /** The backend's measurements of this turn (resume policy input). */
  | { type: "stats"; stats: TurnStats }
  | { type: "done"; finishReason: "stop" | "length"; cachedTokens: number };
