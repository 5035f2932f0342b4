/**
 * One chat turn, from a validated request to a committed session: the shapes that the HTTP route
 * and the background-job consumer share (src/turns/prepare.ts, src/turns/run.ts).
 */
import type { StartedGeneration } from "../backends/dispatch";
import type { Bindings } from "../env";
import type { ChatMessage, ChatRequest } from "../schemas";
import type { Restored } from "../sessions/restore";
import type { ResumeDecision } from "../sessions/resume-policy";
import type { Lease, SessionRecord } from "../sessions/store";

/** A turn whose backend has produced its first event; the session (if any) is leased to it. */
export interface Turn {
  id: string;
  created: number;
  req: ChatRequest;
  promptIds: number[];
  /** The whole conversation the prompt was built from (session transcript + new messages). */
  messages: ChatMessage[];
  session: SessionRecord | null;
  lease: Lease | null;
  gen: StartedGeneration;
  restored: Restored;
  /** The grant path's decision and create keys (null on the inline path). */
  resume: TurnResume | null;
  env: Bindings;
}

/** What the resume policy decided for this turn and what the edge granted for it. */
export interface TurnResume {
  decision: ResumeDecision | null;
  putKeys: string[];
  rawBytesPerToken: number;
}

export interface TurnResult {
  text: string;
  finishReason: "stop" | "length";
  usage: Usage;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}
