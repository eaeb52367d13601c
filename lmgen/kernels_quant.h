/* Dot products of block-quantized weight rows (llama.cpp's Q8_0, Q4_0 and Q4_1; see
 * lmgen/quant.py) with rows of x. Included by kernels.c.
 *
 * The activations are rounded to 16-bit integers with one scale per block of 32 (xs = max|x| /
 * 32767: a relative error of 1.5e-5 of the block's largest value, 250 times finer than the
 * weights' own 8-bit rounding and finer than bf16), so that each block's products are summed
 * exactly in integers — 32 of them in one AVX-512BW instruction (vpmaddwd), with the 4-bit
 * values unpacked from their nibbles in registers. Each block's integer sums are then scaled by
 * d · xs (plus m · Σx for Q4_1) into fp32 accumulators. As for the float formats, work comes in
 * tiles of 4 weight rows × 4 rows of x, and every dot product is summed in one order whatever
 * its tile, so a row of x gets bit for bit the same result alone or in a batch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BW__) || defined(__F16C__)
#include <immintrin.h>
#endif

enum { W_Q8_0 = 3, W_Q4_0 = 4, W_Q4_1 = 5 };
enum { QBLOCK = 32 };

static inline int block_bytes(int dtype) { return dtype == W_Q8_0 ? 34 : dtype == W_Q4_0 ? 18 : 20; }

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

/* Rows of x rounded to int16 per block: q (M, K), scale xs and xs·Σq (the block's sum) per block. */
typedef struct { int16_t* q; float* scale; float* sum; int64_t K; } QuantizedX;

static QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  int64_t blocks = K / QBLOCK;
  QuantizedX a = {malloc(sizeof(int16_t) * M * K), malloc(sizeof(float) * M * blocks),
                  malloc(sizeof(float) * M * blocks), K};
  for (int64_t b = 0; b < M * blocks; b++) {
    const float* v = x + b * QBLOCK;
    float top = 0.f;
    for (int i = 0; i < QBLOCK; i++) top = fmaxf(top, fabsf(v[i]));
    float xs = top / 32767.f, inv = top > 0.f ? 32767.f / top : 0.f;
    int32_t total = 0;
    for (int i = 0; i < QBLOCK; i++) {
      float r = fminf(fmaxf(roundf(v[i] * inv), -32767.f), 32767.f);
      a.q[b * QBLOCK + i] = (int16_t)r;
      total += (int32_t)r;
    }
    a.scale[b] = xs;
    a.sum[b] = xs * (float)total;
  }
  return a;
}

static void free_x(QuantizedX a) { free(a.q); free(a.scale); free(a.sum); }

#ifdef __AVX512BW__
/* A block's 32 weight values as int16, and its scale d (and minimum m). */
static inline __m512i block_values(int dtype, const uint8_t* blk, float* d, float* m) {
  *d = half_to_float(blk);
  if (dtype == W_Q8_0) return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(blk + 2)));
  const uint8_t* nib = blk + (dtype == W_Q4_1 ? 4 : 2);
  __m256i z = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)nib));
  __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(z, _mm256_set1_epi16(0x0f))),
                                 _mm256_srli_epi16(z, 4), 1);
  if (dtype == W_Q4_1) *m = half_to_float(blk + 2);
  return dtype == W_Q4_0 ? _mm512_sub_epi16(q, _mm512_set1_epi16(8)) : q;
}

/* Pairs of adjacent products summed into 16 int32 lanes (vpmaddwd: what VNNI's vpdpwssd does
 * with a zero accumulator, one instruction as well). */
static inline __m512i block_dot(__m512i w, const int16_t* x) { return _mm512_madd_epi16(w, _mm512_loadu_si512(x)); }

/* out[i][b] = weight row i · x row b, for R weight rows (row bytes apart) and B rows of x. */
#define QTILE(NAME, R, B)                                                                          \
  static void NAME(int dtype, const uint8_t* w, int64_t row_bytes, const QuantizedX* a, int64_t x0,  \
                   float out[][4]) {                                                               \
    int64_t blocks = a->K / QBLOCK, bb = block_bytes(dtype);                                       \
    __m512 acc[R][B];                                                                              \
    float macc[R][B];                                                                              \
    for (int i = 0; i < R; i++)                                                                    \
      for (int b = 0; b < B; b++) acc[i][b] = _mm512_setzero_ps(), macc[i][b] = 0.f;             \
    for (int64_t j = 0; j < blocks; j++) {                                                         \
      __m512i wv[R];                                                                               \
      float d[R], m[R];                                                                            \
      for (int i = 0; i < R; i++) wv[i] = block_values(dtype, w + i * row_bytes + j * bb, d + i, m + i); \
      for (int b = 0; b < B; b++) {                                                                \
        int64_t xb = (x0 + b) * blocks + j;                                                        \
        const int16_t* xq = a->q + xb * QBLOCK;                                                    \
        for (int i = 0; i < R; i++) {                                                              \
          __m512 s = _mm512_cvtepi32_ps(block_dot(wv[i], xq));                                     \
          acc[i][b] = _mm512_fmadd_ps(s, _mm512_set1_ps(d[i] * a->scale[xb]), acc[i][b]);          \
          if (dtype == W_Q4_1) macc[i][b] = fmaf(m[i], a->sum[xb], macc[i][b]);                    \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
    for (int i = 0; i < R; i++)                                                                    \
      for (int b = 0; b < B; b++) out[i][b] = _mm512_reduce_add_ps(acc[i][b]) + macc[i][b];       \
  }
#else
/* Without AVX-512: the same arithmetic one block at a time (the compiler vectorises the sums). */
#define QTILE(NAME, R, B)                                                                          \
  static void NAME(int dtype, const uint8_t* w, int64_t row_bytes, const QuantizedX* a, int64_t x0,  \
                   float out[][4]) {                                                               \
    int64_t blocks = a->K / QBLOCK, bb = block_bytes(dtype);                                       \
    for (int i = 0; i < R; i++)                                                                    \
      for (int b = 0; b < B; b++) {                                                                \
        float acc = 0.f, macc = 0.f;                                                               \
        for (int64_t j = 0; j < blocks; j++) {                                                     \
          const uint8_t* blk = w + i * row_bytes + j * bb;                                         \
          int64_t xb = (x0 + b) * blocks + j;                                                      \
          const int16_t* xq = a->q + xb * QBLOCK;                                                  \
          float d = half_to_float(blk);                                                            \
          int32_t s = 0;                                                                           \
          if (dtype == W_Q8_0)                                                                     \
            for (int k = 0; k < QBLOCK; k++) s += (int32_t)(int8_t)blk[2 + k] * xq[k];             \
          else {                                                                                   \
            const uint8_t* nib = blk + (dtype == W_Q4_1 ? 4 : 2);                                  \
            int off = dtype == W_Q4_0 ? 8 : 0;                                                     \
            for (int k = 0; k < 16; k++)                                                           \
              s += ((nib[k] & 15) - off) * xq[k] + ((nib[k] >> 4) - off) * xq[k + 16];            \
          }                                                                                        \
          acc = fmaf((float)s, d * a->scale[xb], acc);                                             \
          if (dtype == W_Q4_1) macc = fmaf(half_to_float(blk + 2), a->sum[xb], macc);             \
        }                                                                                          \
        out[i][b] = acc + macc;                                                                    \
      }                                                                                            \
  }
#endif

QTILE(qtile44, 4, 4)
QTILE(qtile14, 1, 4)
QTILE(qtile11, 1, 1)

/* out[i][b] = weight row r + i · row x0 + b of x, for nr ≤ 8 weight rows and nb ≤ 4 rows of x. */
static void block_tile(int dtype, const void* W, int64_t r, int nr, const QuantizedX* a, int64_t x0, int nb,
                       float out[8][4]) {
  int64_t row_bytes = a->K / QBLOCK * block_bytes(dtype);
  const uint8_t* w = (const uint8_t*)W + r * row_bytes;
  float one[4][4];
  int i = 0;
  if (nb < 4) {  /* a row or few of x (decoding one prompt) */
    for (; i < nr; i++)
      for (int b = 0; b < nb; b++) {
        qtile11(dtype, w + i * row_bytes, row_bytes, a, x0 + b, one);
        out[i][b] = one[0][0];
      }
    return;
  }
  for (; i + 4 <= nr; i += 4) qtile44(dtype, w + i * row_bytes, row_bytes, a, x0, out + i);
  for (; i < nr; i++) {
    qtile14(dtype, w + i * row_bytes, row_bytes, a, x0, one);
    for (int b = 0; b < 4; b++) out[i][b] = one[0][b];
  }
}
