/* Matrix-vector products for the decode step, where reading the weights is most of the work.
 *
 * y[m, r] = sum_k W[r, k] * x[m, k] for a few rows m (one per sample or prompt), with W stored
 * as PyTorch stores a Linear weight: (out_features, in_features), row-major. Output rows are
 * split across threads with OpenMP in groups of eight, x stays in L1, and the dot products come
 * in tiles (dot.h) summed in one order whatever the number of rows m.
 * W is fp32, bf16 (upper half of an fp32), or blocks of llama.cpp's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1
 * or K-quants in lmgen.model.quant's packed layout (16 rows interleaved); x and y are always fp32.
 * Built with the package once per instruction set level (setup.py, from the levels of
 * lmgen/model/build_table.py), or for this CPU by lmgen/model/kernels_loader.py.
 *
 * The headers: common.h (what all share), dot.h, quant.h, kquant.h, amx.h (the tiles of each
 * weight format), project.h (products shared among threads), attention.h, and abi.h (what Python
 * mirrors). Each is portable C with its x86 paths in x86/, chosen by the build's flags.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "project.h"  /* products shared among the threads (float and block tiles); the thread count */
#include "attention.h"  /* decode attention's q·k and weighted values */
#include "abi.h"  /* Shape, Weights, Layer: what Python mirrors */

/* Block-quantized rows (rows, n_blocks * block_bytes: llama.cpp's blocks, each `head` bytes of
 * fp16 scale (and minimum) then its quants) into the kernels' packed layout, as lmgen.model.quant.pack
 * does in PyTorch (and a test checks byte for byte): groups of 16 rows; per block of a group the
 * 16 rows' quants interleaved 4 bytes at a time (Q8_0's plus 128: `flip`), then each 2-byte header
 * field of the 16 rows; missing rows of the last group are zero. A GGUF file's tensors are packed
 * at load in a few milliseconds instead of a second of tensor reshuffling. */
void pack_blocks(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t n_blocks, int block_bytes, int head,
                 int flip) {
  const int64_t groups = (rows + 15) / 16, width = n_blocks * block_bytes;
  const int chunks = (block_bytes - head) / 4;
  const uint8_t mask = flip ? 0x80 : 0;
  #pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t g = 0; g < groups; g++) {
    for (int64_t b = 0; b < n_blocks; b++) {
      uint8_t* out = dst + (g * n_blocks + b) * 16 * block_bytes;
      for (int r = 0; r < 16; r++) {
        const int64_t row = g * 16 + r;
        const uint8_t* in = row < rows ? src + row * width + b * block_bytes : NULL;
        for (int c = 0; c < chunks; c++)
          for (int k = 0; k < 4; k++) out[(c * 16 + r) * 4 + k] = (in ? in[head + c * 4 + k] : 0) ^ mask;
        for (int f = 0; f < head / 2; f++)
          for (int k = 0; k < 2; k++) out[chunks * 64 + (f * 16 + r) * 2 + k] = in ? in[f * 2 + k] : 0;
      }
    }
  }
}

/* What this library was built with, for Python to compare with its mirrors before using it
 * (kernels_abi.py, in this order): the ABI version; the sizes of Shape, Weights and Layer; the
 * weight formats' codes; then the KV kinds', norms', activations' and q/k norms'. Writes up to n
 * of them to out and returns how many there are. */
int lmgen_abi(int64_t* out, int n) {
  const int64_t abi[] = {
      LMGEN_ABI_VERSION, sizeof(Shape), sizeof(Weights), sizeof(Layer),
      W_F32, W_BF16, W_Q8_0, W_Q4_0, W_Q4_1, W_Q5_0, W_Q5_1, W_Q4_K, W_Q5_K, W_Q6_K,
      KV_F32, KV_BF16, KV_Q8, NORM_RMS, NORM_LAYER, ACT_SILU, ACT_GELU_TANH, ACT_GELU, QK_NONE, QK_HEAD, QK_PROJECTION,
  };
  int count = (int)(sizeof abi / sizeof abi[0]);
  for (int i = 0; i < n && i < count; i++) out[i] = abi[i];
  return count;
}

/* ------------------------------------------------------------------------------------------------
 * One transformer block for one new token per sample, in place on the residual stream x (M, d).
 * The same arithmetic as lmgen/model/decoder.py's Block (fp32 activations), without PyTorch's
 * per-op cost, which for a 576-wide model is larger than the arithmetic itself.
 */

/* fp32 → bf16 as torch converts (round to nearest, ties to even; NaN stays a quiet NaN). */
static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}


/* Half of a layer's KV cache (its keys, or its values): the elements, and for KV_Q8 one fp32
 * scale per block of kv_block values of a head (element e's is scale[e / kv_block]). */
typedef struct { void* data; float* scale; } KVHalf;

static inline size_t kv_element(int kind) { return kind == KV_F32 ? 4 : kind == KV_BF16 ? 2 : 1; }

/* n values (whole heads) of a cache half from element `at`, as fp32 for the attention loops: as
 * stored, or widened (bf16: exactly; q8: q · scale, as kv_cache.py's PyTorch reads them). */
static const float* kv_floats(const Shape* s, KVHalf c, int64_t at, int64_t n, float* widened) {
  if (s->kv_kind == KV_F32) return (const float*)c.data + at;
  if (s->kv_kind == KV_Q8) {
    const int8_t* q = (const int8_t*)c.data + at;
    for (int64_t i = 0; i < n; i++) widened[i] = (float)q[i] * c.scale[(at + i) / s->kv_block];
    return widened;
  }
  const uint16_t* b = (const uint16_t*)c.data + at;
  for (int64_t i = 0; i < n; i++) {
    uint32_t u = (uint32_t)b[i] << 16;
    memcpy(widened + i, &u, 4);
  }
  return widened;
}

/* Store one head's hd fp32 values at element `at` of a cache half: as they are, rounded to
 * bf16, or as int8 per block of kv_block values with scale max|v| / 127 (q = v / scale rounded
 * to nearest even; all 0 for a block of zeros), as kv_cache.py's quantize_q8. */
static void kv_store(const Shape* s, KVHalf c, int64_t at, const float* v) {
  int64_t n = s->hd;
  if (s->kv_kind == KV_F32) { memcpy((float*)c.data + at, v, sizeof(float) * n); return; }
  if (s->kv_kind == KV_Q8) {
    for (int64_t b = 0; b < n; b += s->kv_block) {
      float top = 0.f;
      for (int64_t i = b; i < b + s->kv_block; i++) top = fmaxf(top, fabsf(v[i]));
      float scale = top / 127.f;
      int8_t* q = (int8_t*)c.data + at;
      for (int64_t i = b; i < b + s->kv_block; i++) q[i] = scale > 0.f ? (int8_t)rintf(v[i] / scale) : 0;
      c.scale[(at + b) / s->kv_block] = scale;
    }
    return;
  }
  uint16_t* b = (uint16_t*)c.data + at;
  for (int64_t i = 0; i < n; i++) b[i] = to_bf16(v[i]);
}

/* out = norm(x) per row of d values: RMSNorm scaled by (offset + w), or LayerNorm. In place is fine. */
static void normalize(int kind, float eps, float offset, const float* w, const float* b, const float* x,
                      float* out, int64_t M, int64_t d) {
  for (int64_t m = 0; m < M; m++) {
    const float* xm = x + m * d;
    float* om = out + m * d;
    if (kind == NORM_RMS) {
      float ss = 0.f;
      for (int64_t i = 0; i < d; i++) ss += xm[i] * xm[i];
      float r = 1.f / sqrtf(ss / (float)d + eps);
      for (int64_t i = 0; i < d; i++) om[i] = (offset + w[i]) * (xm[i] * r);
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

/* Rotate the first n dims of one head (cos and sin hold n values); the rest pass unchanged. */
static void rope(float* v, const float* cos, const float* sin, int64_t n) {
  int64_t half = n / 2;
  for (int64_t i = 0; i < half; i++) {
    float a = v[i], b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

static inline float activate(int kind, float a) {
  if (kind == ACT_SILU) return a / (1.f + expf(-a));
  if (kind == ACT_GELU_TANH) return 0.5f * a * (1.f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)));
  return 0.5f * a * (1.f + erff(a * 0.7071067811865476f));
}


/* h = pre-norm of x, or x itself where the family has none. */
static void pre_norm(const Shape* s, const float* w, const float* b, const float* x, float* h, int64_t M) {
  if (w) normalize(s->norm_kind, s->eps, s->norm_offset, w, b, x, h, M, s->d);
  else memcpy(h, x, sizeof(float) * M * s->d);
}

/* x += post-norm of out (or out itself). */
static void add_residual(const Shape* s, const float* w, float* out, float* x, int64_t M) {
  if (w) normalize(NORM_RMS, s->eps, s->norm_offset, w, NULL, out, out, M, s->d);
  for (int64_t i = 0; i < M * s->d; i++) x[i] += out[i];
}

static void qk_norm(const Shape* s, const float* w, float* v, int64_t M, int64_t heads) {
  if (s->qk_norm == QK_HEAD) normalize(NORM_RMS, s->eps, s->norm_offset, w, NULL, v, v, M * heads, s->hd);
  else if (s->qk_norm == QK_PROJECTION) normalize(NORM_RMS, s->eps, s->norm_offset, w, NULL, v, v, M, heads * s->hd);
}

/* Where each of the M rows decodes: its row of the KV cache and its position there (rows of a
 * batch may be at different positions, as prompts of different lengths are). A cache row's
 * positions live in pages of `page` positions: row r's page i is page table[r * table_stride + i]
 * of the pool, page_stride elements apart, its heads head_stride apart (see kv_cache.py). */
typedef struct {
  const int64_t *cache_row, *pos, *table;
  int64_t max_pos, table_stride, page, page_stride, head_stride;
} Rows;

/* Element of a layer's cache where row m's position p of head g starts. */
static inline int64_t kv_at(const Rows* r, int64_t m, int64_t p, int64_t g) {
  return r->table[r->cache_row[m] * r->table_stride + p / r->page] * r->page_stride + g * r->head_stride +
         p % r->page * (r->head_stride / r->page);
}

/* Floats of scratch one block needs for M rows (decode_layers allocates them once per step). */
static int64_t scratch_floats(const Shape* s, int64_t M, int64_t max_keys) {
  int64_t q_dim = s->n_heads * s->hd, kv_dim = s->n_kv * s->hd;
  return M * (2 * s->d + 2 * q_dim + 2 * kv_dim + 2 * s->d_mlp + s->n_heads * max_keys);
}

static void decode_block(const Shape* s, float* x, int64_t M, const Layer* t, const Rows* rows, float* scratch,
                         KVHalf k_cache, KVHalf v_cache, const float* cos, const float* sin) {
  int64_t window = t->window;
  int64_t d = s->d, n_heads = s->n_heads, n_kv = s->n_kv, hd = s->hd, d_mlp = s->d_mlp;
  int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, max_keys = rows->max_pos + 1;
  float *h = scratch, *q = h + M * d, *k = q + M * q_dim, *v = k + M * kv_dim, *att = v + M * kv_dim;
  float *gate = att + M * q_dim, *up = gate + M * d_mlp, *out = up + M * d_mlp, *scores = out + M * d;
#define PROJ(p, y, n) ((Projection){(int)t->p.format, t->p.w, t->p.bias, (y), (n)})

  pre_norm(s, t->attn_norm_w, t->attn_norm_b, x, h, M);
  Projection qkv[3] = {PROJ(q, q, q_dim), PROJ(k, k, kv_dim), PROJ(v, v, kv_dim)};
  project(qkv, 3, h, d, M);
  qk_norm(s, t->q_norm_w, q, M, n_heads);
  qk_norm(s, t->k_norm_w, k, M, n_kv);
  for (int64_t m = 0; m < M; m++) {  /* rotary positions, then append k and v to the cache */
    if (cos) {
      const float *c = cos + m * s->rope_dim, *sn = sin + m * s->rope_dim;
      for (int64_t j = 0; j < n_heads; j++) rope(q + m * q_dim + j * hd, c, sn, s->rope_dim);
      for (int64_t j = 0; j < n_kv; j++) rope(k + m * kv_dim + j * hd, c, sn, s->rope_dim);
    }
    for (int64_t g = 0; g < n_kv; g++) {
      kv_store(s, k_cache, kv_at(rows, m, rows->pos[m], g), k + m * kv_dim + g * hd);
      kv_store(s, v_cache, kv_at(rows, m, rows->pos[m], g), v + m * kv_dim + g * hd);
    }
  }
  float scale = s->attn_scale, cap = s->attn_softcap;
  #pragma omp parallel for collapse(2) schedule(static) num_threads(n_threads)
  for (int64_t m = 0; m < M; m++)
    for (int64_t head = 0; head < n_heads; head++) {
      int64_t g = head / (n_heads / n_kv), pos = rows->pos[m];
      int64_t first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0, n_keys = pos + 1 - first;
      const float* qh = q + m * q_dim + head * hd;
      float* widened = s->kv_kind != KV_F32 ? arena(ARENA_KV, sizeof(float) * rows->page * hd) : NULL;  /* this thread's */
      float* sc = scores + (m * n_heads + head) * max_keys;
      float top = -INFINITY, total = 0.f, *o = att + m * q_dim + head * hd;
      for (int64_t p = first, n; p <= pos; p += n) {  /* a page's keys at a time */
        n = (p / rows->page + 1) * rows->page < pos + 1 ? (p / rows->page + 1) * rows->page - p : pos + 1 - p;
        key_scores(qh, kv_floats(s, k_cache, kv_at(rows, m, p, g), n * hd, widened), n, hd, sc + p - first);
      }
      for (int64_t j = 0; j < n_keys; j++) {
        sc[j] *= scale;
        if (cap > 0.f) sc[j] = tanhf(sc[j] / cap) * cap;
        if (sc[j] > top) top = sc[j];
      }
      for (int64_t j = 0; j < n_keys; j++) { sc[j] = expf(sc[j] - top); total += sc[j]; }
      for (int64_t j = 0; j < n_keys; j++) sc[j] /= total;
      memset(o, 0, sizeof(float) * hd);
      for (int64_t p = first, n; p <= pos; p += n) {  /* o summed over the keys in order, page by page */
        n = (p / rows->page + 1) * rows->page < pos + 1 ? (p / rows->page + 1) * rows->page - p : pos + 1 - p;
        weigh_values(sc + p - first, kv_floats(s, v_cache, kv_at(rows, m, p, g), n * hd, widened), n, hd, o);
      }
    }
  Projection o_proj = PROJ(o, out, d);
  project(&o_proj, 1, att, q_dim, M);
  add_residual(s, t->attn_post_w, out, x, M);

  pre_norm(s, t->mlp_norm_w, t->mlp_norm_b, x, h, M);
  Projection mlp_in[2] = {PROJ(up, up, d_mlp), PROJ(gate, gate, d_mlp)};
  project(mlp_in, s->gated ? 2 : 1, h, d, M);
  #pragma omp parallel for schedule(static) num_threads(n_threads)  /* expf: the other thread would wait */
  for (int64_t i = 0; i < M * d_mlp; i++)
    up[i] = s->gated ? activate(s->activation, gate[i]) * up[i] : activate(s->activation, up[i]);
  Projection down = PROJ(down, out, d);
  project(&down, 1, up, d_mlp, M);
  add_residual(s, t->mlp_post_w, out, x, M);
#undef PROJ
}

/* Every block of the model for one new token per row, in place on x (M, d). The KV cache
 * holds all layers in pages (Rows): layer l's start at k_cache + l * layer_stride. cos and sin
 * hold the step's rotary tables (M rows each), which each layer picks by its rope index. */
void decode_layers(const Shape* s, float* x, int64_t M, const Layer* layers, const float* const* cos,
                   const float* const* sin, void* k_cache, void* v_cache, float* k_scale, float* v_scale,
                   int64_t layer_stride,
                   int64_t page_stride, int64_t head_stride, int64_t page, const int64_t* table,
                   int64_t table_stride, const int64_t* cache_row, const int64_t* pos) {
  Rows rows = {cache_row, pos, table, 0, table_stride, page, page_stride, head_stride};
  for (int64_t m = 0; m < M; m++) if (pos[m] > rows.max_pos) rows.max_pos = pos[m];
  float* scratch = arena(ARENA_SCRATCH, sizeof(float) * scratch_floats(s, M, rows.max_pos + 1));
  for (int64_t l = 0; l < s->n_layers; l++) {
    int64_t r = layers[l].rope;
    size_t element = kv_element(s->kv_kind);
    int64_t scales = s->kv_kind == KV_Q8 ? l * layer_stride / s->kv_block : 0;  /* the layer's first scale */
    KVHalf k = {(char*)k_cache + l * layer_stride * element, k_scale ? k_scale + scales : NULL};
    KVHalf v = {(char*)v_cache + l * layer_stride * element, v_scale ? v_scale + scales : NULL};
    decode_block(s, x, M, layers + l, &rows, scratch, k, v, r < 0 ? NULL : cos[r], r < 0 ? NULL : sin[r]);
  }
}
