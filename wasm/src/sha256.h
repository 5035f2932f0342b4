/* SHA-256 (FIPS 180-4), streaming. wasm32 without libc has no hash library to call, and the
 * decoders check their chunk and value digests themselves, in the order the format prescribes. */
#ifndef KV_SHA256_H
#define KV_SHA256_H
#include "common.h"

typedef struct {
  u32 h[8];
  u64 length;   /* bytes hashed so far */
  u8 block[64];
  u32 fill;     /* bytes in block */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const u8 *data, u32 n);
void sha256_final(sha256_ctx *c, u8 out[32]);
void sha256(const u8 *data, u32 n, u8 out[32]);
/* 1 when the 32-byte digests are equal. */
int digest_eq(const u8 *a, const u8 *b);
#endif
