"""A compact decoder-only transformer: embedding → blocks → LM head.

One ``Decoder`` covers GPT-2 (LayerNorm, learned positions, GELU) and the
Llama-like families (RMSNorm, rotary positions, gated MLP, grouped-query
attention), with each family's differences read from its config: where the
norms sit (pre, sandwich, post) and whether they scale by 1 + weight, the
activation, q/k norms, the embedding scale, soft-caps, and each layer's window
and rotary table. It knows nothing of file formats: the loader in
``checkpoint.py`` hands it tensors under its own parameter names.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmgen.config.layout import tied_aliases
from lmgen.config.model_config import ModelConfig
from lmgen.config.rope import rope_rows
from lmgen.errors import EnvironmentFailure
from lmgen.model import decode_plan
from lmgen.model.attention import Attention, soft_cap
from lmgen.model.kv_cache import PAGE, KVCache, RaggedStep, StepContext
from lmgen.model.linear import Linear


class RMSNorm(nn.Module):
    """x / rms(x) · (offset + weight): Gemma's norms have offset 1, the others 0."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.empty(dim))  # from the checkpoint; torch.ones costs 0.1 s on meta

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and not self.offset:  # one fused kernel; the same arithmetic as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:  # Gemma scales in fp32, then rounds
            return (x32 * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * x32.to(x.dtype)  # Llama rounds, then scales (in half precision)


def norm_maker(cfg: ModelConfig):
    """A function making the config's norm for a given width (d_model unless told)."""

    def make(dim: int = cfg.d_model) -> nn.Module:
        if cfg.norm == "layernorm":
            return nn.LayerNorm(dim, eps=cfg.norm_eps)
        return RMSNorm(dim, cfg.norm_eps, cfg.norm_offset)

    return make


ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class MLP(nn.Module):
    """Plain (``up`` → act → ``down``, GPT-2) or gated (act(``gate``)·``up`` → ``down``: SwiGLU,
    or GeGLU with Gemma's tanh-approximated GELU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.activation]
        self.gate = Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias) if cfg.mlp == "gated" else None
        self.up = Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.down = Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """x + post(attn(pre(x))), then x + post(mlp(pre(x))), with the norms the placement has:
    pre only (most), pre and post (Gemma's sandwich), post only (OLMo 2)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        make = norm_maker(cfg)
        pre, post = cfg.norm_placement in ("pre", "sandwich"), cfg.norm_placement in ("sandwich", "post")
        self.attn_norm = make() if pre else nn.Identity()
        self.attn = Attention(cfg, layer, make)
        self.attn_post_norm = make() if post else nn.Identity()
        self.mlp_norm = make() if pre else nn.Identity()
        self.mlp = MLP(cfg)
        self.mlp_post_norm = make() if post else nn.Identity()

    def forward(self, x: Tensor, ctx: "StepContext") -> Tensor:
        x = x + self.attn_post_norm(self.attn(self.attn_norm(x), ctx))
        return x + self.mlp_post_norm(self.mlp(self.mlp_norm(x)))


class LMHead(nn.Module):
    """Final norm, then a bias-free Linear(d_model → vocab) giving next-token logits (soft-capped
    for Gemma)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = norm_maker(cfg)()
        self.linear = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.softcap = cfg.logit_softcap

    def forward(self, x: Tensor) -> Tensor:
        return soft_cap(self.linear(self.norm(x)), self.softcap)


class Decoder(nn.Module):
    """The whole model. Its parameters start uninitialised: ``engine.load_checkpoint.load_model`` fills them."""

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
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.head = LMHead(cfg)
        self.rope_memo: dict = {}  # rotary frequencies, kept between forward passes (rope.rope_tables)
        self.plan: "decode_plan.DecodePlan | None" = None  # the native decode step (see new_cache)
        self.kv_dtype: torch.dtype | None = None  # the KV cache's (None: the activations'); --kv-dtype
        self.tie_weights()

    def tie_weights(self) -> None:
        """With tied embeddings the head's weight *is* the embedding Parameter."""
        for alias, source in tied_aliases(self.cfg).items():
            module, name = alias.rsplit(".", 1)
            setattr(self.get_submodule(module), name, self.get_parameter(source))

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

    def new_cache(self, batch: int, max_len: int, limit: int | None = None) -> KVCache:
        """A KV cache of ``batch`` rows of up to ``max_len`` positions, each reserved whole unless a
        ``limit`` (pages of the pool) is given: then rows take pages as they grow (``reserve``).
        The native decode step (``self.plan``: every block in one call, or None where the
        kernels cannot run this model) is made afresh with it, so that weights swapped between
        generations (int8 quantization) are the ones it reads."""
        self.plan = decode_plan.decode_plan(self)
        max_len = min(max_len, self.cfg.max_context)
        cache = KVCache(self.cfg, batch, max_len, self.kv_dtype or self.dtype, self.device, limit)
        if limit is None:
            for row in range(batch):
                cache.reserve(row, max_len)
        return cache

    def grow_cache(self, cache: KVCache | None, length: int) -> KVCache:
        """A one-row cache with pages for ``length`` positions: ``cache`` itself, given pages for
        what it lacks (a new one, with room for the whole context, if None)."""
        if cache is None:
            cache = self.new_cache(1, self.cfg.max_context, limit=KVCache.pages_fitting(self.cfg, self.kv_dtype or self.dtype))
        if not cache.reserve(0, length):
            raise EnvironmentFailure(f"a KV cache for {length} tokens would need "
                                     f"{length * cache.page_bytes() / PAGE / 1e9:.2f} GB of memory; "
                                     f"{cache.free_pages() * cache.page_bytes() / 1e9:.2f} GB of its pages are free")
        return cache

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings in the activations' dtype, scaled where the family scales them (Gemma:
        by a tensor of that dtype, as transformers has it)."""
        x = self.embed(tokens).to(self.dtype)
        if self.cfg.embed_scale != 1.0:
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)
        return x

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
        if seq == 1 and cache is not None and self.plan is not None:  # the native decode step
            positions = torch.full((tokens.shape[0],), start_pos, dtype=torch.int64)
            return self.decode_step(tokens[:, 0], positions, cache)[:, None]
        x = self._blocks(tokens, start_pos, cache)
        if last_only:
            x = x[:, -1:]
        return self.head(x)

    def hidden_states(self, tokens: Tensor) -> Tensor:
        """The final norm's output (batch, seq, d_model) for token ids (batch, seq) from position 0,
        with no cache: what the LM head would turn into logits (embeddings pool it)."""
        if tokens.shape[1] > self.cfg.max_context:
            raise ValueError(f"positions up to {tokens.shape[1]} exceed the context window ({self.cfg.max_context})")
        return self.head.norm(self._blocks(tokens, 0, None))

    def _blocks(self, tokens: Tensor, start_pos: int, cache: KVCache | None) -> Tensor:
        """The embeddings of tokens (batch, seq) at start_pos through every block (a prompt's pass)."""
        x = self.embed_tokens(tokens)
        ctx = StepContext(self.cfg, start_pos, tokens.shape[1], cache, x.device, x.dtype, self.rope_memo)
        if self.pos_embed is not None:
            x = x + self.pos_embed(ctx.positions)
        for block in self.blocks:
            x = block(x, ctx)
        return x

    def decode_step(self, tokens: Tensor, positions: Tensor, cache: KVCache, rows: Tensor | None = None) -> Tensor:
        """Logits (B, vocab) of one new token per row: tokens[b] (B,) at positions[b] (int64) of the
        sequence held in cache row rows[b] (default b). Rows may be at different positions: a batch
        of prompts of different lengths, each decoding as it would alone. With the native kernels
        every block runs in one call that reads each weight once for all rows."""
        if int(positions.max()) >= self.cfg.max_context:
            raise ValueError(f"position {int(positions.max())} is beyond the context window ({self.cfg.max_context})")
        rows = torch.arange(len(tokens)) if rows is None else rows
        x = self.embed_tokens(tokens[:, None])
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)[:, None]
        rope = rope_rows(self.cfg, positions, x.dtype, self.rope_memo) if self.cfg.positions == "rope" else {}
        if self.plan is not None:
            with self.plan.timed_step():  # every block in one native call, then the head
                x = x.contiguous()
                self.plan.run(x, cache, positions.contiguous(), rows.contiguous(),
                               {kind: (cos.contiguous(), sin.contiguous()) for kind, (cos, sin) in rope.items()})
                return self.head(x)[:, -1]
        ctx = RaggedStep(positions, rows, cache, rope)
        for block in self.blocks:
            x = block(x, ctx)
        return self.head(x)[:, -1]
