/** The turn lifecycle shared by `POST /v1/chat/completions` and background jobs. */
export { CONTEXT_TOKENS, prepareTurn } from "./prepare";
export { runTurn } from "./run";
export { completeTurn, completionBody, systemFingerprint } from "./completion";
export type { ChatCompletion } from "./completion";
export type { Turn, TurnResult, Usage } from "./types";
