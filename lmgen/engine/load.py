"""Loading a model for generation: a checkpoint directory, its tokenizer and end-of-sequence
ids, with the weights in the dtype asked for (block-quantized after loading for q8 and q4) on
the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from lmgen.config.model_config import ModelConfig, is_int
from lmgen.engine.load_checkpoint import load_model
from lmgen.engine.settings import FLOAT_DTYPES, KV_DTYPES, QUANTIZED
from lmgen.errors import CheckpointError, InputError
from lmgen.formats.checkpoint import gguf_file
from lmgen.formats.files import read_json
from lmgen.model.decoder import Decoder
from lmgen.text.tokenizer import Tokenizer

DTYPES = {name: getattr(torch, dtype) for name, dtype in FLOAT_DTYPES.items()}


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer: what ``generate`` needs."""

    model: Decoder
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    notes: list[str] = field(default_factory=list)  # worth telling the user (on stderr), as loading did

    @cached_property
    def chat_template(self):
        """The model's chat template (``lmgen.text.chat.ChatTemplate``), read on first use, once."""
        from lmgen.text.chat import ChatTemplate

        return ChatTemplate(self.path)

    def prompt_text(self, prompt: str | list[dict]) -> str:
        """A prompt as text: messages rendered with the chat template, text as it is."""
        return prompt if isinstance(prompt, str) else self.chat_template.render(prompt)

    @cached_property
    def longest_token_bytes(self) -> int:
        """The most bytes any one token stands for (0.15 s for 49k tokens, once)."""
        tokenizer = self.tokenizer
        return max((len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)), default=1) or 1

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt, with the special tokens the tokenizer adds (a BOS) unless the
        text already begins with them, as a rendered chat template does."""
        plain = self.encode(text, add_special_tokens=False)
        full = self.encode(text, add_special_tokens=True)
        added = len(full) - len(plain)
        if added > 0 and full[added:] == plain and plain[:added] == full[:added]:
            return plain
        return full

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text, each checked to be a row of the model's embedding."""
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        beyond = [i for i in ids if i >= self.config.vocab_size]
        if beyond:
            raise CheckpointError(
                f"the tokenizer gave token id {beyond[0]}, beyond the model's vocabulary of {self.config.vocab_size}"
            )
        return ids


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype the weights are loaded in (float32 for those quantized after loading)."""
    if name in QUANTIZED:
        return torch.float32
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r} (choose from {', '.join([*DTYPES, *QUANTIZED])})")
    return DTYPES[name]


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (try cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported (use cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} is not available on this machine (no CUDA GPU)")
    return device


def load(path: str | Path, dtype: str | None = None, device: str = "cpu", threads: int | None = None,
         kv_dtype: str | None = None) -> LanguageModel:
    """Load a checkpoint directory (config + safetensors + tokenizer.json) or a GGUF file, by path
    or by Hub name (``ORG/REPO[:QUANT]``, ``hf://…``: from the Hugging Face cache, else fetched).

    ``dtype`` None: a GGUF file's weights as stored (its Q8_0/Q4_0/Q4_1 blocks read in place),
    a checkpoint's in float32. A GGUF file with a dtype is expanded to fp32 first (``lmgen
    convert``, kept in the cache) and loaded from there in that dtype. ``threads``: compute with
    this many (torch's and the kernels'; default: as they are, the cores available at start).
    ``kv_dtype``: the KV cache's, float32, bfloat16 (half the memory) or q8_0 (int8 with an fp32
    scale per 32 values: 0.28 of it; default: the activations')."""
    kv = parse_kv_dtype(kv_dtype)
    lm = _load(path, dtype, device, threads)
    lm.model.kv_dtype = kv
    return lm


def parse_kv_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in KV_DTYPES:
        raise InputError(f"unknown KV cache dtype {name!r} (choose from {', '.join(KV_DTYPES)})")
    return getattr(torch, KV_DTYPES[name])


def _load(path, dtype: str | None, device: str, threads: int | None) -> LanguageModel:
    if threads is not None:
        from lmgen.model.kernels import use_threads

        use_threads(threads)
    if isinstance(path, str):  # a Hub name, found in the Hugging Face cache or fetched
        from lmgen.formats.paths import model_path

        path = model_path(path)
    src = gguf_file(Path(path))
    if src is not None and dtype is None:
        return _load_gguf(src, parse_device(device))
    if src is not None:
        from lmgen.formats.gguf.index import expanded

        path = expanded(src)
    dtype = dtype or "float32"
    torch_dtype, torch_device = parse_dtype(dtype), parse_device(device)
    quantized = dtype in QUANTIZED  # narrow weights, fp32 activations
    # On the CPU, narrower dtypes are for the weights only: activations, norms and the KV cache
    # stay fp32 (more exact, and what the native decode kernels take). On a GPU all is dtype.
    vector_dtype = torch.float32 if torch_device.type == "cpu" or quantized else torch_dtype
    # Weights about to be quantized stay views of the file, its pages dropped as each is quantized.
    model, cfg, files = load_model(path, torch_dtype, torch_device, vector_dtype)
    if quantized:
        from lmgen.model.linear import quantize_blocks
        from lmgen.model.quant import FORMATS

        quantize_blocks(model, *(FORMATS[name] for name in QUANTIZED[dtype]))
    return _language_model(model, cfg, files.root, files.tokenizer)


def _load_gguf(src: Path, device: torch.device) -> LanguageModel:
    from lmgen.engine.load_gguf import load_gguf

    model, cfg, root, requantized = load_gguf(src)
    lm = _language_model(model.to(device), cfg, root, root / "tokenizer.json")
    lm.notes += [requantized.summary()] if requantized else []
    return lm


def _language_model(model: Decoder, cfg: ModelConfig, root: Path, tokenizer_file: Path | None) -> LanguageModel:
    if tokenizer_file is None:
        raise CheckpointError(f"{root} has no tokenizer.json")
    tokenizer = Tokenizer(tokenizer_file)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has only {cfg.vocab_size}"
        )
    if tokenizer.max_added_id >= cfg.vocab_size:
        raise CheckpointError(
            f"the tokenizer's added token id {tokenizer.max_added_id} is beyond the model's vocabulary of {cfg.vocab_size}"
        )
    notes: list[str] = []
    if model.device.type == "cpu":
        from lmgen.model import kernels, kernels_loader

        if kernels.library() is None and kernels_loader.unavailable:  # never silently slow
            notes.append(kernels_loader.unavailable)
    return LanguageModel(model, tokenizer, cfg, root, frozenset(end_ids(cfg, root, notes)), notes)


def end_ids(cfg: ModelConfig, root: Path, notes: list[str]) -> set[int]:
    """EOS ids from the config, plus any that generation_config.json adds (a list for Llama 3).
    Ids the model can never produce (beyond its vocabulary) are left out, with a note, as
    transformers warns and runs on."""
    ids = set(cfg.eos_token_ids)
    gen_config = root / "generation_config.json"
    if gen_config.exists():
        value = read_json(gen_config, "generation config").get("eos_token_id")
        extra = value if isinstance(value, list) else [] if value is None else [value]
        if not all(is_int(i) for i in extra):
            raise CheckpointError(f"{gen_config}: eos_token_id must be token ids (integers), got {value!r}")
        ids.update(extra)
    for name, values in (("bos_token_id", [cfg.bos_token_id]), ("eos_token_id", sorted(ids))):
        beyond = [i for i in values if i is not None and not 0 <= i < cfg.vocab_size]
        if beyond:
            notes.append(f"{name} {', '.join(map(str, beyond))} is beyond the vocabulary of {cfg.vocab_size} "
                         "tokens: the model can never produce it, so it is ignored")
    return {i for i in ids if 0 <= i < cfg.vocab_size}
