/* Binary adaptive range coder (the carry-less-cache scheme of LZMA's rc: G. N. N. Martin, "Range
 * encoding: an algorithm for removing redundancy from a digitised message", 1979; I. Pavlov, LZMA SDK).
 * Probabilities are 12-bit (of bit 0) with a per-context adaptation rate that starts fast and settles:
 * shift = min(updates + 1, RC_MAX_SHIFT), which behaves like counting for the first few bits of a
 * context and like an exponential window afterwards. Encoder and decoder use the same integer rules. */
#ifndef KV_RC_H
#define KV_RC_H
#include "common.h"

#define RC_PROB_BITS 12
#define RC_TOP (1u << 24)
#define RC_MAX_SHIFT 4
#define RC_PMIN 32u                         /* keeps every bound in (0, range): p in [32, 4064] */
#define RC_PMAX ((1u << RC_PROB_BITS) - 32u)
#define RC_INIT (1u << (RC_PROB_BITS - 1))  /* p = 1/2, no updates yet */

/* A context: low 12 bits the probability of 0, high 4 bits the update count (saturating). */
typedef u16 rc_prob;

static inline void rc_update(rc_prob *s, u32 bit) {
  u32 p = *s & 0xFFFu, c = *s >> 12;
  u32 sh = c + 1 < RC_MAX_SHIFT ? c + 1 : RC_MAX_SHIFT;
  if (bit) p -= p >> sh;
  else p += ((1u << RC_PROB_BITS) - p) >> sh;
  p = p < RC_PMIN ? RC_PMIN : p > RC_PMAX ? RC_PMAX : p;
  *s = (rc_prob)(p | ((c < 15 ? c + 1 : 15) << 12));
}

typedef struct {
  u64 low;
  u32 range;
  u8 cache;
  u64 pending;   /* bytes held back for a carry: cache, then pending-1 times 0xFF */
  u8 *out;
  u32 cap, pos;
  int overflow;
} rc_encoder;

static inline void rce_put(rc_encoder *e, u8 b) {
  if (e->pos < e->cap) e->out[e->pos++] = b;
  else e->overflow = 1;
}

static inline void rce_shift_low(rc_encoder *e) {
  if ((u32)e->low < 0xFF000000u || (e->low >> 32) != 0) {
    u8 carry = (u8)(e->low >> 32);
    u8 b = e->cache;
    do {
      rce_put(e, (u8)(b + carry));
      b = 0xFF;
    } while (--e->pending != 0);
    e->cache = (u8)(e->low >> 24);
  }
  e->pending++;
  e->low = (e->low & 0x00FFFFFFu) << 8;
}

static inline void rce_init(rc_encoder *e, u8 *out, u32 cap) {
  e->low = 0; e->range = 0xFFFFFFFFu; e->cache = 0; e->pending = 1; e->out = out; e->cap = cap; e->pos = 0; e->overflow = 0;
}

static inline void rce_bit(rc_encoder *e, rc_prob *s, u32 bit) {
  u32 bound = (e->range >> RC_PROB_BITS) * (*s & 0xFFFu);
  if (bit) { e->low += bound; e->range -= bound; }
  else e->range = bound;
  rc_update(s, bit);
  while (e->range < RC_TOP) { e->range <<= 8; rce_shift_low(e); }
}

static inline void rce_finish(rc_encoder *e) {
  for (int i = 0; i < 5; i++) rce_shift_low(e);
}

typedef struct {
  u32 range, code;
  const u8 *in;
  u32 len, pos;
  int overread;
} rc_decoder;

static inline u8 rcd_byte(rc_decoder *d) {
  if (d->pos < d->len) return d->in[d->pos++];
  d->overread = 1;
  return 0;
}

static inline void rcd_init(rc_decoder *d, const u8 *in, u32 len) {
  d->in = in; d->len = len; d->pos = 0; d->overread = 0; d->range = 0xFFFFFFFFu; d->code = 0;
  for (int i = 0; i < 5; i++) d->code = (d->code << 8) | rcd_byte(d);
}

static inline u32 rcd_bit(rc_decoder *d, rc_prob *s) {
  u32 bound = (d->range >> RC_PROB_BITS) * (*s & 0xFFFu), bit;
  if (d->code < bound) { d->range = bound; bit = 0; }
  else { d->code -= bound; d->range -= bound; bit = 1; }
  rc_update(s, bit);
  while (d->range < RC_TOP) { d->range <<= 8; d->code = (d->code << 8) | rcd_byte(d); }
  return bit;
}
#endif
