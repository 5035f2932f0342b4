/* edge-kv-v1: lossless coding of the edge model's own KV chunks (docs/kv-chunk-format.md).
 *
 * Values: float16 bit patterns (the edge graph keeps bfloat16 precision in float16, so the low 3
 * mantissa bits of every normal value are zero), layout [L][K, V][T][KH][D] (token-major, as the edge
 * KV cache holds them). The payload is a header and then one independent block per (layer, K/V), so
 * that a coder holds one block at a time (~200 KB for 512 tokens) instead of a whole chunk. In a
 * block, per value in layout order:
 *   sign + exponent (6 bits)  binary tree of adaptive bits, context (head, channel): each channel has
 *                             its own scale, so its exponents concentrate on a few values
 *   low 3 mantissa bits       one adaptive "all zero" bit, then (rarely) a 3-bit tree; context
 *                             (exponent field == 0)
 *   top 7 mantissa bits       raw bits (measured: no gain from modelling them)
 * No predictor: the edge has no cheaper model of its KV than itself (docs/design-notes.md has the
 * measured options). A block that would not get smaller is stored raw.
 *
 * Host protocol (one chunk at a time; every buffer in the arena, reset by the host per block):
 *   encode: edge_kv_begin(L, KH, T, D); per block: edge_kv_encode_block(values, out, cap) -> bytes;
 *           edge_kv_header(out) -> the 50-byte header (values SHA-256 over every block)
 *   decode: edge_kv_begin(...); edge_kv_check_header(data, len) -> status; per block:
 *           edge_kv_decode_block(data, len, out) -> status; edge_kv_end() -> status (values SHA-256)
 */
#include "bits.h"
#include "rc.h"
#include "sha256.h"

#define EK_HEAD 50
#define BLOCK_HEAD 9 /* mode u8, n_rc u32, n_raw u32 */
#define SE_NODES 64  /* tree over 6 bits: nodes 1..63 */
#define LO_NODES 16  /* per context: [0] the zero flag, tree nodes 9..15 */

static struct {
  u32 L, KH, T, D, blocks_done;
  u32 n;            /* values per block: T * KH * D */
  sha256_ctx values;
  int ready;
} K;

EXPORT(edge_kv_begin)
int edge_kv_begin(u32 L, u32 KH, u32 T, u32 D) {
  K.ready = 0;
  u64 n = (u64)T * KH * D;
  if (!L || L > 1024 || !KH || KH > 1024 || !D || D > 4096 || n > (1u << 26)) return ST_SHAPE_MISMATCH;
  K.L = L; K.KH = KH; K.T = T; K.D = D; K.n = (u32)n; K.blocks_done = 0;
  sha256_init(&K.values);
  K.ready = 1;
  return ST_OK;
}

/* A block's contexts, fresh (blocks are independent). */
static int contexts(rc_prob **se, rc_prob **lo) {
  u32 ctx = K.KH * K.D;
  *se = arena_alloc(ctx * SE_NODES * 2);
  *lo = arena_alloc(2 * LO_NODES * 2);
  if (!*se || !*lo) return ST_OUT_OF_MEMORY;
  for (u32 i = 0; i < ctx * SE_NODES; i++) (*se)[i] = RC_INIT;
  for (u32 i = 0; i < 2 * LO_NODES; i++) (*lo)[i] = RC_INIT;
  return ST_OK;
}

/* Codes the next block (n values) into out; returns the block's bytes, 0 on a bad call. */
EXPORT(edge_kv_encode_block)
u32 edge_kv_encode_block(const u16 *values, u8 *out, u32 cap) {
  u32 n = K.n, raw_block = BLOCK_HEAD + 2 * n;
  rc_prob *se, *lo;
  if (!K.ready || K.blocks_done >= 2 * K.L || !arena_owns(values, 2 * n) || !arena_owns(out, cap) || cap < raw_block) return 0;
  if (contexts(&se, &lo) != ST_OK) return 0;
  sha256_update(&K.values, (const u8 *)values, 2 * n);
  K.blocks_done++;
  u32 raw_cap = (u32)(((u64)n * 7 + 7) / 8), budget = raw_block - BLOCK_HEAD; /* coded must beat raw */
  if (raw_cap < budget) {
    rc_encoder e;
    bitwriter w;
    rce_init(&e, out + BLOCK_HEAD, budget - raw_cap);
    u8 *rawbuf = out + BLOCK_HEAD + (budget - raw_cap); /* raw bits written at the end, moved down after */
    bw_init(&w, rawbuf, raw_cap);
    for (u32 i = 0, c = 0; i < n; i++, c = c + 1 == K.KH * K.D ? 0 : c + 1) {
      u32 v = values[i], s6 = v >> 10, low = v & 7, sub = (s6 & 31) == 0;
      rc_prob *tree = se + c * SE_NODES, *lt = lo + sub * LO_NODES;
      for (u32 node = 1, k = 6; k-- > 0;) { u32 b = (s6 >> k) & 1; rce_bit(&e, tree + node, b); node = node * 2 + b; }
      rce_bit(&e, lt, low != 0);
      if (low) for (u32 node = 1, k = 3; k-- > 0;) { u32 b = (low >> k) & 1; rce_bit(&e, lt + 8 + node, b); node = node * 2 + b; }
      bw_put(&w, (v >> 3) & 0x7F, 7);
    }
    rce_finish(&e);
    i64 n_raw = bw_finish(&w);
    if (!e.overflow && n_raw >= 0) {
      __builtin_memmove(out + BLOCK_HEAD + e.pos, rawbuf, (u32)n_raw);
      out[0] = 1; wr32(out + 1, e.pos); wr32(out + 5, (u32)n_raw);
      return BLOCK_HEAD + e.pos + (u32)n_raw;
    }
  }
  out[0] = 0; wr32(out + 1, 0); wr32(out + 5, 2 * n);
  for (u32 i = 0; i < n; i++) wr16(out + BLOCK_HEAD + 2 * i, values[i]);
  return raw_block;
}

/* The payload header after every block was coded. */
EXPORT(edge_kv_header)
int edge_kv_header(u8 *h) {
  if (!K.ready || K.blocks_done != 2 * K.L || !arena_owns(h, EK_HEAD)) return ST_BAD_CALL;
  h[0] = 'R'; h[1] = 'P'; h[2] = 'E'; h[3] = 'K';
  wr16(h + 4, 1); wr16(h + 6, 0);
  wr16(h + 8, K.L); wr16(h + 10, K.KH); wr16(h + 12, K.D); wr32(h + 14, K.T);
  sha256_ctx c = K.values;
  sha256_final(&c, h + 18);
  return ST_OK;
}

static u8 expect_sha[32];

/* Checks a payload's header against the dimensions given to edge_kv_begin. */
EXPORT(edge_kv_check_header)
int edge_kv_check_header(const u8 *h, u32 len) {
  if (!K.ready || !arena_owns(h, len)) return ST_BAD_CALL;
  if (len < 4 || h[0] != 'R' || h[1] != 'P' || h[2] != 'E' || h[3] != 'K') return ST_BAD_MAGIC;
  if (len < EK_HEAD) return ST_TRUNCATED;
  if (rd16(h + 4) != 1) return ST_BAD_VERSION;
  if (rd16(h + 6) != 0) return ST_CORRUPT;
  if (rd16(h + 8) != K.L || rd16(h + 10) != K.KH || rd16(h + 12) != K.D || rd32(h + 14) != K.T) return ST_SHAPE_MISMATCH;
  __builtin_memcpy(expect_sha, h + 18, 32);
  return ST_OK;
}

/* Decodes the next block; `data` holds exactly the block (its 9-byte head included). */
EXPORT(edge_kv_decode_block)
int edge_kv_decode_block(const u8 *data, u32 len, u16 *out) {
  u32 n = K.n;
  if (!K.ready || K.blocks_done >= 2 * K.L || !arena_owns(data, len) || !arena_owns(out, 2 * n)) return ST_BAD_CALL;
  if (len < BLOCK_HEAD) return ST_TRUNCATED;
  u32 mode = data[0], n_rc = rd32(data + 1), n_raw = rd32(data + 5);
  if (mode > 1) return ST_CORRUPT;
  if ((u64)BLOCK_HEAD + n_rc + n_raw != len) return len < (u64)BLOCK_HEAD + n_rc + n_raw ? ST_TRUNCATED : ST_CORRUPT;
  if (mode == 0) {
    if (n_rc || n_raw != 2 * n) return ST_CORRUPT;
    for (u32 i = 0; i < n; i++) out[i] = rd16(data + BLOCK_HEAD + 2 * i);
  } else {
    rc_prob *se, *lo;
    int st = contexts(&se, &lo);
    if (st != ST_OK) return st;
    if (n_rc < 5 || data[BLOCK_HEAD] != 0) return ST_CORRUPT; /* the encoder's first byte is always 0 */
    rc_decoder d;
    bitreader r;
    rcd_init(&d, data + BLOCK_HEAD, n_rc);
    br_init(&r, data + BLOCK_HEAD + n_rc, n_raw);
    for (u32 i = 0, c = 0; i < n; i++, c = c + 1 == K.KH * K.D ? 0 : c + 1) {
      rc_prob *tree = se + c * SE_NODES;
      u32 node = 1, mid, low = 0;
      for (int k = 0; k < 6; k++) node = node * 2 + rcd_bit(&d, tree + node);
      u32 s6 = node - SE_NODES;
      rc_prob *lt = lo + ((s6 & 31) == 0) * LO_NODES;
      if (rcd_bit(&d, lt)) {
        u32 n3 = 1;
        for (int k = 0; k < 3; k++) n3 = n3 * 2 + rcd_bit(&d, lt + 8 + n3);
        low = n3 - 8;
        if (low == 0) return ST_CORRUPT; /* flagged non-zero, coded zero: no encoder emits it */
      }
      if (!br_read(&r, 7, &mid)) return ST_CORRUPT;
      out[i] = (u16)((s6 << 10) | (mid << 3) | low);
    }
    if (d.overread || d.pos != n_rc || !br_finished(&r)) return ST_CORRUPT;
  }
  sha256_update(&K.values, (const u8 *)out, 2 * n);
  K.blocks_done++;
  return ST_OK;
}

/* After the last block: the decoded values' SHA-256 against the header's. */
EXPORT(edge_kv_end)
int edge_kv_end(void) {
  if (!K.ready || K.blocks_done != 2 * K.L) return ST_BAD_CALL;
  u8 got[32];
  sha256_final(&K.values, got);
  K.ready = 0;
  return digest_eq(got, expect_sha) ? ST_OK : ST_VALUE_CHECKSUM;
}
