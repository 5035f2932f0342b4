import { z } from "zod";
import { HttpError } from "./errors";

/** Default completion length when the request gives none (the edge model is CPU-bound). */
export const DEFAULT_MAX_TOKENS = 256;
/** Upper bound on a completion: SmolLM2's context is 8192 tokens. */
export const MAX_COMPLETION_TOKENS = 4096;

const textPart = z.strictObject({ type: z.literal("text"), text: z.string() });

const message = z.strictObject({
  role: z.enum(["system", "developer", "user", "assistant"]),
  content: z.union([z.string(), z.array(textPart).min(1)]),
  name: z.string().max(64).optional(),
});

const tokenCount = z.number().int().min(1).max(MAX_COMPLETION_TOKENS);

/** OpenAI `POST /v1/chat/completions` body, the subset Reprise serves, plus `session_id`. */
export const chatRequestSchema = z
  .strictObject({
    model: z.string().min(1).max(256),
    messages: z.array(message).min(1).max(4096),
    max_tokens: tokenCount.nullish(),
    max_completion_tokens: tokenCount.nullish(),
    temperature: z.number().min(0).max(2).nullish(),
    top_p: z.number().gt(0).max(1).nullish(),
    seed: z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).nullish(),
    stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(4)]).nullish(),
    stream: z.boolean().nullish(),
    stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullish(),
    n: z.literal(1).nullish(),
    /** Run later from a queue; answer 202 with a job (also `Prefer: respond-async`). */
    background: z.boolean().nullish(),
    user: z.string().max(256).optional(),
    session_id: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,128}$/, "session_id must be 1-128 characters of [A-Za-z0-9_-]")
      .optional(),
  })
  .superRefine((r, ctx) => {
    if (r.background === true && r.stream === true)
      ctx.addIssue({ code: "custom", path: ["stream"], message: "a background request cannot stream; fetch the job's result" });
    if (r.stream_options != null && r.stream !== true)
      ctx.addIssue({
        code: "custom",
        path: ["stream_options"],
        message: "stream_options is only allowed when stream is true",
      });
  });

export type ChatRequestBody = z.infer<typeof chatRequestSchema>;
export type ChatMessage = { role: "system" | "developer" | "user" | "assistant"; content: string };

/** The request after validation, with defaults applied and content parts joined. */
export interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  maxTokens: number;
  /** Whether the client set max_tokens / max_completion_tokens (an unset one may be shortened to fit). */
  maxTokensGiven: boolean;
  temperature: number;
  topP: number;
  seed?: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  sessionId?: string;
  background: boolean;
}

/**
 * Validates a parsed JSON body; throws a 400 HttpError whose `param` names the first bad field.
 *
 * @example
 * ```ts
 * parseChatRequest({ model: "m", messages: [{ role: "user", content: "hi" }] }).maxTokens // 256
 * parseChatRequest({ model: "m", messages: [] }) // throws 400, param "messages"
 * ```
 */
export function parseChatRequest(body: unknown): ChatRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new HttpError(400, { message: "The request body must be a JSON object.", code: "invalid_request" });
  const r = chatRequestSchema.safeParse(body);
  if (!r.success) throw zodToHttpError(r.error);
  const b = r.data;
  return {
    model: b.model,
    messages: b.messages.map((m) => ({
      role: m.role,
      content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join(""),
    })),
    maxTokens: b.max_completion_tokens ?? b.max_tokens ?? DEFAULT_MAX_TOKENS,
    maxTokensGiven: b.max_completion_tokens != null || b.max_tokens != null,
    temperature: b.temperature ?? 1,
    topP: b.top_p ?? 1,
    seed: b.seed ?? undefined,
    stop: b.stop == null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop,
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
    sessionId: b.session_id,
    background: b.background ?? false,
  };
}

/** `["messages", 0, "content"]` -> `"messages[0].content"`. */
export function paramPath(path: ReadonlyArray<PropertyKey>): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** The first zod issue as a 400, naming the field in `param`. */
export function zodToHttpError(err: z.ZodError): HttpError {
  const issue = err.issues[0]!;
  let path: PropertyKey[] = [...issue.path];
  let message = issue.message;
  if (issue.code === "unrecognized_keys") {
    path = [...path, issue.keys[0]!];
    message = `Unrecognized request argument supplied: ${issue.keys[0]}`;
  }
  const param = paramPath(path) || null;
  return new HttpError(400, {
    message: param ? `Invalid value for '${param}': ${message}` : message,
    param,
    code: issue.code === "unrecognized_keys" ? "unknown_parameter" : "invalid_value",
  });
}

/** Parses JSON text; a syntax error is a 400 with code `invalid_json`. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, {
      message: "We could not parse the JSON body of your request. Send valid JSON.",
      code: "invalid_json",
    });
  }
}

/**
 * A JSON body (an object) validated by `schema`; an empty body counts as `{}`. Bad JSON, a
 * non-object or a bad field is a 400 naming the field, as for chat requests.
 */
export function parseBody<T>(schema: z.ZodType<T>, text: string): T {
  const body = text.trim() === "" ? {} : parseJson(text);
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new HttpError(400, { message: "The request body must be a JSON object.", code: "invalid_request" });
  const r = schema.safeParse(body);
  if (!r.success) throw zodToHttpError(r.error);
  return r.data;
}
