"""Records for many prompts, from the library: exactly what ``lmgen generate --json`` prints.

``complete`` runs prompts through the batched engine (``batching.generate_many``) and yields one
record per sample (``records.summary``: the one place a record is built) in input order. A
prompt is text, messages, or an input record ``{"id": …, "prompt": …}`` with optional ``system``
(the prompt is then rendered with the chat template), ``max_new_tokens`` and ``seed`` of its
own; its ``id`` is copied into the output record. ``lmgen batch`` and its Ray actors call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from lmgen.batching import Request, generate_many, in_input_order
from lmgen.errors import InputError
from lmgen.generation import Finished, GenerationSettings, LanguageModel
from lmgen.records import summary

FIELDS = {"id": (str, int), "prompt": (str, list), "system": (str,), "max_new_tokens": (int,), "seed": (int,),
          "index": (int,)}
KEPT = ("id", "index")  # copied into the output record


def request_of(item, chat: bool = False, system: str | None = None) -> tuple[dict, Request]:
    """(its id and index where it has them, the Request) of a prompt or an input record. With
    ``chat`` (or a record's own ``system``) a text prompt becomes messages for the chat template."""
    record = item if isinstance(item, dict) else {"prompt": item}
    for key, value in record.items():
        kinds = FIELDS.get(key)
        if kinds is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise InputError(f"input record field {key!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if "prompt" not in record:
        raise InputError(f"input record has no \"prompt\": {str(record)[:200]}")
    prompt, system = record["prompt"], record.get("system", system)
    if isinstance(prompt, str) and (chat or "system" in record):
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    kept = {key: record[key] for key in KEPT if key in record}
    return kept, Request(prompt, record.get("max_new_tokens"), record.get("seed"))


def complete(lm: LanguageModel, prompts: Iterable, settings: GenerationSettings = GenerationSettings(),
             batch_size: int = 8, chat: bool = False, system: str | None = None) -> Iterator[dict]:
    """The records of every prompt (one per sample), in input order, each as soon as it and every
    earlier prompt are done."""
    kept: dict[int, dict] = {}
    texts: dict[int, str] = {}
    latest = [0]

    def requests():
        for index, item in enumerate(prompts):
            latest[0] = index
            kept[index], request = request_of(item, chat, system)
            texts[index] = lm.prompt_text(request.prompt)
            yield request

    try:
        yield from _records(generate_many(lm, requests(), settings, batch_size), settings, kept, texts,
                            lm.model.weight_bytes_per_token())
    except InputError as exc:  # name the prompt that cannot be used (it is the one last read)
        where = kept.get(latest[0], {}).get("id", latest[0] + 1)
        raise InputError(f"prompt {where}: {exc}") from None


def _records(events, settings: GenerationSettings, kept: dict, texts: dict, bytes_per_token: int) -> Iterator[dict]:
    """The records of the events, each prompt's as soon as it and every earlier one are done."""
    finished_only = in_input_order(events, settings.num_samples, keep=lambda event: isinstance(event, Finished))
    for index, samples in finished_only:
        text, ids = texts.pop(index), kept.pop(index)
        for done in sorted(samples, key=lambda e: e.sample):
            yield record_of(text, done, bytes_per_token, ids)


def record_of(prompt: str, done: Finished, bytes_per_token: int, kept: dict) -> dict:
    """The sample's record, with the input's id first and its index (position in the input)."""
    record = summary(prompt, done, bytes_per_token)
    if "index" in kept:
        record["index"] = kept["index"]
    return {"id": kept["id"], **record} if "id" in kept else record
