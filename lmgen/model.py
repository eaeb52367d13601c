"""A compact decoder-only transformer: embedding → blocks → LM head.

One ``Decoder`` covers GPT-2 (LayerNorm, learned positions, GELU) and the
Llama family (RMSNorm, RoPE, SwiGLU, grouped-query attention, optional q/k/v
bias, optional sliding window). It knows nothing of file formats: the loader in
``checkpoint.py`` hands it tensors under its own parameter names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmgen import kernels
from lmgen.config import ModelConfig
from lmgen.linear import Linear
from lmgen.resources import require_memory


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))  # from the checkpoint; torch.ones costs 0.1 s on meta

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused kernel; the same arithmetic as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()  # half precision: normalise in fp32, round, then scale, as transformers does
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return RMSNorm(cfg.d_model, cfg.norm_eps)


class KVCache:
    """Preallocated keys and values for every layer, sliced to the filled length.

    ``plan`` is the model's native decode step (``kernels.DecodePlan``) when it has one:
    made with the cache, it serves the one generation the cache is for.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 plan: "kernels.DecodePlan | None" = None):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        if torch.device(device).type == "cpu":
            require_memory(2 * math.prod(shape) * dtype.itemsize, f"a KV cache for {batch} × {max_len} tokens")
        self.k = torch.empty(shape, dtype=dtype, device=device)  # only the filled part is ever read
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.plan = plan

    def row(self, i: int) -> "KVCache":
        """A batch-1 view of sample i's slots (writes go to this cache)."""
        view = object.__new__(KVCache)
        view.k, view.v, view.max_len, view.plan = self.k[:, i : i + 1], self.v[:, i : i + 1], self.max_len, self.plan
        return view

    def copy_row_to_all(self, i: int, length: int) -> None:
        """Share sample i's first ``length`` positions (a prefilled prompt) with every sample."""
        if self.k.shape[1] > 1:
            self.k[:, :, :, :length] = self.k[:, i : i + 1, :, :length].clone()
            self.v[:, :, :, :length] = self.v[:, i : i + 1, :, :length].clone()

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def rope_tables(cfg: ModelConfig, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of shape (seq, head_dim), computed in fp32 as transformers does."""
    half = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=positions.device).float()
    inv_freq = 1.0 / (cfg.rope_theta ** (half / cfg.head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.q = Linear(cfg.d_model, cfg.q_dim, bias=cfg.qkv_bias)
        self.k = Linear(cfg.d_model, cfg.kv_dim, bias=cfg.qkv_bias)
        self.v = Linear(cfg.d_model, cfg.kv_dim, bias=cfg.qkv_bias)
        self.o = Linear(cfg.q_dim, cfg.d_model, bias=cfg.o_bias)

    def forward(self, x: Tensor, ctx: "StepContext", layer: int) -> Tensor:
        cfg = self.cfg
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, seq, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, seq, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if ctx.rope is not None:
            q, k = apply_rope(q, *ctx.rope), apply_rope(k, *ctx.rope)
        if ctx.cache is not None:
            k, v = ctx.cache.update(layer, ctx.start_pos, k, v)
        if seq == 1 and ctx.mask is None:
            y = single_query_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=ctx.mask, is_causal=ctx.causal, enable_gqa=cfg.n_kv_heads != cfg.n_heads
            )
        return self.o(y.transpose(1, 2).reshape(batch, seq, cfg.q_dim))


def single_query_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of one new query per head over the whole cache (the decode step).

    Two batched matmuls with the query heads of each key/value group side by side:
    several times faster on CPU than the fused kernel for this shape, and no copy
    of the grouped keys and values.
    """
    batch, n_heads, _, head_dim = q.shape
    n_kv = k.shape[1]
    grouped = q.view(batch, n_kv, n_heads // n_kv, head_dim)
    scores = torch.matmul(grouped, k.transpose(-1, -2)) * head_dim**-0.5
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    return torch.matmul(probs, v).view(batch, n_heads, 1, head_dim)


class MLP(nn.Module):
    """GELU MLP (``up`` → GELU → ``down``) or SwiGLU (silu(``gate``)·``up`` → ``down``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.gate = Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias) if cfg.mlp == "swiglu" else None
        self.up = Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.down = Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, ctx: "StepContext", layer: int) -> Tensor:
        x = x + self.attn(self.attn_norm(x), ctx, layer)
        return x + self.mlp(self.mlp_norm(x))


class LMHead(nn.Module):
    """Final norm, then a bias-free Linear(d_model → vocab) giving next-token logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg)
        self.linear = Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(x))


class StepContext:
    """What every layer needs to know about the current forward pass."""

    def __init__(self, cfg: ModelConfig, start_pos: int, seq: int, cache: KVCache | None, device, dtype):
        self.start_pos = start_pos
        self.cache = cache
        positions = torch.arange(start_pos, start_pos + seq, device=device)
        self.positions = positions
        self.rope = rope_tables(cfg, positions, dtype) if cfg.positions == "rope" else None
        self.mask, self.causal = attention_mask(cfg, start_pos, seq, device)


def attention_mask(cfg: ModelConfig, start_pos: int, seq: int, device) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for queries at start_pos.. attending keys 0..start_pos+seq-1."""
    total = start_pos + seq
    window = cfg.sliding_window
    windowed = window is not None and total > window
    if seq == 1 and not windowed:
        return None, False
    if start_pos == 0 and not windowed:
        return None, True
    q_pos = torch.arange(start_pos, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if windowed:
        allowed &= q_pos - k_pos < window
    return allowed, False


class Decoder(nn.Module):
    """The whole model. Its parameters start uninitialised: ``checkpoint.load_model`` fills them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Embedding weights are left uninitialised (they come from a checkpoint): nn.Embedding's
        # own random init on the meta device costs over a second the first time.
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, _weight=torch.empty(cfg.vocab_size, cfg.d_model))
        self.pos_embed = (
            nn.Embedding(cfg.max_context, cfg.d_model, _weight=torch.empty(cfg.max_context, cfg.d_model))
            if cfg.positions == "learned"
            else None
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.head = LMHead(cfg)
        self.tie_weights()

    def tie_weights(self) -> None:
        """With tied embeddings the head's weight *is* the embedding Parameter."""
        if self.cfg.tied_embeddings:
            self.head.linear.weight = self.embed.weight

    @property
    def device(self) -> torch.device:
        return self.head.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (with int8 weights the norms, and so activations, stay fp32)."""
        return self.head.norm.weight.dtype

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every block and the LM head (a tied head is
        the embedding matrix); of the embeddings themselves only one row each is read."""
        seen, total = set(), 0
        for module in (*self.blocks, self.head):
            for t in (*module.parameters(), *module.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
        return total

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        max_len = min(max_len, self.cfg.max_context)
        return KVCache(self.cfg, batch, max_len, self.dtype, self.device, kernels.decode_plan(self))

    def forward(
        self, tokens: Tensor, start_pos: int = 0, cache: KVCache | None = None, last_only: bool = False
    ) -> Tensor:
        """Logits (batch, seq, vocab) for token ids (batch, seq) placed at start_pos.

        With ``last_only`` the head runs on the final position alone (seq = 1),
        which is all that generation needs.
        """
        seq = tokens.shape[1]
        if start_pos + seq > self.cfg.max_context:
            raise ValueError(f"positions up to {start_pos + seq} exceed the context window ({self.cfg.max_context})")
        x = self.embed(tokens).to(self.dtype)
        ctx = StepContext(self.cfg, start_pos, seq, cache, x.device, x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(ctx.positions)
        if seq == 1 and cache is not None and cache.plan is not None:
            with cache.plan.timed_step():  # the decode step: every block in one native call, then the head
                x = x.contiguous()
                cache.plan.run(x, cache, start_pos, ctx.rope)
                return self.head(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, ctx, layer)
        if last_only:
            x = x[:, -1:]
        return self.head(x)
