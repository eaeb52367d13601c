"""GGUF files: metadata and tensors read (``reader``), llama.cpp's per-architecture names and
fixes (``arch``), the tokenizer rebuilt from metadata (``tokenizer``), and what lmgen keeps of a
file in its cache (``index``)."""
