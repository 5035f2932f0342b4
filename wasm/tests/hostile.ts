// Recipes of vectors/kv-codec/hostile.json (make_hostile.py), applied exactly as the Python side does.
import hostile from "../../vectors/kv-codec/hostile.json";

export { hostile };
export type Recipe = (typeof hostile.entries)[number];

const fromHex = (h: string) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));

/** Recomputes the spec-v1 SHA-256 trailer (an attacker's edit that passes the payload checksum). */
export async function resign(b: Uint8Array): Promise<Uint8Array> {
  if (b.length < 32) return b;
  const out = b.slice();
  out.set(new Uint8Array(await crypto.subtle.digest("SHA-256", out.subarray(0, out.length - 32))), out.length - 32);
  return out;
}

export async function applyRecipe(data: Uint8Array, r: Recipe): Promise<Uint8Array> {
  let b = data.slice();
  if (r.op === "truncate") b = b.slice(0, r.len);
  else if (r.op === "append") b = Uint8Array.from([...b, ...fromHex(r.hex!)]);
  else if (r.op === "set") b[r.pos!] = r.value!;
  else if (r.op === "xor") b[r.pos!] = b[r.pos!]! ^ r.flip!;
  else if (r.op === "splice") b.set(fromHex(r.hex!).subarray(0, Math.max(0, b.length - r.pos!)), r.pos!);
  return r.resign ? resign(b) : b;
}
