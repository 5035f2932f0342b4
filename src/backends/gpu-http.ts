/**
 * The "gpu" Backend: `POST {GPU_BACKEND_URL}/v1/generate`, signed with HMAC-SHA256 over
 * `timestamp + "." + body` (docs/backend-wire-format.md). Framing is filled in from that page.
 */
import type { Bindings } from "../env";
import type { Backend, GenerateEvent, GenerateRequest } from "./types";

/** Hex HMAC-SHA256 of `${timestamp}.${body}` under `secret`. */
export async function signRequest(secret: string, timestamp: string, body: Uint8Array): Promise<string> {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const prefix = enc.encode(`${timestamp}.`);
  const msg = new Uint8Array(prefix.length + body.length);
  msg.set(prefix, 0);
  msg.set(body, prefix.length);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, msg));
  return [...mac].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class GpuHttpBackend implements Backend {
  readonly name = "gpu";
  constructor(private readonly env: Bindings) {}

  models(): string[] {
    return (this.env.GPU_BACKEND_MODELS ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  }

  async *generate(_req: GenerateRequest, _signal?: AbortSignal): AsyncIterable<GenerateEvent> {
    throw new Error("gpu-http: wire format not implemented yet (docs/backend-wire-format.md)");
  }
}
