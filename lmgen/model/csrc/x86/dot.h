/* dot.h's tiles with AVX-512: 16 products of a weight row and a row of x to an instruction, one
 * accumulator per pair of rows, its lanes added at the end (the portable TILE's order). */
#pragma once
#include <immintrin.h>
#include <stdint.h>

#ifndef __AVX512F__
#error "x86/dot.h is for the avx512 level (-mavx512f)"
#endif

static inline __m512 load16_f32(const float* w) { return _mm512_loadu_ps(w); }
static inline __m512 load16_bf16(const uint16_t* w) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)w)), 16));
}
/* out[i][b] = W row i · x row b, for R weight rows and B rows of x (both K apart). */
#define TILE(NAME, T, LOAD, VALUE, R, B)                                                          \
  static void NAME(const void* weights, const float* restrict x, int64_t K, float out[][4]) {     \
    const T* restrict w = (const T*)weights;                                                      \
    __m512 acc[R][B];                                                                             \
    for (int i = 0; i < R; i++)                                                                   \
      for (int b = 0; b < B; b++) acc[i][b] = _mm512_setzero_ps();                                \
    int64_t k = 0;                                                                                \
    for (; k + 16 <= K; k += 16) {                                                                \
      __m512 wv[R];                                                                               \
      for (int i = 0; i < R; i++) wv[i] = LOAD(w + i * K + k);                                    \
      for (int b = 0; b < B; b++) {                                                               \
        __m512 xv = _mm512_loadu_ps(x + b * K + k);                                               \
        for (int i = 0; i < R; i++) acc[i][b] = _mm512_fmadd_ps(wv[i], xv, acc[i][b]);           \
      }                                                                                           \
    }                                                                                             \
    for (int i = 0; i < R; i++)                                                                   \
      for (int b = 0; b < B; b++) {                                                               \
        float s = _mm512_reduce_add_ps(acc[i][b]);                                                \
        for (int64_t j = k; j < K; j++) s += VALUE(w[i * K + j]) * x[b * K + j];                  \
        out[i][b] = s;                                                                            \
      }                                                                                           \
  }
