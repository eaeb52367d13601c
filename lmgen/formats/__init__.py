"""Files from strangers, read within bounds and validated into a ``ModelConfig`` and a table of
tensors: checkpoint directories (config.json, safetensors headers), GGUF files (``gguf/``),
where models live (``paths``), and ``inspect``'s report from headers alone. No torch."""
