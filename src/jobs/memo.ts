/**
 * Reuse of deterministic background results.
 *
 * A request without a session, at temperature 0, is greedy decoding: the same model on the same
 * backend gives the same tokens every time, so a background job identical to one that completed
 * within MEMO_MAX_AGE_MS takes that job's result instead of running the model again (the job says
 * so in `reused_result_of`). This is what makes a burst of identical background requests (a retry
 * storm, or the soak test's thousand jobs) cost one generation. Sampling requests and session
 * turns always run: their result depends on the random stream or the session's state.
 */
import { sha256Hex } from "../crypto";
import type { ChatRequest } from "../schemas";

export const MEMO_MAX_AGE_MS = 60 * 60_000;

/** The memo key of a deterministic request, or null when the request must run. */
export async function memoKey(req: ChatRequest): Promise<string | null> {
  if (req.temperature !== 0 || req.sessionId) return null;
  return sha256Hex(JSON.stringify([req.model, req.messages, req.maxTokens, req.topP, req.stop, req.seed ?? null]));
}
