/**
 * SmolLM2-Instruct's chat template (ChatML), rendered exactly as the GGUF's Jinja template does:
 *
 *   {% for message in messages %}
 *     {% if loop.first and messages[0]['role'] != 'system' %}<|im_start|>system\n{DEFAULT}<|im_end|>\n{% endif %}
 *     <|im_start|>{role}\n{content}<|im_end|>\n
 *   {% endfor %}
 *   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}
 *
 * Content is inserted verbatim (no trimming, no escaping): a user who types `<|im_end|>` gets the
 * special token, exactly as with transformers' apply_chat_template.
 */
import type { EdgeTokenizer } from "./tokenizer";

export const DEFAULT_SYSTEM_MESSAGE = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
export const IM_START = "<|im_start|>";
export const IM_END = "<|im_end|>";
/** `<|im_start|>` = 1, `<|im_end|>` = 2 (the EOS of the instruct model). */
export const IM_START_ID = 1;
export const IM_END_ID = 2;

export interface ChatTurn {
  role: string;
  content: string;
}

/**
 * The prompt text for `messages`.
 *
 * @example
 * ```ts
 * renderChat([{ role: "user", content: "Hi" }]);
 * // "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
 * // + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
 * ```
 */
export function renderChat(messages: readonly ChatTurn[], addGenerationPrompt = true): string {
  let out = "";
  messages.forEach((m, i) => {
    if (i === 0 && m.role !== "system") out += `${IM_START}system\n${DEFAULT_SYSTEM_MESSAGE}${IM_END}\n`;
    out += `${IM_START}${m.role}\n${m.content}${IM_END}\n`;
  });
  if (addGenerationPrompt) out += `${IM_START}assistant\n`;
  return out;
}

/** Token ids of the rendered prompt (= transformers' apply_chat_template(..., tokenize=True)). */
export function encodeChat(tok: EdgeTokenizer, messages: readonly ChatTurn[], addGenerationPrompt = true): number[] {
  return tok.encode(renderChat(messages, addGenerationPrompt));
}
