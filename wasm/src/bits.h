/* Raw bit fields, most significant bit first, zero-padded to a byte (Python: codec/rans.py
 * pack_bits / BitReader). Reads never touch a byte at or past the end. */
#ifndef KV_BITS_H
#define KV_BITS_H
#include "common.h"

typedef struct {
  const u8 *p;
  u32 len;   /* bytes */
  u64 pos;   /* bits consumed */
} bitreader;

static inline void br_init(bitreader *r, const u8 *p, u32 len) { r->p = p; r->len = len; r->pos = 0; }

/* Next n bits (n <= 32) into *v; 0 when the stream ends first. */
static inline int br_read(bitreader *r, u32 n, u32 *v) {
  if (r->pos + n > (u64)r->len * 8) return 0;
  u64 acc = 0;
  u32 first = (u32)(r->pos >> 3), last = (u32)((r->pos + n + 7) >> 3); /* bytes [first, last) */
  for (u32 b = first; b < last; b++) acc = (acc << 8) | r->p[b];
  u32 tail = (u32)((u64)(last - first) * 8 - (r->pos & 7) - n); /* bits after the field in acc */
  *v = n ? (u32)((acc >> tail) & ((1ull << n) - 1)) : 0;
  r->pos += n;
  return 1;
}

/* 1 when only zero padding, less than a byte of it, follows the last field. */
static inline int br_finished(const bitreader *r) {
  u64 rest = (u64)r->len * 8 - r->pos;
  if (rest >= 8) return 0;
  return rest == 0 || (r->p[r->pos >> 3] & ((1u << rest) - 1)) == 0;
}

/* MSB-first writer into a caller-sized buffer (the edge encoder). */
typedef struct {
  u8 *p;
  u32 cap;
  u64 pos;
  u64 acc;
  u32 nacc;
} bitwriter;

static inline void bw_init(bitwriter *w, u8 *p, u32 cap) { w->p = p; w->cap = cap; w->pos = 0; w->acc = 0; w->nacc = 0; }

/* Appends the low n bits of v (n <= 32); 0 when the buffer is full. */
static inline int bw_put(bitwriter *w, u32 v, u32 n) {
  if (!n) return 1;
  w->acc = (w->acc << n) | (v & ((1ull << n) - 1));
  w->nacc += n;
  while (w->nacc >= 8) {
    if (w->pos >= w->cap) return 0;
    w->nacc -= 8;
    w->p[w->pos++] = (u8)(w->acc >> w->nacc);
  }
  return 1;
}

/* Flushes the last partial byte (zero padded); returns the byte count, or -1 when full. */
static inline i64 bw_finish(bitwriter *w) {
  if (w->nacc) {
    if (w->pos >= w->cap) return -1;
    w->p[w->pos++] = (u8)(w->acc << (8 - w->nacc));
    w->nacc = 0;
  }
  return (i64)w->pos;
}
#endif
