/**
 * OpenAI's `chat.completion` object for a finished turn: the body of a non-streaming response and
 * the stored result of a background job.
 */
import { runTurn } from "./run";
import type { Turn, TurnResult } from "./types";

/** The `chat.completion` body of `turn` after `r`. */
export function completionBody(turn: Turn, r: TurnResult) {
  return {
    id: turn.id,
    object: "chat.completion" as const,
    created: turn.created,
    model: turn.req.model,
    system_fingerprint: systemFingerprint(turn),
    choices: [
      { index: 0, message: { role: "assistant" as const, content: r.text, refusal: null }, logprobs: null, finish_reason: r.finishReason },
    ],
    usage: r.usage,
  };
}

export type ChatCompletion = ReturnType<typeof completionBody>;

/** Which backend served the turn, as OpenAI's `system_fingerprint`. */
export function systemFingerprint(turn: Turn): string {
  return `reprise-${turn.gen.backend.name}`;
}

/** Runs `turn` to its end without streaming and returns its `chat.completion`. */
export async function completeTurn(turn: Turn): Promise<ChatCompletion> {
  return completionBody(turn, await runTurn(turn, async () => {}));
}
