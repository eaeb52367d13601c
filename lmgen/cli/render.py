"""How generation events reach the user: text, one JSON object, or JSON lines.

stdout carries the generated text (or JSON) only; anything else goes to stderr.
On a terminal text goes through rich (plain when NO_COLOR is set); in a pipe
it is plain UTF-8, flushed after every token so a reader sees the stream live.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata


def stats_line(record: dict) -> str:
    line = (
        f"prompt {record['prompt_tokens']} tokens, generated {record['new_tokens']} ({record['finish_reason']}); "
        f"time to first token {record['time_to_first_token_s'] * 1000:.0f} ms "
        f"({record['prefill_tokens_per_s']:.1f} prompt tokens/s); "
        f"decode {record['decode_tokens_per_s']:.1f} tokens/s"
    )
    if "weights_gb_per_s" in record:  # not known of a server's model
        line += f", reading weights at {record['weights_gb_per_s']:.1f} GB/s"
    if "drafted_tokens" in record:
        drafted, accepted = record["drafted_tokens"], record["accepted_tokens"]
        line += f"; lookup drafted {drafted} tokens, {accepted} accepted ({accepted / drafted:.0%})"
    if "constraint_s" in record:
        total = record["time_to_first_token_s"] + record["decode_s"]
        share = record["constraint_s"] / total if total > 0 else 0.0
        line += f"; constraint masks {record['constraint_s'] * 1000:.0f} ms ({share:.1%} of the time)"
    return line


def one_line(text: str) -> str:
    """Text with its line breaks and other control characters written as escapes (a message may
    quote the user's input): an error is always one line."""
    return "".join(c if c == "\t" or unicodedata.category(c) not in ("Cc", "Zl", "Zp")
                   else repr(c)[1:-1] if len(repr(c)) <= 6 else f"\\u{ord(c):04x}" for c in text)


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def json_line(record: dict) -> None:
    write_out(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def rich_console(stream):
    """A rich console for a terminal without NO_COLOR, else None (plain bytes)."""
    if not stream.isatty() or os.environ.get("NO_COLOR"):
        return None
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True)


def escape_line(text: str) -> str:
    """Text on one line: backslash, newline and carriage return written as \\, \n and \r."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class TextRenderer:
    """The continuation as text. One sample streams live; several are printed one after another
    when all are done (on a terminal each under a "sample N" rule). Every sample ends with one
    newline, even an empty one. With ``one_line`` (--each-line) each sample is exactly one line:
    its own line breaks are escaped, so that output line N answers input line N."""

    def __init__(self, echo: bool, num_samples: int, tokenizer, show_probs: int, one_line: bool = False):
        self.echo = echo
        self.one_line = one_line
        self.console = rich_console(sys.stdout)
        # Several samples are printed one after another at the end; so is one sample when its
        # probability lines go to the same terminal (stderr), which would otherwise land mid-text.
        self.buffered = num_samples > 1 or bool(show_probs and sys.stdout.isatty())
        self.buffers = [""] * num_samples
        self.prompt = ""
        self.at_line_start = True
        self.probs = ProbabilityDisplay(tokenizer) if show_probs else None

    def write(self, text: str, style: str | None = None) -> None:
        self.emit(escape_line(text) if self.one_line else text, style)

    def emit(self, text: str, style: str | None = None) -> None:
        if not text:
            return
        self.at_line_start = text.endswith("\n")  # before writing: Ctrl-C may land mid-write
        if self.console is not None:
            self.console.print(text, end="", style=style, markup=False)
            self.console.file.flush()
        else:
            write_out(text)

    def start(self, prompt: str) -> None:
        self.prompt = prompt
        self.buffers = [""] * len(self.buffers)  # --each-line: every prompt starts afresh
        self.at_line_start = False  # this prompt's line is open until its newline
        if self.echo and not self.buffered:
            self.write(prompt, style="bold")

    def token(self, event) -> None:
        if self.probs:
            self.probs.show(event)
        if self.buffered:
            self.buffers[event.sample] += event.text
        else:
            self.write(event.text)

    def finish(self, record: dict, tail: str) -> None:
        if not self.buffered:
            self.write(tail)
            self.end_line()
            return
        self.buffers[record["sample"]] += tail

    def close(self) -> None:
        """Print buffered samples in order."""
        if not self.buffered:
            return
        for i, text in enumerate(self.buffers):
            self.at_line_start = False
            if self.console is not None and len(self.buffers) > 1:
                self.console.rule(f"sample {i + 1}", style="dim")
            if self.echo:
                self.write(self.prompt, style="bold")
            self.write(text)
            self.end_line()

    def end_line(self) -> None:
        """Leave the cursor at the start of a line (also after Ctrl-C)."""
        if not self.at_line_start:
            self.emit("\n")


class ProbabilityDisplay:
    """--show-probs in text mode: one line per token on stderr (rich on a terminal)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.console = rich_console(sys.stderr)

    def show(self, event) -> None:
        def piece(token_id: int) -> str:
            return repr(self.tokenizer.decode([token_id], skip_special_tokens=False))

        alternatives = "  ".join(f"{piece(i)} {p:.3f}" for i, p in event.top if i != event.id)
        prefix = f"[{event.sample + 1}] " if event.sample else ""
        line = f"{prefix}{event.prob:6.3f} {piece(event.id):<16} | {alternatives}"
        if self.console is None:
            sys.stderr.write(line + "\n")
            return
        colour = "green" if event.prob >= 0.5 else "yellow" if event.prob >= 0.1 else "red"
        self.console.print(line, style=colour, markup=False)


class JsonRenderer:
    """One JSON object per sample, printed when all the prompt's samples are done, in sample order
    (they may finish in any order)."""

    def start(self, prompt: str) -> None:
        self.records: list[dict] = []

    def token(self, event) -> None:
        pass

    def finish(self, record: dict, tail: str) -> None:
        self.records.append(record)

    def close(self) -> None:
        for record in sorted(self.records, key=lambda r: r["sample"]):
            json_line(record)

    def end_line(self) -> None:
        pass


class JsonlRenderer(JsonRenderer):
    """One JSON line per token, then the summary line (with "event": "done").

    Text held back at the end (bytes of an unfinished character) comes in one
    "flush" line before "done", so the text fields always add up to the summary.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def token(self, event) -> None:
        from lmgen.engine.records import token_record

        json_line({"event": "token", "sample": event.sample, **token_record(event, self.tokenizer)})

    def finish(self, record: dict, tail: str) -> None:
        if tail:
            json_line({"event": "flush", "sample": record["sample"], "text": tail})
        json_line({"event": "done", **record})


# ------------------------------------------------------------------------------- tables and reports


def print_table(headers: list[str] | None, rows: list[list[str]], right: set[int] = frozenset()) -> None:
    """A rich table on a terminal, plain aligned columns in a pipe (numbers right-aligned).

    Without headers the rows are a key/value list. Tables are separated by a blank line.
    """
    console = rich_console(sys.stdout)
    if console is not None:
        from rich.table import Table

        table = Table(show_header=headers is not None, box=None if headers is None else Table().box)
        for i, header in enumerate(headers or [""] * len(rows[0])):
            table.add_column(header, justify="right" if i in right else "left",
                             style="bold" if headers is None and i == 0 else None)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print()
        return
    table_rows = rows if headers is None else [headers, *rows]
    widths = [max(len(cell) for cell in column) for column in zip(*table_rows)]
    lines = []
    for row in table_rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    write_out("\n".join(lines) + "\n\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} GB"


PART_LABELS = {
    "token_embedding": "token embedding",
    "position_embedding": "position embedding",
    "attention": "attention",
    "mlp": "MLP",
    "norms": "norms",
    "head": "LM head",
}


def print_inspect(info: dict) -> None:
    arch, head, params, memory = info["architecture"], info["lm_head"], info["parameters"], info["memory_bytes"]
    total = params["total"]
    d_model, vocab = head["shape"]
    if head["tied_in_config"]:
        stored = "a separate copy is stored but not counted" if head["separate_tensor_stored"] else "no separate tensor stored"
        tie = f"tied to the token embedding: one tensor ({stored})"
    else:
        tie = "untied: its own weight"
    rows = [
        ["checkpoint", f"{info['path']} ({info['source']})"],
        ["family", info["family"]],
        ["d_model", str(arch["d_model"])],
        ["layers", str(arch["layers"])],
        ["attention heads", f"{arch['heads']} query, {arch['kv_heads']} key/value, head dim {arch['head_dim']}"],
        ["MLP", f"{arch['mlp']}, width {arch['mlp_width']}"],
        ["norm, positions", f"{arch['norm']}, {arch['positions']}"],
        *([name, text] for name, text in info["features"].items()),
        ["context length", str(arch["context_length"])],
        ["vocab size", str(arch["vocab_size"])],
        ["LM head", f"final {arch['norm']} → Linear {d_model} → {vocab}, no bias; weight {d_model} × {vocab} (d_model × vocab)"],
        ["LM head tying", tie],
        ["LM head size", f"{head['parameters']:,} parameters, {head['share_of_model']:.1%} of the model"],
    ]
    print_table(None, rows)
    part_rows = []
    for part, label in PART_LABELS.items():
        note = "tied: counted in the token embedding" if part == "head" and head["tied_in_config"] else ""
        part_rows.append([label, f"{params[part]:,}", f"{params[part] / total:.1%}" if total else "-", note])
    once = "tied weights counted once" if params["tied_counted_once"] else ""
    part_rows.append(["total", f"{total:,}", "100.0%", once])
    print_table(["part", "parameters", "share", ""], part_rows, right={1, 2})
    kv = info["kv_cache_bytes_per_token"]
    full = arch["context_length"]
    memory_rows = [
        ["weights as stored", human_bytes(memory["stored"]), ", ".join(memory["stored_dtypes"])],
        ["weights at fp32", human_bytes(memory["fp32"]), ""],
        ["weights at bf16", human_bytes(memory["bf16"]), ""],
        ["weights at q8", human_bytes(memory["q8"]), "Q8_0 blocks, scales included"],
        ["weights at q4", human_bytes(memory["q4"]), "Q4_1 projections, embedding and LM head at Q8_0"],
        ["KV cache per token", f"{human_bytes(kv['fp32'])} fp32", f"{human_bytes(kv['bf16'])} bf16"],
        [f"KV cache, {full} tokens", f"{human_bytes(kv['fp32'] * full)} fp32", f"{human_bytes(kv['bf16'] * full)} bf16"],
        *_per_token_rows(info.get("bytes_read_per_token")),
    ]
    print_table(["memory", "bytes", ""], memory_rows, right={1})
    print_formats(info)
    if "tensors" in info and not info["tensors"]:
        match = info["tensor_match"]
        example = f" (names here look like {match['example_name']})" if match["example_name"] else ""
        print(f"no tensor name matches {match['glob']!r}{example}")
    elif "tensors" in info:
        tensor_rows = [[t["name"], " × ".join(map(str, t["shape"])), t["dtype"], human_bytes(t["bytes"]), t["part"] or "-"]
                       for t in info["tensors"]]
        print_table(["tensor", "shape", "format", "size", "counted as"], tensor_rows, right={3})


def _per_token_rows(read: dict | None) -> list[list[str]]:
    """inspect --stats: the weights one decoded token reads (decoding is bound by them)."""
    if read is None:
        return []
    embedding = "tied: the head reads the embedding whole" if read["embedding_read_whole"] else \
        "the embedding: one row per token, left out"
    by_format = ", ".join(f"{name} {human_bytes(n)}" for name, n in read["formats"].items())
    return [["weights read per token", human_bytes(read["total"]), f"{by_format}; {embedding}"]]


def print_formats(info: dict) -> None:
    """Parameters, bytes and bits per weight of each stored format, and of all together."""
    rows = [[name, str(f["tensors"]), f"{f['parameters']:,}", human_bytes(f["bytes"]), f"{f['bits_per_weight']:.2f}"]
            for name, f in info["formats"].items()]
    rows.append(["all", str(sum(f["tensors"] for f in info["formats"].values())), f"{info['parameters']['total']:,}",
                 human_bytes(info["memory_bytes"]["stored"]), f"{info['bits_per_weight']:.2f}"])
    print_table(["format", "tensors", "parameters", "size", "bits/weight"], rows, right={1, 2, 3, 4})


def score_record(result, tokenizer) -> dict:
    return {
        "tokens": [
            {"id": t.id, "token": tokenizer.decode([t.id], skip_special_tokens=False),
             "logprob": t.logprob, "rank": t.rank}
            for t in result.tokens
        ],
        "scored_tokens": result.scored,
        "nll": result.nll,
        "mean_nll": result.mean_nll,
        "perplexity": result.perplexity,
        "window": result.window,
        "stride": result.stride,
    }


def print_score(record: dict) -> None:
    rows = [
        [str(i), repr(t["token"]), "" if t["logprob"] is None else f"{t['logprob']:.4f}",
         "" if t["rank"] is None else str(t["rank"])]
        for i, t in enumerate(record["tokens"])
    ]
    print_table(["pos", "token", "log p", "rank"], rows, right={0, 2, 3})
    print_table(None, [
        ["tokens scored", str(record["scored_tokens"])],
        ["total NLL", f"{record['nll']:.4f} nats"],
        ["mean NLL", f"{record['mean_nll']:.4f} nats/token"],
        ["perplexity", f"{record['perplexity']:.3f}"],
        ["window, stride", f"{record['window']}, {record['stride']} tokens"],
    ])
