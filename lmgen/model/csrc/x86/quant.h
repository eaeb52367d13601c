/* quant.h's tiles on x86: with AVX-512 VNNI (PACKED_VNNI: the avx512 level) or AVX2 (PACKED_AVX2:
 * avx2), and with VNNI the rounding of x; see quant.h for the layout and the arithmetic, which
 * the portable C there does in the same order. x86/kquant.h and x86/amx.h build on DOT4 and
 * store_rows (AVX2's: x4, rows8, store_rows). */
#pragma once
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "../common.h"  /* the formats' sizes, QuantizedX */

#if !(defined(PACKED_VNNI) || defined(PACKED_AVX2))
#error "x86/quant.h is for the avx2 and avx512 levels (-mavx2 -mfma -mf16c; AVX-512 VNNI with BW)"
#endif

#ifdef PACKED_VNNI
/* The scalar code's arithmetic, 16 values to an instruction (the compiler left it scalar):
 * max and min with NaN as the scalar comparisons treat it, rounding to nearest even as rintf. */
static void quantize_block(const float* v, int16_t* q, int8_t* bytes, float* scale, int32_t* total, int32_t* half) {
  const __m512 zero = _mm512_setzero_ps(), qmax = _mm512_set1_ps((float)QMAX), qmin = _mm512_set1_ps(-(float)QMAX);
  __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16);
  __m512 top16 = _mm512_max_ps(_mm512_abs_ps(x1), _mm512_max_ps(_mm512_abs_ps(x0), zero));  /* NaN: ignored */
  float top = _mm512_reduce_max_ps(top16);
  float poison = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_mul_ps(x0, zero), _mm512_mul_ps(x1, zero)));
  __m512 inv = _mm512_set1_ps(top > 0.f && top <= 3.4e38f ? (float)QMAX / top : 0.f);
  __m512i sums = _mm512_setzero_si512(), first = _mm512_setzero_si512();
  for (int h = 0; h < 2; h++) {
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(h ? x1 : x0, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_ps(_mm512_max_ps(r, qmin), qmax);  /* max: NaN → -QMAX, as the scalar code */
    __m512i qi = _mm512_cvtps_epi32(r), hi = _mm512_srai_epi32(_mm512_add_epi32(qi, _mm512_set1_epi32(128)), 8);
    _mm256_storeu_si256((__m256i*)(q + 16 * h), _mm512_cvtepi32_epi16(qi));
    _mm_storeu_si128((__m128i*)(bytes + 16 * h), _mm512_cvtepi32_epi8(_mm512_sub_epi32(qi, _mm512_slli_epi32(hi, 8))));
    _mm_storeu_si128((__m128i*)(bytes + QBLOCK + 16 * h), _mm512_cvtepi32_epi8(hi));
    sums = _mm512_add_epi32(sums, qi);
    if (!h) first = qi;
  }
  *scale = top / (float)QMAX + poison;
  *total = _mm512_reduce_add_epi32(sums);
  *half = _mm512_reduce_add_epi32(first);
}

static inline __m512i bytes4(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v); }

/* Column b of a tile's output: the 16 rows' sums of one row of x. */
static inline void store_rows(__m512 acc, int b, float out[][OUT_COLS]) {
  float t[QGROUP];
  _mm512_storeu_ps(t, acc);
  for (int i = 0; i < QGROUP; i++) out[i][b] = t[i];
}

/* Add block j of x row xb's products to lo and hi, given the group's c-th 64 bytes of weights
 * w, which hold values 4c'..4c'+3 of each row (c' = position in the block). */
#define DOT4(lo, hi, w, xq, c) \
  (lo = _mm512_dpbusd_epi32(lo, w, bytes4(xq + 4 * (c))), hi = _mm512_dpbusd_epi32(hi, w, bytes4(xq + QBLOCK + 4 * (c))))

/* out[i][b] = weight row i of group g · row x0 + b of x, for the 16 rows of the group. */
#define QTILE(NAME, B)                                                                             \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) { \
    int64_t blocks = a->blocks, qb = quant_bytes(dtype), gb = group_block_bytes(dtype);           \
    int32_t off = quant_offset(dtype);                                                             \
    const __m512i low4 = _mm512_set1_epi8(0x0f);                                                   \
    __m512 acc[B];                                                                                 \
    for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();                                      \
    for (int64_t j = 0; j < blocks; j++, g += gb) {                                                \
      __m512i lo[B], hi[B];                                                                        \
      const int8_t* xq[B];                                                                         \
      for (int b = 0; b < B; b++)                                                                  \
        lo[b] = hi[b] = _mm512_setzero_si512(), xq[b] = a->bytes + 2 * QBLOCK * ((x0 + b) * blocks + j); \
      if (dtype == W_Q8_0)                                                                         \
        for (int c = 0; c < 8; c++) {                                                              \
          __m512i w = _mm512_loadu_si512(g + 64 * c);                                              \
          for (int b = 0; b < B; b++) DOT4(lo[b], hi[b], w, xq[b], c);                             \
        }                                                                                          \
      else                                                                                         \
        for (int c = 0; c < 4; c++) { /* low nibbles: values 4c.., high nibbles: 16 + 4c.. */     \
          __m512i raw = _mm512_loadu_si512(g + 64 * c);                                            \
          __m512i w0 = _mm512_and_si512(raw, low4), w1 = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4); \
          for (int b = 0; b < B; b++) DOT4(lo[b], hi[b], w0, xq[b], c), DOT4(lo[b], hi[b], w1, xq[b], 4 + c); \
        }                                                                                          \
      __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(g + qb)));                    \
      for (int b = 0; b < B; b++) {                                                                \
        int64_t xb = (x0 + b) * blocks + j;                                                        \
        __m512i s = _mm512_sub_epi32(_mm512_add_epi32(lo[b], _mm512_slli_epi32(hi[b], 8)),        \
                                     _mm512_set1_epi32(off * a->total[xb]));                       \
        acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, _mm512_set1_ps(a->scale[xb])), acc[b]); \
        if (dtype == W_Q4_1)                                                                       \
          acc[b] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(g + qb + 32))), \
                                   _mm512_set1_ps(a->weighted[xb]), acc[b]);    \
      }                                                                                            \
    }                                                                                              \
    for (int b = 0; b < B; b++) store_rows(acc[b], b, out);                                        \
  }
#else
/* AVX2: 16 bytes of a group hold four weights of each of four rows; widened to 16-bit they are
 * multiplied by x's 16-bit values in pairs (vpmaddwd), which leaves each row two lanes of a
 * block's sum, added once a block (vphaddd). */
static inline __m256i x4(const int16_t* q) { int64_t v; memcpy(&v, q, 8); return _mm256_set1_epi64x(v); }

/* Column b of a tile's output: the 16 rows' sums of one row of x, rows 0-7 in lo, 8-15 in hi. */
static inline void store_rows(__m256 lo, __m256 hi, int b, float out[][OUT_COLS]) {
  float t[QGROUP];
  _mm256_storeu_ps(t, lo), _mm256_storeu_ps(t + 8, hi);
  for (int i = 0; i < QGROUP; i++) out[i][b] = t[i];
}

/* Eight rows' sums, in order, from the two-lanes-a-row sums of rows 0-3 (a) and 4-7 (b). */
static inline __m256i rows8(__m256i a, __m256i b) { return _mm256_permute4x64_epi64(_mm256_hadd_epi32(a, b), 0xD8); }

#define QTILE(NAME, B)                                                                             \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) { \
    int64_t blocks = a->blocks, qb = quant_bytes(dtype), gb = group_block_bytes(dtype);           \
    int32_t off = quant_offset(dtype);                                                             \
    const __m256i low4 = _mm256_set1_epi16(0x0f);                                                  \
    __m256 acc[B][2];                                                                              \
    for (int b = 0; b < B; b++) acc[b][0] = acc[b][1] = _mm256_setzero_ps();                       \
    for (int64_t j = 0; j < blocks; j++, g += gb) {                                                \
      __m256i s[B][4];                                                                             \
      const int16_t* xq[B];                                                                        \
      for (int b = 0; b < B; b++) {                                                                \
        xq[b] = a->q + QBLOCK * ((x0 + b) * blocks + j);                                           \
        for (int k = 0; k < 4; k++) s[b][k] = _mm256_setzero_si256();                              \
      }                                                                                            \
      for (int c = 0; c < (dtype == W_Q8_0 ? 8 : 4); c++)                                          \
        for (int k = 0; k < 4; k++) { /* rows 4k..4k+3 */                                         \
          __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(g + 64 * c + 16 * k))); \
          for (int b = 0; b < B; b++)                                                              \
            if (dtype == W_Q8_0) s[b][k] = _mm256_add_epi32(s[b][k], _mm256_madd_epi16(v, x4(xq[b] + 4 * c))); \
            else s[b][k] = _mm256_add_epi32(_mm256_add_epi32(s[b][k],                              \
                             _mm256_madd_epi16(_mm256_and_si256(v, low4), x4(xq[b] + 4 * c))),     \
                             _mm256_madd_epi16(_mm256_srli_epi16(v, 4), x4(xq[b] + 16 + 4 * c)));  \
        }                                                                                          \
      for (int h = 0; h < 2; h++) { /* rows 8h..8h+7 */                                           \
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(g + qb + 16 * h)));            \
        for (int b = 0; b < B; b++) {                                                              \
          int64_t xb = (x0 + b) * blocks + j;                                                      \
          __m256i sum = _mm256_sub_epi32(rows8(s[b][2 * h], s[b][2 * h + 1]), _mm256_set1_epi32(off * a->total[xb])); \
          acc[b][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(d, _mm256_set1_ps(a->scale[xb])), acc[b][h]); \
          if (dtype == W_Q4_1)                                                                     \
            acc[b][h] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(g + qb + 32 + 16 * h))), \
                                        _mm256_set1_ps(a->weighted[xb]), acc[b][h]); \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
    for (int b = 0; b < B; b++) store_rows(acc[b][0], acc[b][1], b, out);                          \
  }
#endif
