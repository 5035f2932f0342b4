import { describe, expect, it } from "vitest";
import { concatBytes, fromBase64, hmacSha256, randomHex, sha256Hex, timingSafeEqual, toBase64, toHex } from "./crypto";

describe("crypto", () => {
  describe("sha256Hex", () => {
    it("should match the FIPS 180-2 vectors", async () => {
      expect(await sha256Hex("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
      expect(await sha256Hex(new Uint8Array())).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    });
  });

  describe("hmacSha256", () => {
    it("should match RFC 4231 test case 2", async () => {
      const mac = await hmacSha256("Jefe", "what do ya want for nothing?");
      expect(toHex(mac)).toBe("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    });
    it("should match RFC 4231 test case 1 with a byte key", async () => {
      const mac = await hmacSha256(new Uint8Array(20).fill(0x0b), "Hi There");
      expect(toHex(mac)).toBe("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    });
  });

  describe("encodings", () => {
    it("should hex-encode every byte value in order", () => {
      const all = Uint8Array.from({ length: 256 }, (_, i) => i);
      const hex = toHex(all);
      expect(hex).toHaveLength(512);
      expect(hex.slice(0, 6)).toBe("000102");
      expect(hex.slice(-4)).toBe("feff");
      expect(toHex(all.buffer)).toBe(hex);
    });
    it("should round-trip base64, large inputs included, and refuse non-base64", () => {
      expect(toBase64(new TextEncoder().encode("hi"))).toBe("aGk=");
      const big = Uint8Array.from({ length: 100_000 }, (_, i) => (i * 2654435761) >>> 24);
      expect(fromBase64(toBase64(big))).toEqual(big);
      expect(fromBase64("not base64!")).toBeNull();
    });
    it("should concatenate strings as UTF-8 and bytes as they are", () => {
      expect([...concatBytes("é.", new Uint8Array([7]))]).toEqual([0xc3, 0xa9, 0x2e, 7]);
    });
    it("should make random hex of the asked length, different each time", () => {
      expect(randomHex(16)).toMatch(/^[0-9a-f]{32}$/);
      expect(randomHex(16)).not.toBe(randomHex(16));
    });
  });

  describe("timingSafeEqual", () => {
    it("should compare by value and treat other lengths as unequal", () => {
      expect(timingSafeEqual("v1,abc", "v1,abc")).toBe(true);
      expect(timingSafeEqual("v1,abc", "v1,abd")).toBe(false);
      expect(timingSafeEqual("v1,abc", "v1,ab")).toBe(false);
      expect(timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2]))).toBe(true);
    });
  });
});
