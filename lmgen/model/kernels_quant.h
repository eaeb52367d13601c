/* Products of block-quantized weights (llama.cpp's Q8_0, Q4_0 and Q4_1; see lmgen/quant.py; the
 * other formats in kernels_kquant.h) with rows of x. Included by kernels.c.
 *
 * The weights come in lmgen.quant's packed layout: groups of 16 rows, and within a group, block
 * by block, the 16 rows' quants interleaved four bytes at a time, then their 16 scales d (and
 * minimums m). So one 64-byte load holds four weights of each of 16 rows, and one VNNI
 * instruction (vpdpbusd) adds four products to each row's sum: no sum across lanes is ever
 * needed, lane i of the accumulator is row i. Q4 nibbles are unpacked in registers; Q8 bytes are
 * stored offset by 128 (vpdpbusd's weight operand is unsigned) and the offset taken back once a
 * block through the block's sum of x.
 *
 * The activations are rounded to 16-bit integers with one scale per block of 32 (max|x| / 32639:
 * a relative error of 1.5e-5 of the block's largest value, 250 times finer than the weights' own
 * 8-bit rounding and finer than bf16), kept as two signed bytes, x = 256 hi + lo, so that each
 * block's products are summed exactly in integers. Each block's sum is then scaled by d · xs
 * (plus m · Σx for Q4_1) into fp32. Every row of x is summed in one order, alone or in a batch,
 * and the AVX2 and portable C paths do the same arithmetic: all builds agree bit for bit.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define PACKED_VNNI 1
#endif

enum { W_Q8_0 = 3, W_Q4_0 = 4, W_Q4_1 = 5 };
enum { QBLOCK = 32, QGROUP = 16, QMAX = 32639 /* 127 · 256 + 127: hi and lo fit in int8 */ };
enum { OUT_COLS = 16 };  /* a tile's output: out[i][b] for weight row i and row b of x, b < 16 */

static inline int64_t quant_bytes(int dtype) { return dtype == W_Q8_0 ? 512 : 256; }  /* a group's quants per block */
static inline int64_t group_block_bytes(int dtype) { return QGROUP * (dtype == W_Q8_0 ? 34 : dtype == W_Q4_0 ? 18 : 20); }
static inline int32_t quant_offset(int dtype) { return dtype == W_Q8_0 ? 128 : dtype == W_Q4_0 ? 8 : 0; }

static inline float half_to_float(const uint8_t* p) {
  uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#ifdef __F16C__
  return _cvtsh_ss(h);
#endif
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);  /* inf, nan */
  else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);
  else if (!man) u = sign;
  else {  /* subnormal: normalise */
    int e = -1;
    do { man <<= 1; e++; } while (!(man & 0x400));
    u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Rows of x rounded per block of 32: the 16-bit values q, and as bytes its 32 lo then 32 hi
 * (q = 256 hi + lo), its scale xs (x ≈ xs · q), its integer sum Σq and that of its first 16, and
 * xs · Σq (the minimums' factor: one multiplication per block, not one per block and weight row). */
typedef struct { int16_t* q; int8_t* bytes; float* scale; int32_t* total; int32_t* half; float* weighted; int64_t blocks; } QuantizedX;

/* Memory a thread reuses from call to call (kept at the largest size asked, never shrunk): a
 * batch's activations and scratch run to megabytes, which malloc would map afresh and the kernel
 * zero page by page on every step (16% of a 16-row decode step went to clearing pages). One
 * QuantizedX, one scratch area and one widened KV head (ARENA_KV) are live at a time on a thread. */
enum { ARENA_X = 0, ARENA_SCRATCH = 1, ARENA_KV = 2 };
static void* arena(int which, size_t bytes) {
  static __thread void* memory[3];
  static __thread size_t size[3];
  if (bytes > size[which]) {
    free(memory[which]);
    memory[which] = malloc(bytes);
    size[which] = memory[which] ? bytes : 0;
  }
  return memory[which];
}

/* One block of 32 values rounded: q, its lo then hi bytes, its scale, sum and first half's sum. */
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
#else
static void quantize_block(const float* v, int16_t* q, int8_t* bytes, float* scale, int32_t* total, int32_t* half) {
  int8_t *lo = bytes, *hi = bytes + QBLOCK;
  float top = 0.f, poison = 0.f;  /* poison: NaN if any value is NaN or infinite */
  for (int i = 0; i < QBLOCK; i++) {
    float m = fabsf(v[i]);
    top = m > top ? m : top;
    poison += v[i] * 0.f;
  }
  float inv = top > 0.f && top <= 3.4e38f ? (float)QMAX / top : 0.f;
  int32_t sum = 0, first = 0;
  for (int i = 0; i < QBLOCK; i++) {
    float r = rintf(v[i] * inv);
    r = r > -(float)QMAX ? r : -(float)QMAX;  /* and NaN → -QMAX: the scale carries the NaN */
    r = r < (float)QMAX ? r : (float)QMAX;
    int32_t qi = (int32_t)r, h = (qi + 128) >> 8;
    q[i] = (int16_t)qi, hi[i] = (int8_t)h, lo[i] = (int8_t)(qi - 256 * h), sum += qi;
    first += i < QBLOCK / 2 ? qi : 0;
  }
  *scale = top / (float)QMAX + poison;  /* a NaN or infinity in x makes every product NaN */
  *total = sum;
  *half = first;
}
#endif

static QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  int64_t blocks = K / QBLOCK, n = M * blocks;
  /* + 16 rows of bytes: AMX tiles read 16 rows of x, past the batch's last (kernels_amx.h) */
  char* m = arena(ARENA_X, (sizeof(int16_t) + 2) * M * K + (sizeof(float) * 2 + sizeof(int32_t) * 2) * n + 2 * 16 * K);
  char* stats = m + 4 * M * K;
  QuantizedX a = {(int16_t*)m, (int8_t*)(m + sizeof(int16_t) * M * K), (float*)stats, (int32_t*)(stats + 4 * n),
                  (int32_t*)(stats + 8 * n), (float*)(stats + 12 * n), blocks};
  for (int64_t b = 0; b < n; b++) {
    quantize_block(x + b * QBLOCK, a.q + b * QBLOCK, a.bytes + 2 * QBLOCK * b, a.scale + b, a.total + b, a.half + b);
    a.weighted[b] = a.scale[b] * (float)a.total[b];
  }
  return a;
}

static void free_x(QuantizedX a) { (void)a; }  /* its memory stays with the thread (arena) */

#ifdef PACKED_VNNI
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
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
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
#else
/* Portable C: the same arithmetic in the same order, the 16 rows of a group side by side so
 * that the compiler can vectorise across them. */
#define QTILE(NAME, B)                                                                             \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) { \
    int64_t blocks = a->blocks, qb = quant_bytes(dtype), gb = group_block_bytes(dtype);           \
    int32_t off = quant_offset(dtype);                                                             \
    for (int b = 0; b < B; b++) {                                                                  \
      float acc[QGROUP] = {0};                                                                     \
      for (int64_t j = 0; j < blocks; j++) {                                                       \
        const uint8_t* p = g + j * gb;                                                             \
        int64_t xb = (x0 + b) * blocks + j;                                                        \
        const int16_t* xq = a->q + QBLOCK * xb;                                                    \
        int32_t s[QGROUP] = {0};                                                                   \
        for (int c = 0; c < (dtype == W_Q8_0 ? 8 : 4); c++)                                        \
          for (int i = 0; i < QGROUP; i++) {                                                       \
            const uint8_t* w = p + 64 * c + 4 * i;                                                 \
            for (int t = 0; t < 4; t++)                                                            \
              s[i] += dtype == W_Q8_0 ? w[t] * xq[4 * c + t]                                       \
                                      : (w[t] & 15) * xq[4 * c + t] + (w[t] >> 4) * xq[16 + 4 * c + t]; \
          }                                                                                        \
        for (int i = 0; i < QGROUP; i++) {                                                         \
          acc[i] = fmaf((float)(s[i] - off * a->total[xb]), half_to_float(p + qb + 2 * i) * a->scale[xb], acc[i]); \
          if (dtype == W_Q4_1)                                                                     \
            acc[i] = fmaf(half_to_float(p + qb + 32 + 2 * i), a->weighted[xb], acc[i]); \
        }                                                                                          \
      }                                                                                            \
      for (int i = 0; i < QGROUP; i++) out[i][b] = acc[i];                                         \
    }                                                                                              \
  }
#endif

QTILE(qtile4, 4)
QTILE(qtile1, 1)

#include "kernels_kquant.h"  /* Q5_0, Q5_1 and the K-quants, on the same activations */

/* Bytes of a packed group (16 rows) per block of 32 values, in any block format. */
static inline int64_t packed_block_bytes(int dtype) {
  return dtype >= W_Q5_0 ? kgroup_block_bytes(dtype) : group_block_bytes(dtype);
}

/* AMX intrinsics came with GCC 11 and clang 12; older compilers build the VNNI level without them. */
#if defined(PACKED_VNNI) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#include "kernels_amx.h"  /* ... and with AMX tiles, for many rows of x */
#else
enum { AMX_ROWS = 16, AMX_MIN_ROWS = 8, AMX_GROUPS = 1 };
static const int use_amx = 0;
int amx_enable(int want) { (void)want; return 0; }
int64_t amx_tile_count(void) { return 0; }
static void amx_begin(void) {}
static void amx_end(void) {}
static void amx_tile(int dtype, const uint8_t* g0, const uint8_t* g1, const QuantizedX* a, int64_t x0, int rows,
                     float out[2 * QGROUP][AMX_ROWS]) {
  (void)dtype, (void)g0, (void)g1, (void)a, (void)x0, (void)rows, (void)out;
}
#endif


/* out[i][b] = weight row r + i · row x0 + b of x, for the 16 rows of the group starting at row r
 * (a multiple of 16) and nb ≤ 4 rows of x. */
static void block_tile(int dtype, const void* W, int64_t r, const QuantizedX* a, int64_t x0, int nb,
                       float out[][OUT_COLS]) {
  int k = dtype >= W_Q5_0;
  const uint8_t* g = (const uint8_t*)W + r / QGROUP * a->blocks * packed_block_bytes(dtype);
  if (nb == 4) {
    (k ? ktile4 : qtile4)(dtype, g, a, x0, out);
    return;
  }
  for (int b = 0; b < nb; b++)  /* a row or few of x (decoding one prompt): column b of out */
    (k ? ktile1 : qtile1)(dtype, g, a, x0 + b, (float(*)[OUT_COLS])&out[0][b]);
}
