"""Options that several commands share (generate, chat, batch, score), and ``with_sampling``,
which gives a command the sampling options as one SamplingSettings."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

from lmgen.engine.settings import FLOAT_DTYPES, KV_DTYPES, QUANTIZED

MODEL_OPTION = typer.Option(
    None, "--model", "-m",
    help="Checkpoint directory, GGUF file or Hub name: ORG/REPO[:QUANT], hf://ORG/REPO\\[/FILE]\\[@REVISION] "
    "(default: $LMGEN_MODEL, else SmolLM2-135M-Instruct)."
)
FILE_OPTION = typer.Option(None, "--file", "-f", help="Read the input from this file (UTF-8).")
DTYPE_OPTION = typer.Option(
    None, "--dtype", metavar="DTYPE",
    help=f"Weights: {', '.join(FLOAT_DTYPES)}, or block-quantized {', '.join(QUANTIZED)} (q8 = q8_0 = int8, "
    "q4 = q4_1); on the CPU activations stay fp32. Default: a GGUF file's weights as stored, else float32."
)
KV_DTYPE_OPTION = typer.Option(
    None, "--kv-dtype", metavar="DTYPE",
    help=f"The KV cache's: {', '.join(KV_DTYPES)}; bf16 halves its memory (mean |Δ log p| 0.009 against fp32 on "
    "the default model), q8_0 takes 0.28 of it. Default: the activations' (fp32 on the CPU)."
)
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu or cuda.")
THREADS_OPTION = typer.Option(None, "--threads", help="Threads to compute with (default: the cores available).")


def given_as(ctx: typer.Context, param: typer.CallbackParam) -> str:
    """How an option's value was given, for its error: the option, or its environment variable."""
    source = ctx.get_parameter_source(param.name)
    if getattr(source, "name", "") == "ENVIRONMENT" and param.envvar:
        return str(param.envvar)
    return param.opts[0]


def check_server(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """--server / $LMGEN_SERVER: an http(s) URL, checked before anything is read or sent."""
    from lmgen.environment import server_url

    return server_url(value, given_as(ctx, param)) if value else value


def check_api_key(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """--api-key / $LMGEN_API_KEY: what an Authorization header can carry ("" is no key)."""
    from lmgen.environment import api_key

    return api_key(value, given_as(ctx, param)) if value else None


SERVER_OPTION = typer.Option(None, "--server", envvar="LMGEN_SERVER", callback=check_server,
                             help="Send the work to this OpenAI-compatible server (lmgen serve).")
API_KEY_OPTION = typer.Option(None, "--api-key", envvar="LMGEN_API_KEY", callback=check_api_key,
                              help="The server's key.")


KV_CACHE_OPTION = typer.Option(
    0, "--kv-cache-mib", metavar="MIB",
    help="KV cache the rows share, in pages taken as they grow: rows that outgrow it wait and resume with the same "
    "text (0: every row's whole context, or half the memory free at start if less)."
)
MAX_KV_CACHE_MIB = 1 << 24


def kv_cache_mib(value: int) -> float | None:
    """--kv-cache-mib checked: the engine's budget in MiB (None: what memory allows)."""
    if not 0 <= value <= MAX_KV_CACHE_MIB:
        from lmgen.errors import InputError

        raise InputError(f"kv-cache-mib must be from 0 to {MAX_KV_CACHE_MIB}, got {value}")
    return value or None


def refuse_with_server(**options) -> None:
    """Options a server cannot honour (its model and options decide): one error naming every one given."""
    given = ["--" + name.replace("_", "-") for name, value in options.items() if value]
    if given:
        from lmgen.errors import InputError

        raise InputError(f"{', '.join(given)}: not with --server (the server's model and options decide)")
# How the next token is chosen (lmgen.engine.sampling): options that generate, chat and batch share.
SAMPLING_OPTIONS = {
    "temperature": (float, typer.Option(0.0, "--temperature", "-t", help="0 is greedy (argmax); higher is more random.")),
    "top_k": (int, typer.Option(0, "--top-k", help="Sample only from the k most likely tokens (0: all).")),
    "top_p": (float, typer.Option(1.0, "--top-p", help="Sample only from the smallest set with this much probability.")),
    "min_p": (float, typer.Option(0.0, "--min-p", help="Drop tokens less likely than min-p × the top token's probability.")),
    "typical_p": (float, typer.Option(1.0, "--typical-p", help="Locally typical sampling mass (1: off).")),
    "repetition_penalty": (float, typer.Option(1.0, "--repetition-penalty",
                                               help="Divide positive (multiply negative) logits of seen tokens (1: off).")),
    "frequency_penalty": (float, typer.Option(0.0, "--frequency-penalty", help="Subtract this × each output token's count.")),
    "presence_penalty": (float, typer.Option(0.0, "--presence-penalty", help="Subtract this from tokens already output.")),
    "logit_bias": (Optional[list[str]], typer.Option(None, "--logit-bias", metavar="ID=BIAS",
                                                     help="Add BIAS (-100 to 100) to token ID's logit first "
                                                          "(repeatable): -100 bans the token, 100 all but forces it.")),
}
SEED = typer.Option(None, "--seed", help="Seed for sampling, for reproducible output.")


def with_sampling(command):
    """Give a command the sampling options: it declares ``sampling`` and receives them as one
    SamplingSettings (checked there)."""
    signature = inspect.signature(command)
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in SAMPLING_OPTIONS.items()]
    kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values() if p.name != "sampling"]

    @functools.wraps(command)
    def wrapper(**values):
        from lmgen.engine.settings import SamplingSettings

        chosen = {name: values.pop(name) for name in SAMPLING_OPTIONS}
        sampling = SamplingSettings(**{**chosen, "logit_bias": logit_bias_of(chosen["logit_bias"])})
        return command(sampling=sampling, **values)

    wrapper.__signature__ = signature.replace(parameters=kept + added)
    return wrapper


def logit_bias_of(given: Optional[list[str]]) -> tuple[tuple[int, float], ...]:
    """--logit-bias ID=BIAS values as (id, bias) pairs (their ranges: SamplingSettings)."""
    from lmgen.errors import InputError

    pairs = []
    for item in given or ():
        token, _, bias = item.partition("=")
        try:
            if not token.isascii() or not token.lstrip("-").isdigit():
                raise ValueError
            pairs.append((int(token), float(bias)))
        except ValueError:  # (also an id of more digits than Python reads)
            shown = item if len(item) <= 60 else item[:57] + "..."
            raise InputError(f"logit-bias must be ID=BIAS, a token id and a number from -100 to 100, "
                             f"got {shown!r}") from None
    return tuple(pairs)


STATS = typer.Option(False, "--stats", "-v", help="Print timings and tokens/s on stderr.")
THINKING_OPTION = typer.Option(
    None, "--thinking", metavar="MODE",
    help="A thinking model's reasoning (<think>…</think>): show (default; dim on a terminal), hide (the answer "
         "only) or only (the reasoning only). --json/--jsonl records always carry it apart, as \"reasoning\"."
)
