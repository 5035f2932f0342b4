/**
 * Webhook secrets: made here, shown once, stored only encrypted.
 *
 * A secret is `whsec_` + base64 of 32 random bytes (Standard Webhooks: the part after the prefix is
 * the base64 HMAC key; the spec asks for 24 to 64 bytes). At rest it is AES-256-GCM ciphertext under
 * a key derived (HKDF-SHA256) from WEBHOOK_SECRETS_KEY, a Worker secret; the record's id is the
 * additional data, so a ciphertext copied onto another record does not decrypt.
 *
 *   stored = "v1." + base64(iv, 12 bytes) + "." + base64(ciphertext || 16-byte tag)
 */
import { fromBase64, toBase64, utf8 } from "../crypto";
import { HttpError } from "../errors";

export const SECRET_PREFIX = "whsec_";
const SECRET_BYTES = 32;
/** A shorter WEBHOOK_SECRETS_KEY is refused: it is the one thing that protects every stored secret. */
const MIN_KEY_CHARS = 32;

/** A new signing secret. */
export function newWebhookSecret(): string {
  return SECRET_PREFIX + toBase64(crypto.getRandomValues(new Uint8Array(SECRET_BYTES)));
}

/** The HMAC key inside a `whsec_` secret, or null when it is not one. */
export function secretKeyBytes(secret: string): Uint8Array | null {
  if (!secret.startsWith(SECRET_PREFIX)) return null;
  const key = fromBase64(secret.slice(SECRET_PREFIX.length));
  return key && key.length >= 24 && key.length <= 64 ? key : null;
}

const derived = new Map<string, Promise<CryptoKey>>();

function aesKey(master: string | undefined): Promise<CryptoKey> {
  if (!master || master.length < MIN_KEY_CHARS)
    throw new HttpError(503, {
      message: "Webhook secrets cannot be stored: WEBHOOK_SECRETS_KEY is not configured on this server.",
      code: "webhooks_not_configured",
    });
  let k = derived.get(master);
  if (!k) {
    k = crypto.subtle
      .importKey("raw", utf8(master), "HKDF", false, ["deriveKey"])
      .then((ikm) =>
        crypto.subtle.deriveKey(
          { name: "HKDF", hash: "SHA-256", salt: utf8("reprise-webhook-secrets"), info: utf8("aes-256-gcm v1") },
          ikm,
          { name: "AES-GCM", length: 256 },
          false,
          ["encrypt", "decrypt"],
        ),
      );
    derived.set(master, k);
  }
  return k;
}

/** Ciphertext of `secret` bound to the record `id`. */
export async function sealSecret(master: string | undefined, id: string, secret: string): Promise<string> {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: utf8(id) }, await aesKey(master), utf8(secret));
  return `v1.${toBase64(iv)}.${toBase64(new Uint8Array(ct))}`;
}

/** The secret sealed for record `id`; throws if the ciphertext was altered, moved or sealed under another key. */
export async function openSecret(master: string | undefined, id: string, sealed: string): Promise<string> {
  const [v, ivB64, ctB64] = sealed.split(".");
  const iv = fromBase64(ivB64 ?? "");
  const ct = fromBase64(ctB64 ?? "");
  if (v !== "v1" || !iv || iv.length !== 12 || !ct) throw new Error("not a sealed webhook secret");
  const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: utf8(id) }, await aesKey(master), ct);
  return new TextDecoder().decode(pt);
}
