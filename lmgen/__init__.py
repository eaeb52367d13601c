"""lmgen: generate text with small decoder-only transformers.

    from lmgen import load, generate
    lm = load("path/to/model")
    for event in generate(lm, "The cat sat"):
        print(event.text, end="")

Importing the package is cheap; torch loads on first use of ``load``/``generate``.
"""

__version__ = "0.1.0"
__all__ = ["load", "generate", "generate_many", "GenerationSettings", "SamplingSettings", "Constraint", "complete",
           "embed"]


def __getattr__(name):
    if name == "load":
        from lmgen.engine.load import load

        return load
    if name == "GenerationSettings":
        from lmgen.engine.generation import GenerationSettings

        return GenerationSettings
    if name in ("generate", "generate_many"):
        from lmgen.engine import batching

        return getattr(batching, name)
    if name == "SamplingSettings":
        from lmgen.engine.sampling import SamplingSettings

        return SamplingSettings
    if name == "complete":
        from lmgen.engine.completion import complete

        return complete
    if name == "embed":
        from lmgen.engine.embed import embed

        return embed
    if name == "Constraint":
        from lmgen.engine.constraint import Constraint

        return Constraint
    raise AttributeError(f"module 'lmgen' has no attribute {name!r}")
