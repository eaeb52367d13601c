/* kquant.h's tiles on x86, with AVX-512 VNNI (PACKED_VNNI) or AVX2 (PACKED_AVX2), on x86/quant.h's
 * DOT4 and store_rows; x86/amx.h scales its tiles with KWEIGHTS and kscale_vnni. */
#pragma once
#include <immintrin.h>
#include <stdint.h>

#include "../common.h"  /* KLayout, QuantizedX */
#include "quant.h"  /* x86/quant.h: DOT4, store_rows (VNNI); x4, rows8, store_rows (AVX2) */

#if !(defined(PACKED_VNNI) || defined(PACKED_AVX2))
#error "x86/kquant.h is for the avx2 and avx512 levels (-mavx2 -mfma -mf16c; AVX-512 VNNI with BW)"
#endif

#ifdef PACKED_VNNI
/* Bytes ahead of the quants being read that a tile asks the cache for: the hardware prefetcher
 * alone left decode at 3B's shape 20% slower (measured 1,024-4,096 ahead: 3,072 best at 3B/8B). */
enum { KPREFETCH = 3072 };

/* v shifted left by n bits (right by -n) in each 32-bit lane: n is a constant once unrolled. */
static inline __m512i shift_lanes(__m512i v, int n) {
  return n > 0 ? _mm512_slli_epi32(v, n) : n < 0 ? _mm512_srli_epi32(v, -n) : v;
}

/* The weights of chunk c (values 4c.. in w0, 16+4c.. in w1) of a block whose high bits are hA,
 * hB: each high bit moved to bit 4 (bits 4-5 for Q6_K's pairs) within its byte, then or-ed in
 * under a mask in one ternary-logic instruction (a | (b & c): 0xF8). */
#define KWEIGHTS(w0, w1, q, c, extra, hA, hB)                                                            \
  do {                                                                                                     \
    __m512i raw_ = _mm512_loadu_si512((q) + 64 * (c)), low4_ = _mm512_set1_epi8(0x0f);                     \
    w0 = _mm512_and_si512(raw_, low4_), w1 = _mm512_and_si512(_mm512_srli_epi16(raw_, 4), low4_);          \
    if ((extra) == 64) {                                                                                   \
      __m512i bit_ = _mm512_set1_epi8(0x10);                                                               \
      w0 = _mm512_ternarylogic_epi32(w0, shift_lanes(hA, 4 - 2 * (c)), bit_, 0xF8);                        \
      w1 = _mm512_ternarylogic_epi32(w1, shift_lanes(hA, 3 - 2 * (c)), bit_, 0xF8);                        \
    } else if ((extra) == 128) {                                                                           \
      __m512i two_ = _mm512_set1_epi8(0x30);                                                               \
      w0 = _mm512_ternarylogic_epi32(w0, shift_lanes(hA, 4 - 2 * (c)), two_, 0xF8);                        \
      w1 = _mm512_ternarylogic_epi32(w1, shift_lanes(hB, 4 - 2 * (c)), two_, 0xF8);                        \
    }                                                                                                      \
  } while (0)

#define KTILE(NAME, B)                                                                                     \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) {   \
    KLayout L = klayout(dtype);                                                                            \
    int64_t blocks = a->blocks;                                                                            \
    __m512 acc[B];                                                                                         \
    for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();                                              \
    for (int64_t j0 = 0; j0 < blocks; j0 += L.subs, g += L.group_bytes) {                                  \
      const uint8_t* tail = g + L.subs * L.sub_bytes;                                                      \
      for (int64_t l = 0; l < L.tail; l += 64) /* the next group's scales, which lie past its quants: */   \
        _mm_prefetch((const char*)tail + L.group_bytes + l, _MM_HINT_T0); /* the stream reaches them last */ \
      for (int s = 0; s < L.subs; s++) {                                                                   \
        const uint8_t* q = g + s * L.sub_bytes;                                                            \
        for (int64_t l = 0; l < L.sub_bytes; l += 64) _mm_prefetch((const char*)q + KPREFETCH + l, _MM_HINT_T0); \
        __m512i hA = L.extra ? _mm512_loadu_si512(q + 256) : _mm512_setzero_si512();                        \
        __m512i hB = L.extra == 128 ? _mm512_loadu_si512(q + 320) : _mm512_setzero_si512();                 \
        __m512i f_lo[B], f_hi[B], s_lo[B], s_hi[B]; /* sums over values 0-15 and 16-31, x's lo and hi bytes */ \
        const int8_t* xq[B];                                                                               \
        for (int b = 0; b < B; b++) {                                                                      \
          f_lo[b] = f_hi[b] = s_lo[b] = s_hi[b] = _mm512_setzero_si512();                                  \
          xq[b] = a->bytes + 2 * QBLOCK * ((x0 + b) * blocks + j0 + s);                                    \
        }                                                                                                  \
        for (int c = 0; c < 4; c++) {                                                                      \
          __m512i w0, w1;                                                                                  \
          KWEIGHTS(w0, w1, q, c, L.extra, hA, hB);                                                         \
          for (int b = 0; b < B; b++) DOT4(f_lo[b], f_hi[b], w0, xq[b], c), DOT4(s_lo[b], s_hi[b], w1, xq[b], 4 + c); \
        }                                                                                                  \
        KScale k = kscale_of(dtype, tail, s); /* once for the B rows of x */                             \
        for (int b = 0; b < B; b++) {                                                                      \
          int64_t xb = (x0 + b) * blocks + j0 + s;                                                         \
          __m512i first = _mm512_add_epi32(f_lo[b], _mm512_slli_epi32(f_hi[b], 8));                        \
          __m512i second = _mm512_add_epi32(s_lo[b], _mm512_slli_epi32(s_hi[b], 8));                       \
          acc[b] = kscale_apply(dtype, k, first, second, a->scale[xb], a->total[xb], a->half[xb], a->weighted[xb], acc[b]); \
        }                                                                                                  \
      }                                                                                                    \
    }                                                                                                      \
    for (int b = 0; b < B; b++) store_rows(acc[b], b, out);                                                \
  }

static inline __m512 halves16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
static inline __m512i bytes16(const uint8_t* p, int sign) {
  __m128i v = _mm_loadu_si128((const __m128i*)p);
  return sign ? _mm512_cvtepi8_epi32(v) : _mm512_cvtepu8_epi32(v);
}

/* Block s's scales for the 16 rows: d (Q5_0), d and m (Q5_1), Q6_K's d · sc for each half block,
 * and the K-quants' d · sc and dmin · mn (exact in fp32: an 11-bit mantissa times a 6- or 8-bit
 * integer). The same for every row of x: a tile computes them once, not once per row of x. */
typedef struct { __m512 first, second; } KScale;

static inline KScale kscale_of(int dtype, const uint8_t* tail, int s) {
  KScale k;
  if (dtype == W_Q5_0 || dtype == W_Q5_1) {
    k.first = halves16(tail), k.second = dtype == W_Q5_1 ? halves16(tail + 32) : k.first;
  } else if (dtype == W_Q6_K) {
    __m512 d = halves16(tail + 256);
    k.first = _mm512_mul_ps(d, _mm512_cvtepi32_ps(bytes16(tail + 32 * s, 1)));
    k.second = _mm512_mul_ps(d, _mm512_cvtepi32_ps(bytes16(tail + 32 * s + 16, 1)));
  } else {
    k.first = _mm512_mul_ps(halves16(tail + 256), _mm512_cvtepi32_ps(bytes16(tail + 16 * s, 0)));
    k.second = _mm512_mul_ps(halves16(tail + 288), _mm512_cvtepi32_ps(bytes16(tail + 128 + 16 * s, 0)));
  }
  return k;
}

/* acc + block s's products for 16 rows, given its scales k and its sums over values 0-15 (first)
 * and 16-31 for one row of x. */
static inline __m512 kscale_apply(int dtype, KScale k, __m512i first, __m512i second, float xs, int32_t total,
                                  int32_t half, float xt, __m512 acc) {
  __m512 x = _mm512_set1_ps(xs);
  __m512i sum = _mm512_add_epi32(first, second);
  if (dtype == W_Q5_0)
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum, _mm512_set1_epi32(16 * total))),
                           _mm512_mul_ps(k.first, x), acc);
  if (dtype == W_Q5_1) {
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(k.first, x), acc);
    return _mm512_fmadd_ps(k.second, _mm512_set1_ps(xt), acc);
  }
  if (dtype == W_Q6_K) {  /* each half's sum exact in fp32 (|Σ| < 2^24) */
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(first, _mm512_set1_epi32(32 * half))),
                          _mm512_mul_ps(k.first, x), acc);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(second, _mm512_set1_epi32(32 * (total - half)))),
                           _mm512_mul_ps(k.second, x), acc);
  }
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(k.first, x), acc);  /* Q4_K, Q5_K */
  return _mm512_fnmadd_ps(k.second, _mm512_set1_ps(xt), acc);
}

/* acc + block s's products for 16 rows and one row of x (kscale_of, then kscale_apply). */
static inline __m512 kscale_vnni(int dtype, const uint8_t* tail, int s, __m512i first, __m512i second, float xs,
                                 int32_t total, int32_t half, float xt, __m512 acc) {
  return kscale_apply(dtype, kscale_of(dtype, tail, s), first, second, xs, total, half, xt, acc);
}
#else
/* AVX2: as x86/quant.h's, four rows' weights widened to 16 bits, pairs of products summed
 * (vpmaddwd), each row's two lanes added once a block. */
#define KTILE(NAME, B)                                                                                     \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) {   \
    KLayout L = klayout(dtype);                                                                            \
    int64_t blocks = a->blocks;                                                                            \
    const __m256i low4 = _mm256_set1_epi16(0x0f), bit = _mm256_set1_epi16(0x10), two = _mm256_set1_epi16(0x30); \
    __m256 acc[B][2];                                                                                      \
    for (int b = 0; b < B; b++) acc[b][0] = acc[b][1] = _mm256_setzero_ps();                               \
    for (int64_t j0 = 0; j0 < blocks; j0 += L.subs, g += L.group_bytes) {                                  \
      const uint8_t* tail = g + L.subs * L.sub_bytes;                                                      \
      for (int64_t l = 0; l < L.tail; l += 64) /* the next group's scales (see the VNNI tile) */            \
        _mm_prefetch((const char*)tail + L.group_bytes + l, _MM_HINT_T0);                                  \
      for (int s = 0; s < L.subs; s++) {                                                                   \
        const uint8_t* q = g + s * L.sub_bytes;                                                            \
        __m256i f[B][4], sc[B][4];                                                                         \
        const int16_t* xq[B];                                                                              \
        for (int b = 0; b < B; b++) {                                                                      \
          xq[b] = a->q + QBLOCK * ((x0 + b) * blocks + j0 + s);                                            \
          for (int k = 0; k < 4; k++) f[b][k] = sc[b][k] = _mm256_setzero_si256();                         \
        }                                                                                                  \
        for (int k = 0; k < 4; k++) { /* rows 4k..4k+3 */                                                 \
          __m256i hA = _mm256_setzero_si256(), hB = _mm256_setzero_si256();                                \
          if (L.extra) hA = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(q + 256 + 16 * k)));     \
          if (L.extra == 128) hB = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(q + 320 + 16 * k))); \
          for (int c = 0; c < 4; c++) {                                                                    \
            __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(q + 64 * c + 16 * k)));      \
            __m256i w0 = _mm256_and_si256(v, low4), w1 = _mm256_srli_epi16(v, 4);                          \
            if (L.extra == 64) {                                                                           \
              __m256i t = _mm256_srli_epi16(hA, 2 * c);                                                    \
              w0 = _mm256_or_si256(w0, _mm256_and_si256(_mm256_slli_epi16(t, 4), bit));                    \
              w1 = _mm256_or_si256(w1, _mm256_and_si256(_mm256_slli_epi16(t, 3), bit));                    \
            } else if (L.extra == 128) {                                                                   \
              w0 = _mm256_or_si256(w0, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hA, 2 * c), 4), two)); \
              w1 = _mm256_or_si256(w1, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hB, 2 * c), 4), two)); \
            }                                                                                              \
            for (int b = 0; b < B; b++) {                                                                  \
              f[b][k] = _mm256_add_epi32(f[b][k], _mm256_madd_epi16(w0, x4(xq[b] + 4 * c)));               \
              sc[b][k] = _mm256_add_epi32(sc[b][k], _mm256_madd_epi16(w1, x4(xq[b] + 16 + 4 * c)));         \
            }                                                                                              \
          }                                                                                                \
        }                                                                                                  \
        for (int h = 0; h < 2; h++) /* rows 8h..8h+7 */                                                   \
          for (int b = 0; b < B; b++) {                                                                    \
            int64_t xb = (x0 + b) * blocks + j0 + s;                                                       \
            acc[b][h] = kscale_avx2(dtype, tail, s, h, rows8(f[b][2 * h], f[b][2 * h + 1]),                 \
                                    rows8(sc[b][2 * h], sc[b][2 * h + 1]), a->scale[xb], a->total[xb],     \
                                    a->half[xb], a->weighted[xb], acc[b][h]);                              \
          }                                                                                                \
      }                                                                                                    \
    }                                                                                                      \
    for (int b = 0; b < B; b++) store_rows(acc[b][0], acc[b][1], b, out);                                  \
  }

static inline __m256 halves8(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline __m256i bytes8(const uint8_t* p, int sign) {
  __m128i v = _mm_loadl_epi64((const __m128i*)p);
  return sign ? _mm256_cvtepi8_epi32(v) : _mm256_cvtepu8_epi32(v);
}

/* kscale_vnni's arithmetic for rows 8h..8h+7. */
static inline __m256 kscale_avx2(int dtype, const uint8_t* tail, int s, int h, __m256i first, __m256i second,
                                 float xs, int32_t total, int32_t half, float xt, __m256 acc) {
  __m256 x = _mm256_set1_ps(xs);
  __m256i sum = _mm256_add_epi32(first, second);
  int r = 8 * h;
  if (dtype == W_Q5_0)
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sum, _mm256_set1_epi32(16 * total))),
                           _mm256_mul_ps(halves8(tail + 2 * r), x), acc);
  if (dtype == W_Q5_1) {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(halves8(tail + 2 * r), x), acc);
    return _mm256_fmadd_ps(halves8(tail + 32 + 2 * r), _mm256_set1_ps(xt), acc);
  }
  if (dtype == W_Q6_K) {
    __m256 d = halves8(tail + 256 + 2 * r);
    __m256 ds0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(bytes8(tail + 32 * s + r, 1)));
    __m256 ds1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(bytes8(tail + 32 * s + 16 + r, 1)));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(first, _mm256_set1_epi32(32 * half))),
                          _mm256_mul_ps(ds0, x), acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(second, _mm256_set1_epi32(32 * (total - half)))),
                           _mm256_mul_ps(ds1, x), acc);
  }
  __m256 ds = _mm256_mul_ps(halves8(tail + 256 + 2 * r), _mm256_cvtepi32_ps(bytes8(tail + 16 * s + r, 0)));
  __m256 dm = _mm256_mul_ps(halves8(tail + 288 + 2 * r), _mm256_cvtepi32_ps(bytes8(tail + 128 + 16 * s + r, 0)));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(ds, x), acc);
  return _mm256_fnmadd_ps(dm, _mm256_set1_ps(xt), acc);
}
#endif
