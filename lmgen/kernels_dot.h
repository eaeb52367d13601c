/* Dot products of one weight row with one or four rows of x, for each weight format lmgen's
 * decode kernels read: fp32, bf16 (the upper half of an fp32) and int8 (scaled after the sum).
 * Included by kernels.c. */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

#ifdef __AVX512F__
/* Explicit AVX-512 with four accumulators: the compiler's own vectorisation of these loops
 * depends on how they are inlined, and was seen to fall back to scalar code. Elsewhere (and
 * for the last few elements) the loops below, vectorised by the compiler. */
static inline __m512 load16_f32(const float* w) { return _mm512_loadu_ps(w); }
static inline __m512 load16_bf16(const uint16_t* w) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)w)), 16));
}
#define DOT_AVX512(load, w, x, K, k, acc)                                                   \
  do {                                                                                      \
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();                              \
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();                              \
    for (; k + 64 <= K; k += 64) {                                                          \
      a0 = _mm512_fmadd_ps(load(w + k), _mm512_loadu_ps(x + k), a0);                        \
      a1 = _mm512_fmadd_ps(load(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);              \
      a2 = _mm512_fmadd_ps(load(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);              \
      a3 = _mm512_fmadd_ps(load(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);              \
    }                                                                                       \
    for (; k + 16 <= K; k += 16) a0 = _mm512_fmadd_ps(load(w + k), _mm512_loadu_ps(x + k), a0); \
    acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))); \
  } while (0)
#endif

static inline float dot_f32(const float* restrict w, const float* restrict x, int64_t K) {
  int64_t k = 0;
  float acc = 0.f;
#ifdef __AVX512F__
  DOT_AVX512(load16_f32, w, x, K, k, acc);
#endif
  #pragma omp simd reduction(+:acc)
  for (int64_t i = k; i < K; i++) acc += w[i] * x[i];
  return acc;
}
static inline float dot_bf16(const uint16_t* restrict w, const float* restrict x, int64_t K) {
  int64_t k = 0;
  float acc = 0.f;
#ifdef __AVX512F__
  DOT_AVX512(load16_bf16, w, x, K, k, acc);
#endif
  #pragma omp simd reduction(+:acc)
  for (int64_t i = k; i < K; i++) acc += bf16_to_f32(w[i]) * x[i];
  return acc;
}
static inline float dot_i8(const int8_t* restrict w, const float* restrict x, int64_t K) {
  int64_t k = 0;
  float acc = 0.f;
#ifdef __AVX512F__
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (; k + 64 <= K; k += 64) {
    __m512i b = _mm512_loadu_si512((const void*)(w + k));
    a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(b))), _mm512_loadu_ps(x + k), a0);
    a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 1))), _mm512_loadu_ps(x + k + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 2))), _mm512_loadu_ps(x + k + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 3))), _mm512_loadu_ps(x + k + 48), a3);
  }
  acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#endif
  for (; k < K; k++) acc += (float)w[k] * x[k];
  return acc;
}

static inline float dot_row(int dtype, const void* W, int64_t r, const float* x, int64_t K) {
  if (dtype == W_I8) return dot_i8((const int8_t*)W + r * K, x, K);
  if (dtype == W_BF16) return dot_bf16((const uint16_t*)W + r * K, x, K);
  return dot_f32((const float*)W + r * K, x, K);
}

#ifdef __AVX512F__
/* dot_row for four rows of x (K apart) at once: each weight vector is loaded (and widened) once
 * for the four, and each row's sums are made in exactly dot_row's order (four accumulators over
 * 64 values, then 16 at a time, then the rest), so a row's result does not depend on how many
 * rows share the pass: a batched prompt decodes bit for bit as it does alone. Where decoding
 * reads the weights from memory once per step whatever the batch, this is the arithmetic. */
#define DOT4_AVX512(load, scalar, w, x, K, out)                                                    \
  do {                                                                                             \
    __m512 a[4][4];                                                                                \
    for (int b = 0; b < 4; b++)                                                                    \
      for (int j = 0; j < 4; j++) a[b][j] = _mm512_setzero_ps();                                   \
    int64_t k = 0;                                                                                 \
    for (; k + 64 <= K; k += 64)                                                                   \
      for (int j = 0; j < 4; j++) {                                                                \
        __m512 wv = load(w + k + 16 * j);                                                          \
        for (int b = 0; b < 4; b++)                                                                \
          a[b][j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + b * K + k + 16 * j), a[b][j]);         \
      }                                                                                            \
    for (; k + 16 <= K; k += 16) {                                                                 \
      __m512 wv = load(w + k);                                                                     \
      for (int b = 0; b < 4; b++) a[b][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + b * K + k), a[b][0]); \
    }                                                                                              \
    for (int b = 0; b < 4; b++) {                                                                  \
      float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[b][0], a[b][1]), _mm512_add_ps(a[b][2], a[b][3]))); \
      out[b] = scalar(acc, w, x + b * K, k, K);                                                    \
    }                                                                                              \
  } while (0)

/* The last K % 16 products added to acc, as dot_f32 and dot_bf16 add them. */
static inline float tail_f32(float acc, const float* restrict w, const float* restrict x, int64_t k, int64_t K) {
  #pragma omp simd reduction(+:acc)
  for (int64_t i = k; i < K; i++) acc += w[i] * x[i];
  return acc;
}
static inline float tail_bf16(float acc, const uint16_t* restrict w, const float* restrict x, int64_t k, int64_t K) {
  #pragma omp simd reduction(+:acc)
  for (int64_t i = k; i < K; i++) acc += bf16_to_f32(w[i]) * x[i];
  return acc;
}
/* dot_i8 for four rows: 64 weights loaded and widened once for the four, summed in its order. */
static void dot4_i8(const int8_t* restrict w, const float* restrict x, int64_t K, float out[4]) {
  __m512 a[4][4];
  for (int b = 0; b < 4; b++)
    for (int j = 0; j < 4; j++) a[b][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    __m512i q = _mm512_loadu_si512((const void*)(w + k));
    __m512 wv[4] = {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(q))),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(q, 1))),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(q, 2))),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(q, 3)))};
    for (int j = 0; j < 4; j++)
      for (int b = 0; b < 4; b++) a[b][j] = _mm512_fmadd_ps(wv[j], _mm512_loadu_ps(x + b * K + k + 16 * j), a[b][j]);
  }
  for (int b = 0; b < 4; b++) {
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[b][0], a[b][1]), _mm512_add_ps(a[b][2], a[b][3])));
    for (int64_t i = k; i < K; i++) acc += (float)w[i] * x[b * K + i];
    out[b] = acc;
  }
}

static void dot_rows4(int dtype, const void* W, int64_t r, const float* x, int64_t K, float out[4]) {
  if (dtype == W_F32) {
    const float* w = (const float*)W + r * K;
    DOT4_AVX512(load16_f32, tail_f32, w, x, K, out);
  } else if (dtype == W_BF16) {
    const uint16_t* w = (const uint16_t*)W + r * K;
    DOT4_AVX512(load16_bf16, tail_bf16, w, x, K, out);
  } else {
    dot4_i8((const int8_t*)W + r * K, x, K, out);
  }
}
#endif
