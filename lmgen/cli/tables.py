"""Tables and reports on stdout: inspect's and score's, and the model list; a rich table on a
terminal, plain aligned columns in a pipe."""

from __future__ import annotations

import sys

from lmgen.cli.render import rich_console, write_out


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
