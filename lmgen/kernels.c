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

/* ------------------------------------------------------------------------------------------------
 * One transformer block for one new token per sample, in place on the residual stream x (M, d).
 * The same arithmetic as lmgen/model.py's Block (fp32 activations), without PyTorch's per-op cost,
 * which for a 576-wide model is larger than the arithmetic itself.
 */
#include <math.h>
#include <stdlib.h>

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };
enum { NORM_RMS = 0, NORM_LAYER = 1 };
enum { MLP_SWIGLU = 0, MLP_GELU_TANH = 1, MLP_GELU = 2 };

static void project(int dtype, const void* W, const float* scale, const float* bias, const float* x, float* y,
                    int64_t N, int64_t K, int64_t M) {
  if (dtype == W_I8) gemv_i8((const int8_t*)W, scale, x, y, N, K, M);
  else if (dtype == W_BF16) gemv_bf16((const uint16_t*)W, x, y, N, K, M);
  else gemv_f32((const float*)W, x, y, N, K, M);
  if (bias)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
}

static void normalize(int kind, float eps, const float* w, const float* b, const float* x, float* out,
                      int64_t M, int64_t d) {
  for (int64_t m = 0; m < M; m++) {
    const float* xm = x + m * d;
    float* om = out + m * d;
    if (kind == NORM_RMS) {
      float ss = 0.f;
      for (int64_t i = 0; i < d; i++) ss += xm[i] * xm[i];
      float r = 1.f / sqrtf(ss / (float)d + eps);
      for (int64_t i = 0; i < d; i++) om[i] = w[i] * (xm[i] * r);
    } else {
      float mean = 0.f, var = 0.f;
      for (int64_t i = 0; i < d; i++) mean += xm[i];
      mean /= (float)d;
      for (int64_t i = 0; i < d; i++) var += (xm[i] - mean) * (xm[i] - mean);
      float r = 1.f / sqrtf(var / (float)d + eps);
      for (int64_t i = 0; i < d; i++) om[i] = (xm[i] - mean) * r * w[i] + (b ? b[i] : 0.f);
    }
  }
}

static void rope(float* v, const float* cos, const float* sin, int64_t hd) {
  int64_t half = hd / 2;
  for (int64_t i = 0; i < half; i++) {
    float a = v[i], b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

void decode_block(
    float* x, int64_t M, int64_t d, int norm_kind, float eps,
    const float* n1w, const float* n1b, const float* n2w, const float* n2b, int wdtype,
    const void* qkv_w, const float* qkv_s, const float* qkv_b,
    const void* o_w, const float* o_s, const float* o_b,
    const void* in_w, const float* in_s, const float* in_b,
    const void* down_w, const float* down_s, const float* down_b,
    int64_t n_heads, int64_t n_kv, int64_t hd, int64_t d_mlp, int mlp_kind,
    float* k_cache, float* v_cache, int64_t batch_stride, int64_t head_stride, int64_t pos,
    const float* cos, const float* sin, int64_t window) {
  int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, qkv_dim = q_dim + 2 * kv_dim;
  int64_t in_dim = mlp_kind == MLP_SWIGLU ? 2 * d_mlp : d_mlp;
  int64_t first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0, n_keys = pos + 1 - first;
  float* h = malloc(sizeof(float) * M * d);
  float* qkv = malloc(sizeof(float) * M * qkv_dim);
  float* att = malloc(sizeof(float) * M * q_dim);
  float* mid = malloc(sizeof(float) * M * in_dim);
  float* out = malloc(sizeof(float) * M * d);
  float* scores = malloc(sizeof(float) * M * n_heads * n_keys);

  normalize(norm_kind, eps, n1w, n1b, x, h, M, d);
  project(wdtype, qkv_w, qkv_s, qkv_b, h, qkv, qkv_dim, d, M);
  for (int64_t m = 0; m < M; m++) {  /* rotary positions, then append k and v to the cache */
    float* q = qkv + m * qkv_dim;
    for (int64_t j = 0; j < n_heads + n_kv; j++)
      if (cos) rope(q + j * hd, cos, sin, hd);
    for (int64_t g = 0; g < n_kv; g++) {
      memcpy(k_cache + m * batch_stride + g * head_stride + pos * hd, q + q_dim + g * hd, sizeof(float) * hd);
      memcpy(v_cache + m * batch_stride + g * head_stride + pos * hd, q + q_dim + kv_dim + g * hd, sizeof(float) * hd);
    }
  }
  float scale = 1.f / sqrtf((float)hd);
  #pragma omp parallel for collapse(2) schedule(static)
  for (int64_t m = 0; m < M; m++)
    for (int64_t head = 0; head < n_heads; head++) {
      int64_t g = head / (n_heads / n_kv);
      const float* q = qkv + m * qkv_dim + head * hd;
      const float* keys = k_cache + m * batch_stride + g * head_stride;
      const float* vals = v_cache + m * batch_stride + g * head_stride;
      float* s = scores + (m * n_heads + head) * n_keys;
      float top = -INFINITY, total = 0.f;
      for (int64_t j = 0; j < n_keys; j++) {
        const float* kj = keys + (first + j) * hd;
        float dot = 0.f;
        for (int64_t i = 0; i < hd; i++) dot += q[i] * kj[i];
        s[j] = dot * scale;
        if (s[j] > top) top = s[j];
      }
      for (int64_t j = 0; j < n_keys; j++) { s[j] = expf(s[j] - top); total += s[j]; }
      float* o = att + m * q_dim + head * hd;
      for (int64_t i = 0; i < hd; i++) o[i] = 0.f;
      for (int64_t j = 0; j < n_keys; j++) {
        const float* vj = vals + (first + j) * hd;
        float p = s[j] / total;
        for (int64_t i = 0; i < hd; i++) o[i] += p * vj[i];
      }
    }
  project(wdtype, o_w, o_s, o_b, att, out, d, q_dim, M);
  for (int64_t i = 0; i < M * d; i++) x[i] += out[i];

  normalize(norm_kind, eps, n2w, n2b, x, h, M, d);
  project(wdtype, in_w, in_s, in_b, h, mid, in_dim, d, M);
  for (int64_t m = 0; m < M; m++) {
    float* r = mid + m * in_dim;
    for (int64_t i = 0; i < d_mlp; i++) {
      float a = r[i];
      if (mlp_kind == MLP_SWIGLU) r[i] = a / (1.f + expf(-a)) * r[d_mlp + i];
      else if (mlp_kind == MLP_GELU_TANH) r[i] = 0.5f * a * (1.f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)));
      else r[i] = 0.5f * a * (1.f + erff(a * 0.7071067811865476f));
    }
    if (mlp_kind == MLP_SWIGLU && M > 1) memmove(mid + m * d_mlp, r, sizeof(float) * d_mlp);
  }
  project(wdtype, down_w, down_s, down_b, mid, out, d, d_mlp, M);
  for (int64_t i = 0; i < M * d; i++) x[i] += out[i];
  free(h); free(qkv); free(att); free(mid); free(out); free(scores);
}
