/* Matrix-vector products for the decode step, where reading the weights is all the work.
 *
 * y[m, r] = sum_k W[r, k] * x[m, k] for a few rows m (one per sample), with W stored as
 * PyTorch stores a Linear weight: (out_features, in_features), row-major. Each output row is
 * one contiguous dot product, rows are split across threads with OpenMP, and x stays in L1.
 * W is fp32, bf16 (upper half of an fp32) or int8 with one fp32 scale per row; x and y are
 * always fp32. Built on first use by lmgen/kernels.py with the machine's C compiler.
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline float dot_f32(const float* restrict w, const float* restrict x, int64_t K) {
  float acc = 0.f;
  #pragma omp simd reduction(+:acc)
  for (int64_t k = 0; k < K; k++) acc += w[k] * x[k];
  return acc;
}
static inline float dot_bf16(const uint16_t* restrict w, const float* restrict x, int64_t K) {
  float acc = 0.f;
  #pragma omp simd reduction(+:acc)
  for (int64_t k = 0; k < K; k++) acc += bf16_to_f32(w[k]) * x[k];
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

void gemv_f32(const float* W, const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; r++)
    for (int64_t m = 0; m < M; m++) y[m * N + r] = dot_f32(W + r * K, x + m * K, K);
}
void gemv_bf16(const uint16_t* W, const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; r++)
    for (int64_t m = 0; m < M; m++) y[m * N + r] = dot_bf16(W + r * K, x + m * K, K);
}
void gemv_i8(const int8_t* W, const float* scale, const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; r++)
    for (int64_t m = 0; m < M; m++) y[m * N + r] = dot_i8(W + r * K, x + m * K, K) * scale[r];
}
