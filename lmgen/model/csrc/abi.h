/* What Python mirrors with ctypes (lmgen/model/kernels_abi.py): the structs decode_layers reads,
 * the codes in them, and the version of it all. lmgen_abi (kernels.c) reports them, and Python
 * refuses a library whose report differs from its own (one built from other sources).
 */
#pragma once
#include <stdint.h>

#include "common.h"  /* the weight formats (Weights.format) */

/* One more whenever a struct or a code here, a weight format or an exported function's signature
 * changes (and kernels_abi.py's ABI_VERSION with it). */
enum { LMGEN_ABI_VERSION = 1 };

enum { NORM_RMS = 0, NORM_LAYER = 1 };
enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_GELU = 2 };
enum { QK_NONE = 0, QK_HEAD = 1, QK_PROJECTION = 2 };

enum { KV_F32 = 0, KV_BF16 = 1, KV_Q8 = 2 };

/* The model's shape and its family's choices, as lmgen/config/model_config.py's ModelConfig has
 * them (kernels_abi.py's Shape.of). */
typedef struct {
  int64_t d, n_heads, n_kv, hd, d_mlp, rope_dim, n_layers;
  int norm_kind, qk_norm, gated, activation;
  float eps, norm_offset, attn_scale, attn_softcap;
  int kv_kind;  /* what the KV cache holds: KV_F32, KV_BF16 (rounded to nearest even, as torch rounds), KV_Q8 */
  int kv_block;  /* KV_Q8: values per scale (32, or hd where hd is not a multiple of 32) */
} Shape;

/* A projection's weight and its bias, and the weight's format (W_F32...). */
typedef struct { const void* w; const float* bias; int64_t format; } Weights;

/* One layer, as lmgen/model/kernels_abi.py's Layer describes it: the norms' weights and biases
 * (NULL where the family has none: pre-norms for OLMo 2, post-norms but for Gemma and OLMo 2, q/k
 * norms but for Qwen3, Gemma 3 and OLMo 2), each projection (NULL parts: biases mostly, gate
 * unless gated), its sliding window (0: none) and its rotary table (-1: none, else an index
 * into the cos and sin tables of the step). */
typedef struct {
  const float *attn_norm_w, *attn_norm_b, *attn_post_w, *mlp_norm_w, *mlp_norm_b, *mlp_post_w, *q_norm_w, *k_norm_w;
  Weights q, k, v, o, gate, up, down;
  int64_t window;
  int64_t rope;
} Layer;
