"""The family table: every fact lmgen keeps about a model family, one entry per family.

The other tables are read from this one: ``model_config.FAMILIES`` (the names a config may
give), ``hf_config.FAMILIES`` (each Llama-like family's config.json differences) and
``ARCHITECTURES``, ``layout.FAMILY_NAMES`` (each family's tensor names) and
``gguf.arch.ARCHS`` (the GGUF architectures lmgen imports). Adding a family is one entry
here, and a name map or norm table where it names tensors its own way.

Plain data: no torch, no numpy, and nothing from the rest of lmgen.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LlamaLike:
    """How one Llama-like family's config.json differs from Llama's (the defaults)."""

    norm_placement: str = "pre"  # pre | sandwich (Gemma) | post (OLMo 2)
    norm_offset: float = 0.0  # Gemma's norms scale by (1 + weight)
    qk_norm: str | None = None  # head (Qwen3, Gemma 3) | projection (OLMo 2)
    biases: str = "attention_bias"  # q/k/v/o biases: read from attention_bias, "qkv" (always) or "none"
    mlp_bias: bool = False  # whether config.json's mlp_bias is read
    activation_key: str = "hidden_act"
    gemma: bool = False  # √d_model embedding scale, query_pre_attn_scalar, final-logit soft-cap
    attn_softcap: bool = False  # attention-score soft-cap (Gemma 2; Gemma 3's is ignored by transformers too)
    sliding: str | None = None  # which layers slide when not listed in layer_types (see hf_config._sliding)
    local_rope: bool = False  # sliding layers use rope_local_base_freq, unscaled (Gemma 3)
    nope: bool = False  # no_rope_layers (SmolLM3)
    tied: bool = False  # tie_word_embeddings' default


@dataclass(frozen=True)
class Rule:
    """One family tensor name → one or more canonical tensors.

    ``targets`` are formatted with the pattern's groups; several targets mean
    the stored tensor is their concatenation along dim 0 (GPT-2's c_attn).
    ``transpose`` marks Conv1D-style storage (in_features, out_features).
    """

    pattern: str
    targets: tuple[str, ...]
    transpose: bool = False


@dataclass(frozen=True)
class FamilyNames:
    """What a family's checkpoints call lmgen's canonical tensors (``layout.map_name``)."""

    prefix: str
    rules: tuple[Rule, ...]
    ignored: str  # buffers some checkpoints carry that are not parameters


@dataclass(frozen=True)
class GGUFArch:
    """How llama.cpp writes a family to GGUF, where lmgen imports it (``gguf.arch``)."""

    name: str  # general.architecture
    norms: dict[str, str]  # GGUF block norm → Hugging Face name
    permuted_qk: bool = False  # llama.cpp interleaved the rotary halves of Q/K rows
    norm_shift: float = 0.0  # added to every norm weight (Gemma's 1 + weight, stored summed)
    fused: bool = False  # attn_qkv and ffn_up (gate then up) kept fused (Phi-3)
    extra: dict[str, str] = field(default_factory=dict)  # config.json keys read from "{arch}.KEY" metadata


@dataclass(frozen=True)
class Family:
    """One model family."""

    model_type: str  # config.json's model_type, and ModelConfig.family
    hf_class: str  # config.json's architectures (written for a GGUF import)
    names: FamilyNames
    llama_like: LlamaLike | None = None  # None: GPT-2, whose config.json has its own reader
    gguf: GGUFArch | None = None  # None: no GGUF import


# --------------------------------------------------------------------------- tensor names

_QKV = tuple(f"blocks.{{0}}.attn.{p}.{{1}}" for p in "qkv")

GPT2_NAMES = FamilyNames(
    prefix="transformer.",
    rules=(
        Rule(r"wte\.weight", ("embed.weight",)),
        Rule(r"wpe\.weight", ("pos_embed.weight",)),
        Rule(r"h\.(\d+)\.ln_1\.(weight|bias)", ("blocks.{0}.attn_norm.{1}",)),
        Rule(r"h\.(\d+)\.attn\.c_attn\.(weight)", _QKV, transpose=True),
        Rule(r"h\.(\d+)\.attn\.c_attn\.(bias)", _QKV),
        Rule(r"h\.(\d+)\.attn\.c_proj\.(weight)", ("blocks.{0}.attn.o.{1}",), transpose=True),
        Rule(r"h\.(\d+)\.attn\.c_proj\.(bias)", ("blocks.{0}.attn.o.{1}",)),
        Rule(r"h\.(\d+)\.ln_2\.(weight|bias)", ("blocks.{0}.mlp_norm.{1}",)),
        Rule(r"h\.(\d+)\.mlp\.c_fc\.(weight)", ("blocks.{0}.mlp.up.{1}",), transpose=True),
        Rule(r"h\.(\d+)\.mlp\.c_fc\.(bias)", ("blocks.{0}.mlp.up.{1}",)),
        Rule(r"h\.(\d+)\.mlp\.c_proj\.(weight)", ("blocks.{0}.mlp.down.{1}",), transpose=True),
        Rule(r"h\.(\d+)\.mlp\.c_proj\.(bias)", ("blocks.{0}.mlp.down.{1}",)),
        Rule(r"ln_f\.(weight|bias)", ("head.norm.{0}",)),
        Rule(r"lm_head\.weight", ("head.linear.weight",)),
    ),
    ignored=r"h\.\d+\.attn\.(bias|masked_bias)",
)

# The Llama-like families share their projections, embedding and head; they differ in their norms.
_PROJECTIONS = (
    Rule(r"embed_tokens\.weight", ("embed.weight",)),
    Rule(r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", ("blocks.{0}.attn.{1}.{2}",)),
    Rule(r"layers\.(\d+)\.self_attn\.([qk])_norm\.weight", ("blocks.{0}.attn.{1}_norm.weight",)),
    Rule(r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", ("blocks.{0}.mlp.{1}.{2}",)),
    Rule(r"norm\.weight", ("head.norm.weight",)),
    Rule(r"lm_head\.weight", ("head.linear.weight",)),
)
_ROTARY = r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"


def _norms(**names: str) -> tuple[Rule, ...]:
    """Rules for a family's block norms: its name for each of lmgen's."""
    return tuple(Rule(rf"layers\.(\d+)\.{theirs}\.weight", (f"blocks.{{0}}.{ours}.weight",))
                 for ours, theirs in names.items())


LLAMA_NAMES = FamilyNames("model.", _norms(attn_norm="input_layernorm", mlp_norm="post_attention_layernorm")
                          + _PROJECTIONS, _ROTARY)
GEMMA_NAMES = FamilyNames("model.", _norms(attn_norm="input_layernorm", attn_post_norm="post_attention_layernorm",
                                           mlp_norm="pre_feedforward_layernorm",
                                           mlp_post_norm="post_feedforward_layernorm") + _PROJECTIONS, _ROTARY)
OLMO2_NAMES = FamilyNames("model.", _norms(attn_post_norm="post_attention_layernorm",
                                           mlp_post_norm="post_feedforward_layernorm") + _PROJECTIONS, _ROTARY)
PHI3_NAMES = FamilyNames("model.", LLAMA_NAMES.rules + (  # fused: q, k, v stacked; gate and up stacked
    Rule(r"layers\.(\d+)\.self_attn\.qkv_proj\.(weight)", _QKV),
    Rule(r"layers\.(\d+)\.mlp\.gate_up_proj\.(weight)", ("blocks.{0}.mlp.gate.{1}", "blocks.{0}.mlp.up.{1}")),
), _ROTARY)

# GGUF block norm → Hugging Face name
_LLAMA_GGUF_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GEMMA_GGUF_NORMS = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
                     "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_OLMO2_GGUF_NORMS = {"post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}

# --------------------------------------------------------------------------- the table

_GEMMA = dict(norm_placement="sandwich", norm_offset=1.0, activation_key="hidden_activation", gemma=True, tied=True)

FAMILIES = {f.model_type: f for f in (
    Family("gpt2", "GPT2LMHeadModel", GPT2_NAMES),
    Family("llama", "LlamaForCausalLM", LLAMA_NAMES, LlamaLike(mlp_bias=True),
           GGUFArch("llama", _LLAMA_GGUF_NORMS, permuted_qk=True)),
    Family("mistral", "MistralForCausalLM", LLAMA_NAMES, LlamaLike(biases="none", sliding="all")),
    Family("qwen2", "Qwen2ForCausalLM", LLAMA_NAMES, LlamaLike(biases="qkv", sliding="from_max_window_layers"),
           GGUFArch("qwen2", _LLAMA_GGUF_NORMS)),
    Family("qwen3", "Qwen3ForCausalLM", LLAMA_NAMES, LlamaLike(qk_norm="head", sliding="from_max_window_layers"),
           GGUFArch("qwen3", _LLAMA_GGUF_NORMS)),
    Family("gemma2", "Gemma2ForCausalLM", GEMMA_NAMES, LlamaLike(**_GEMMA, attn_softcap=True, sliding="alternate"),
           GGUFArch("gemma2", _GEMMA_GGUF_NORMS, norm_shift=1.0, extra={
               "sliding_window": "attention.sliding_window", "attn_logit_softcapping": "attn_logit_softcapping",
               "final_logit_softcapping": "final_logit_softcapping"})),
    Family("gemma3_text", "Gemma3ForCausalLM", GEMMA_NAMES,
           LlamaLike(**_GEMMA, qk_norm="head", sliding="pattern", local_rope=True),
           GGUFArch("gemma3", _GEMMA_GGUF_NORMS, norm_shift=1.0, extra={
               "sliding_window": "attention.sliding_window", "final_logit_softcapping": "final_logit_softcapping",
               "rope_local_base_freq": "rope.freq_base_swa"})),
    Family("phi3", "Phi3ForCausalLM", PHI3_NAMES, LlamaLike(biases="none", sliding="all"),  # fused qkv, gate_up
           GGUFArch("phi3", _LLAMA_GGUF_NORMS, fused=True, extra={"sliding_window": "attention.sliding_window"})),
    Family("olmo2", "Olmo2ForCausalLM", OLMO2_NAMES, LlamaLike(norm_placement="post", qk_norm="projection"),
           GGUFArch("olmo2", _OLMO2_GGUF_NORMS)),
    Family("smollm3", "SmolLM3ForCausalLM", LLAMA_NAMES, LlamaLike(mlp_bias=True, sliding="nope_layers", nope=True,
                                                                  tied=True),
           GGUFArch("smollm3", _LLAMA_GGUF_NORMS, permuted_qk=True)),
)}
