"""Generation events to a renderer (render.py): one prompt's, or many prompts' in input order.

Shared by the command line's ``generate`` paths; the records come from ``records.summary``.
"""

from __future__ import annotations


def generate_in_order(lm, texts, settings, renderer, batch_size: int, total: int | None = None):
    """Many prompts decoded together (batching.generate_many), each printed as soon as it and
    every earlier one are done: output in input order. Yields each prompt's summary record.
    ``total``: how many prompts there are, if known (the progress bar's length)."""
    from lmgen.batching import generate_many, in_input_order
    from lmgen.generation import Finished
    from lmgen.startup import progress

    prompts: dict[int, str] = {}

    def remembered():
        for index, text in enumerate(texts):
            prompts[index] = text
            yield text

    with progress(total) as report:
        events = generate_many(lm, remembered(), settings, batch_size)
        for index, events in in_input_order(events, settings.num_samples):
            report(sum(e.new_tokens for e in events if isinstance(e, Finished)))
            yield from render_events(lm, prompts.pop(index), events, settings, renderer)


def generate_one(lm, text: str, settings, renderer, run) -> list[dict]:
    """Run one prompt through the renderer; return each sample's summary record."""
    events = run(lm, text, settings)  # a bad prompt fails here, before anything is printed
    return render_events(lm, text, events, settings, renderer)


def render_events(lm, text: str, events, settings, renderer) -> list[dict]:
    """Feed one prompt's events to the renderer; return each sample's summary record."""
    from lmgen.generation import Finished
    from lmgen.records import summary

    renderer.start(text)
    tokens: list[list] = [[] for _ in range(settings.num_samples)]  # kept for --show-probs
    records: list[dict] = []
    bytes_per_token = lm.model.weight_bytes_per_token()
    try:
        for event in events:
            if isinstance(event, Finished):
                probs = (tokens[event.sample], lm.tokenizer) if settings.show_probs else ()
                record = summary(text, event, bytes_per_token, *probs)
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
