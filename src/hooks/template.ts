/**
 * Prompt templates of inbound hooks: Mustache (mustache.js), rendered without HTML escaping (the
 * output is a prompt, not HTML) and without partials (a template is one self-contained string).
 *
 * Errors are values: a template that does not parse is refused when the hook is created, and an
 * event that lacks a variable the template uses outside any section is refused when it arrives
 * (rendering it as an empty string would send the model a silently broken prompt).
 */
import Mustache from "mustache";

export const MAX_TEMPLATE_CHARS = 16 * 1024;
/** The rendered prompt is one user message; this keeps it far inside the model's context. */
export const MAX_PROMPT_CHARS = 32 * 1024;

type Token = [string, string, number, number, Token[]?];

export type TemplateCheck = { ok: true } | { ok: false; error: string };

/** Parses `template` once; a syntax error or a partial is refused. */
export function checkTemplate(template: string): TemplateCheck {
  if (!template.trim()) return { ok: false, error: "the template is empty" };
  if (template.length > MAX_TEMPLATE_CHARS) return { ok: false, error: `the template is over ${MAX_TEMPLATE_CHARS} characters` };
  let tokens: Token[];
  try {
    tokens = Mustache.parse(template) as Token[];
  } catch (err) {
    return { ok: false, error: err instanceof Error ? err.message : String(err) };
  }
  const partial = findToken(tokens, ">");
  return partial ? { ok: false, error: `partials are not supported ({{> ${partial}}})` } : { ok: true };
}

function findToken(tokens: Token[], type: string): string | null {
  for (const t of tokens) {
    if (t[0] === type) return t[1];
    const inner = t[4] ? findToken(t[4], type) : null;
    if (inner) return inner;
  }
  return null;
}

export type Rendered = { ok: true; prompt: string } | { ok: false; error: string };

/**
 * The prompt for one event.
 *
 * @example
 * ```ts
 * renderPrompt("Summarize issue #{{issue.number}}: {{issue.title}}", { issue: { number: 7, title: "Crash on start" } })
 * // { ok: true, prompt: "Summarize issue #7: Crash on start" }
 * renderPrompt("Hello {{user.name}}", {}) // { ok: false, error: "the event has no value for {{user.name}}" }
 * ```
 */
export function renderPrompt(template: string, data: unknown): Rendered {
  const tokens = Mustache.parse(template) as Token[];
  const ctx = new Mustache.Context(data as Record<string, unknown>);
  for (const t of tokens)
    if ((t[0] === "name" || t[0] === "&") && ctx.lookup(t[1]) == null) return { ok: false, error: `the event has no value for {{${t[1]}}}` };
  const prompt = Mustache.render(template, data, {}, { escape: (v: unknown) => String(v) }).trim();
  if (!prompt) return { ok: false, error: "the template renders to an empty prompt for this event" };
  if (prompt.length > MAX_PROMPT_CHARS) return { ok: false, error: `the rendered prompt is over ${MAX_PROMPT_CHARS} characters` };
  return { ok: true, prompt };
}
