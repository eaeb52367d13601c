"""Generation events to a renderer (render.py): one prompt's, or many prompts' in input order.

Shared by the command line's ``generate`` paths; the records come from ``records.summary``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Input:
    """One prompt of the command line: the user's ``text`` (the records' ``prompt``), what the
    engine is given (the text, or messages for the chat template) and the text the template
    made of it, and its ``index``: the 0-based line of the input it came from."""

    text: str
    prompt: str | list[dict]
    rendered: str | None = None
    index: int = 0


def generate_in_order(lm, inputs, settings, renderer, batch_size: int, total: int | None = None,
                      kv_cache_mib: float | None = None):
    """Many prompts decoded together (batching.generate_many), each printed as soon as it and
    every earlier one are done: output in input order. Yields each prompt's summary record.
    Each prompt is seeded from the settings' seed and its index, so that blank lines before it
    change nothing. ``total``: how many prompts there are, if known (the progress bar's length)."""
    from lmgen.cli.startup import progress
    from lmgen.engine.batching import Request, generate_many, in_input_order, prompt_seed
    from lmgen.engine.generation import Finished

    read: dict[int, Input] = {}

    def requests():
        for position, item in enumerate(inputs):
            read[position] = item
            seed = None if settings.seed is None else prompt_seed(settings.seed, item.index)
            yield Request(item.prompt, seed=seed)

    with progress(total) as report:
        events = generate_many(lm, requests(), settings, batch_size, kv_cache_mib=kv_cache_mib)
        for position, events in in_input_order(events, settings.num_samples):
            report(sum(e.new_tokens for e in events if isinstance(e, Finished)))
            with report.paused():  # the bar off the terminal while the prompt's lines are written
                records = render_events(lm, read.pop(position), events, settings, renderer)
            yield from records


def generate_one(lm, item: Input, settings, renderer, run) -> list[dict]:
    """Run one prompt through the renderer; return each sample's summary record."""
    events = run(lm, item.prompt, settings)  # a bad prompt fails here, before anything is printed
    return render_events(lm, item, events, settings, renderer)


def render_events(lm, item: Input, events, settings, renderer) -> list[dict]:
    """Feed one prompt's events to the renderer; return each sample's summary record."""
    from lmgen.engine.generation import Finished
    from lmgen.engine.records import reasoning_apart, summary
    from lmgen.text.reasoning import opens_thinking

    # a chat's reply may start inside a thinking block its prompt opened; None: no chat, no thinking
    opened = None if item.rendered is None else opens_thinking(item.rendered)
    renderer.start(item.text, opened)
    tokens: list[list] = [[] for _ in range(settings.num_samples)]  # kept for --show-probs
    records: list[dict] = []
    bytes_per_token = lm.model.weight_bytes_per_token()
    try:
        for event in events:
            if isinstance(event, Finished):
                probs = (tokens[event.sample], lm.tokenizer) if settings.show_probs else ()
                record = summary(item.text, event, bytes_per_token, *probs)
                record["index"] = item.index
                if item.rendered is not None:
                    record["rendered_prompt"] = item.rendered
                    record = reasoning_apart(record, opened)  # a thinking model's reasoning in its own field
                renderer.finish(record, event.text)
                records.append(record)
                continue
            if settings.show_probs:
                tokens[event.sample].append(event)
            renderer.token(event)
    except KeyboardInterrupt:
        renderer.end_line()
        raise
    renderer.close()
    return sorted(records, key=lambda r: r["sample"])
