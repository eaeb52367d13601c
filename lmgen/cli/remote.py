"""``generate --server URL``: the same command, its work sent to a running OpenAI-compatible server
(``lmgen serve``, or any other), printed as it would be printed locally.

It imports neither torch nor the model code (the standard library's ``urllib`` speaks HTTP), so
a script that calls lmgen once per input pays no start-up beyond Python's. Text streams as it
arrives; ``--each-line`` sends its lines concurrently (``--batch-size`` at a time, so that the
server batches them) and prints the answers in input order; ``--json`` records carry what the API
returns (the prompt, text, finish reason, token counts, index and sample; no token ids or
timings). An option a server cannot honour is refused, never silently dropped.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from lmgen.cli.render import escape_line, json_line, rich_console, write_out
from lmgen.cli.thinking import AsWritten, ThinkingView, print_pieces
from lmgen.errors import EnvironmentFailure, InputError

TIMEOUT = 600  # seconds a request may take


class Refused(InputError):
    """A server's 4xx answer; ``code`` is OpenAI's error code (``context_length_exceeded``...)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


def post(server: str, path: str, body: dict, key: str | None):
    """The open HTTP response of a POST; a refusal is one line (4xx: exit 2, else exit 4)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(server.rstrip("/") + path, json.dumps(body).encode(), headers)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            message, code = error["message"], error.get("code")
        except (ValueError, KeyError, TypeError, AttributeError):
            message, code = exc.reason, None
        text = f"the server at {server} refused ({exc.code}): {message}"
        raise (Refused(text, code) if 400 <= exc.code < 500 else EnvironmentFailure(text)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnvironmentFailure(f"no server answers at {server} ({getattr(exc, 'reason', exc)})") from None


def chunks(response):
    """The JSON chunks of a server-sent event stream, until ``[DONE]``."""
    for raw in response:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def settings_fields(settings) -> dict:
    """The request fields of GenerationSettings (OpenAI's, and lmgen's own extras)."""
    sampling = settings.sampling
    if sampling.typical_p != 1:
        raise InputError("--typical-p is not an OpenAI field: not with --server")
    return {"max_tokens": settings.max_new_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k, "min_p": sampling.min_p, "repetition_penalty": sampling.repetition_penalty,
            "frequency_penalty": sampling.frequency_penalty, "presence_penalty": sampling.presence_penalty,
            "n": settings.num_samples, "seed": settings.seed, "stop": list(settings.stop) or None,
            **({"lookup": settings.lookup} if settings.lookup else {}),
            **({"logit_bias": {str(token): bias for token, bias in sampling.logit_bias}}
               if sampling.logit_bias else {})}


def request_body(text: str, settings, chat: bool, system: str | None) -> tuple[str, dict]:
    """(path, body) for one prompt and its GenerationSettings."""
    body = settings_fields(settings)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return "/v1/chat/completions", {**body, "messages": messages}
    return "/v1/completions", {**body, "prompt": text}


def run_remote(server: str, key: str | None, prompts, settings, chat: bool, system: str | None,
               as_json: bool, each_line: bool, echo: bool, concurrency: int, thinking: str = "show") -> None:
    """Generate every prompt (index, text) on the server and print it as ``generate`` would.
    Many prompts go ``concurrency`` at a time, read from the input only as answers are printed
    (bounded memory for any number of lines, as locally). A chat reply's reasoning, which the
    server sends apart (``reasoning_content``), is printed as a ``<think>`` block before the
    answer, under ``thinking`` (--thinking) as locally; records carry it as ``reasoning``."""
    console = rich_console(sys.stdout) if chat and not as_json else None  # the thinking dim on a terminal
    if each_line or as_json or settings.num_samples > 1:
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            window: deque = deque()
            for item in prompts:
                window.append((item, pool.submit(_whole, server, key, item[1], settings, chat, system)))
                if len(window) >= max(1, concurrency):
                    _print_next(window, chat, as_json, each_line, echo, thinking, console)
            while window:
                _print_next(window, chat, as_json, each_line, echo, thinking, console)
        return
    for _, text in prompts:  # one prompt, as text: streamed
        path, body = request_body(text, settings, chat, system)
        if echo:
            write_out(text)
        view, as_written = ThinkingView(thinking, False, console is not None), AsWritten()
        with post(server, path, {**body, "stream": True}, key) as response:
            for chunk in chunks(response):
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    piece = as_written(delta.get("reasoning_content") or "", delta.get("content") or "") if chat \
                        else choice.get("text") or ""
                    print_pieces(view.feed(piece), write_out, console)
        print_pieces(view.finish(), write_out, console)
        write_out("\n")


def _print_next(window: deque, chat: bool, as_json: bool, each_line: bool, echo: bool, thinking: str,
                console) -> None:
    (index, text), answer = window.popleft()
    _print_whole(index, text, answer.result(), chat, as_json, each_line, echo, thinking, console)


def _whole(server, key, text, settings, chat, system) -> dict:
    path, body = request_body(text, settings, chat, system)
    with post(server, path, body, key) as response:
        return json.loads(response.read())


def _print_whole(index: int, text: str, reply: dict, chat: bool, as_json: bool, each_line: bool, echo: bool,
                 thinking: str = "show", console=None) -> None:
    choices = sorted(reply.get("choices", []), key=lambda c: c["index"])
    usage = reply.get("usage") or {}
    for sample, choice in enumerate(choices):
        output = choice["message"]["content"] if chat else choice["text"]
        reasoning = choice["message"].get("reasoning_content") if chat else None
        if as_json:
            json_line({"prompt": text, "text": output, **({"reasoning": reasoning} if reasoning is not None else {}),
                       "finish_reason": choice.get("finish_reason"),
                       "prompt_tokens": usage.get("prompt_tokens"),
                       "new_tokens": usage.get("completion_tokens") if len(choices) == 1 else None,
                       "sample": sample, "index": index})
        elif reasoning is None:
            write_out((text if echo else "") + (escape_line(output) if each_line else output) + "\n")
        else:
            view = ThinkingView(thinking, False, console is not None)
            write_out(text if echo else "")
            for part, dim in view.feed(AsWritten()(reasoning, output or "")) + view.finish():
                print_pieces([(escape_line(part) if each_line else part, dim)], write_out, console)
            write_out("\n")
    sys.stdout.flush()
