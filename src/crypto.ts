/**
 * The one home for hashing, encodings and MACs on the edge (Web Crypto underneath): API-key hashes,
 * chunk checksums, the GPU backend's request signature and webhook signatures all go through here.
 */

const enc = new TextEncoder();

/** Bytes of `data`: strings as UTF-8. */
export function utf8(data: string | Uint8Array): Uint8Array {
  return typeof data === "string" ? enc.encode(data) : data;
}

/** Concatenation of byte arrays (and UTF-8 strings) into one new array. */
export function concatBytes(...parts: (string | Uint8Array)[]): Uint8Array {
  const bytes = parts.map(utf8);
  const out = new Uint8Array(bytes.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const p of bytes) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * Lowercase hex of `bytes`.
 *
 * @example
 * ```ts
 * toHex(new Uint8Array([0, 171, 255])) // "00abff"
 * ```
 */
export function toHex(bytes: Uint8Array | ArrayBuffer): string {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let s = "";
  for (let i = 0; i < b.length; i++) s += HEX[b[i]!];
  return s;
}

/** `n` random bytes from the platform CSPRNG, as hex (2n characters). */
export function randomHex(n: number): string {
  return toHex(crypto.getRandomValues(new Uint8Array(n)));
}

/**
 * Standard base64 (RFC 4648 §4, with padding) of `bytes`.
 *
 * @example
 * ```ts
 * toBase64(new TextEncoder().encode("hi")) // "aGk="
 * ```
 */
export function toBase64(bytes: Uint8Array): string {
  let bin = "";
  // String.fromCharCode takes its arguments on the stack: 32 KiB slices stay far below its limit.
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

/** Bytes of standard base64 text, or null when it is not valid base64. */
export function fromBase64(text: string): Uint8Array | null {
  let bin: string;
  try {
    bin = atob(text);
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** SHA-256 digest of `data` (strings as UTF-8). */
export async function sha256(data: string | Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", utf8(data)));
}

/**
 * Lowercase hex SHA-256 of `data` (strings as UTF-8): API-key hashes, chunk checksums.
 *
 * @example
 * ```ts
 * await sha256Hex("abc") // "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
 * ```
 */
export async function sha256Hex(data: string | Uint8Array): Promise<string> {
  return toHex(await sha256(data));
}

/**
 * HMAC-SHA256 (RFC 2104) of `message` under `key` (strings as UTF-8).
 *
 * @example
 * ```ts
 * toHex(await hmacSha256("key", "The quick brown fox jumps over the lazy dog"))
 * // "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
 * ```
 */
export async function hmacSha256(key: string | Uint8Array, message: string | Uint8Array): Promise<Uint8Array> {
  const k = await crypto.subtle.importKey("raw", utf8(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, utf8(message)));
}

/**
 * Compares two byte strings in time that depends only on their lengths (workerd's
 * `crypto.subtle.timingSafeEqual`), so a caller checking a MAC does not reveal how many leading
 * bytes matched. Different lengths are unequal (the platform call would throw).
 */
export function timingSafeEqual(a: string | Uint8Array, b: string | Uint8Array): boolean {
  const x = utf8(a);
  const y = utf8(b);
  return x.byteLength === y.byteLength && crypto.subtle.timingSafeEqual(x, y);
}
