/* Decode attention's arithmetic: q · k for each key, in one fixed order (so that a row gets the
 * same bits alone or in any batch), and the softmax-weighted sum of the values. Included by
 * kernels.c, whose decode_block runs them per row and head.
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* a · b over n values, summed in 16 interleaved partial sums, then pairwise: one fixed order,
 * which the compiler vectorises (a plain running sum it must keep scalar; adding the 16 partials
 * one after another was a chain of 16 dependent adds per key, most of attention's time). */
static inline float dot16(const float* a, const float* b, int64_t n) {
  float part[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) part[j] += a[i + j] * b[i + j];
  for (; i < n; i++) part[i % 16] += a[i] * b[i];
  for (int w = 8; w > 0; w /= 2)  /* the partial sums added pairwise: 4 dependent adds, not 16 */
    for (int j = 0; j < w; j++) part[j] += part[j + w];
  return part[0];
}

#ifdef __AVX512F__
/* Sixteen vectors' pairs of 128-bit lanes, or of floats within them, added: a level of dot16's
 * pairwise sums for two keys at once. */
#define PAIR_LANES(a, b, lo, hi) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, lo), _mm512_shuffle_f32x4(a, b, hi))
#define PAIR_FLOATS(a, b, lo, hi) _mm512_add_ps(_mm512_shuffle_ps(a, b, lo), _mm512_shuffle_ps(a, b, hi))

/* dot16(q, k_t, hd) for 16 keys k_t (rows of hd values, hd a multiple of 16): the same products
 * and the same pairwise sums, so the same bits, but the 16 keys' sums are added together by
 * lane shuffles (4 levels of 8, 4, 2, 1 vector additions) instead of one key at a time. */
static void dot16_keys(const float* q, const float* k, int64_t hd, float* out) {
  __m512 p[16];
  for (int t = 0; t < 16; t++) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < hd; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + t * hd + i), acc);
    p[t] = acc;
  }
  for (int t = 0; t < 8; t++)  /* part[j] + part[j + 8]: keys 2t, 2t + 1 in the halves of p[t] */
    p[t] = PAIR_LANES(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2));
  for (int t = 0; t < 4; t++)  /* + part[j + 4]: keys 4t..4t+3, one per 128-bit lane */
    p[t] = PAIR_LANES(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1));
  for (int t = 0; t < 2; t++)  /* + part[j + 2]: lane l holds keys 8t + l and 8t + 4 + l */
    p[t] = PAIR_FLOATS(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2));
  /* + part[j + 1]: float 4l + m holds key l + 4m */
  __m512 sums = PAIR_FLOATS(p[0], p[1], _MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, sums));
}
#undef PAIR_LANES
#undef PAIR_FLOATS
#endif

/* sc[j] = q · key j for n keys (rows of hd values): 16 at a time where the CPU has AVX-512. */
static void key_scores(const float* q, const float* keys, int64_t n, int64_t hd, float* sc) {
  int64_t j = 0;
#ifdef __AVX512F__
  if (hd % 16 == 0)
    for (; j + 16 <= n; j += 16) dot16_keys(q, keys + j * hd, hd, sc + j);
#endif
  for (; j < n; j++) sc[j] = dot16(q, keys + j * hd, hd);
}

/* o += Σ_j p[j] · v[j] over n rows v of hd values, each o[i] summed over j in order (so o summed
 * page by page gets the bits of one pass). For the usual head sizes o stays in registers
 * through the loop (in memory, every key cost a store and a reload of o); the sums are the
 * same either way. */
#define WEIGH(HD)                                                                   \
  static void weigh##HD(const float* p, const float* v, int64_t n, float* o) {      \
    float acc[HD];                                                                  \
    memcpy(acc, o, sizeof acc);                                                     \
    for (int64_t j = 0; j < n; j++)                                                 \
      for (int i = 0; i < HD; i++) acc[i] += p[j] * v[j * HD + i];                  \
    memcpy(o, acc, sizeof acc);                                                     \
  }
WEIGH(64)
WEIGH(128)

static void weigh_values(const float* p, const float* v, int64_t n, int64_t hd, float* o) {
  if (hd == 64) return weigh64(p, v, n, o);
  if (hd == 128) return weigh128(p, v, n, o);
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < hd; i++) o[i] += p[j] * v[j * hd + i];
}

