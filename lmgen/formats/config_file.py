"""A model's config file into a ``ModelConfig``: lmgen's own TOML (``configs/*.toml``, the
``[model]`` table of ModelConfig's fields) or a Hugging Face ``config.json`` (``hf_config``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from lmgen.config.model_config import ModelConfig
from lmgen.errors import ConfigError
from lmgen.formats.files import read_json, read_text
from lmgen.formats.hf_config import from_hf


def load_config_file(path: Path) -> ModelConfig:
    return load_toml(path) if path.suffix == ".toml" else load_hf_json(path)


def load_toml(path: Path) -> ModelConfig:
    try:
        data = tomllib.loads(read_text(Path(path), "config"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    model = data.get("model", data)
    if not isinstance(model, dict):
        raise ConfigError(f"config {path}: [model] must be a table")
    return ModelConfig.from_dict(model)


def load_hf_json(path: Path) -> ModelConfig:
    return from_hf(read_json(Path(path), "config"))
