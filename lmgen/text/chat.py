"""Chat templates: render messages into a prompt the way transformers does.

The template comes from the checkpoint directory: ``chat_template.jinja``, or ``chat_template`` in
``tokenizer_config.json`` (a GGUF import writes it there from ``tokenizer.chat_template``). It renders
with the same settings and helpers as transformers' ``apply_chat_template``.

A template is code from a stranger. jinja2's sandbox keeps it from Python's insides, not from all the
memory and time there is (``'x' * 10**10``, loops in loops over ``range(100000)``), so this sandbox
sizes up values before each operation that can grow them, caps the output and stops after MAX_SECONDS.
Any failure is the model's (a CheckpointError) but ``raise_exception``: the template refusing the
conversation (an InputError). Not bounded: one filter or str method that multiplies two allowed inputs
(replace, join, indent, expandtabs with a long argument) can make up to the cap squared in one C call,
out of reach of checks and alarm; Python refuses what it cannot allocate (a MemoryError).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache, wraps
from pathlib import Path

from lmgen.errors import CheckpointError, InputError
from lmgen.formats.files import read_json, read_text
from lmgen.text.utf8 import utf8_text

MAX_TEMPLATE_CHARS = 1_000_000  # real templates are a few KB, tool-heavy ones tens of KB
MAX_OUTPUT = 1_000_000  # characters a template may make, plus MESSAGE_COPIES times the messages
MESSAGE_COPIES = 4  # a template may show a message more than once
MAX_INT_BITS = 4096  # template ints are counters and indices
MAX_SECONDS = 2.0  # real templates take milliseconds
PADDING_CALLS = {"center", "ljust", "rjust", "zfill", "wordwrap", "batch", "slice"}  # an int is a width
FORMAT_FIELD = re.compile(r"%(?:\([^)]*\))?[^a-zA-Z%]*|\{[^{}]*\}")  # '%099d', '{:>99}': widths inside


def find_template(root: Path) -> tuple[str, dict]:
    """(template source, tokenizer_config) for a checkpoint directory."""
    config_path, jinja_file = root / "tokenizer_config.json", root / "chat_template.jinja"
    config = read_json(config_path, "tokenizer config") if os.path.lexists(config_path) else {}
    if os.path.lexists(jinja_file):  # a FIFO or a device there is refused, never opened
        return read_text(jinja_file, "chat template", MAX_TEMPLATE_CHARS), config
    where, template = f"chat_template in {config_path}", config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template):
            raise CheckpointError(f"{where} must be a list of {{name, template}} entries with string templates")
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{where} must be a string, not {type(template).__name__}")
    if not template:
        raise InputError(f"{root} has no chat template (chat_template.jinja or tokenizer_config.json); "
                         "use lmgen generate without --chat to continue plain text")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise CheckpointError(f"{where} is longer than {MAX_TEMPLATE_CHARS} characters")
    return template, config


class _Limit(BaseException):
    """A template went past a limit. Not an Exception, which jinja2 catches in places."""


class _Refused(Exception):
    """The template called raise_exception: it does not take this conversation."""


def _raise_exception(message):
    raise _Refused(message)


_budget = ContextVar("chat_budget", default=(float("inf"), MAX_OUTPUT))  # (deadline, cap) of a rendering


def _check(size: int = 0) -> None:
    """Stop a template past its deadline, or before it makes a value of ``size`` over the cap."""
    deadline, cap = _budget.get()
    if time.monotonic() > deadline:
        raise _Limit(f"it ran longer than {MAX_SECONDS:g} s")
    if size > cap:
        raise _Limit(f"it would make a value of over {cap} characters")


def _weight(value) -> int:
    """About how long str(value) is, without making it, capped just past the cap. It looks inside
    lists, dicts and namespaces: one holding a long string many times prints far more than it stores.
    Each container is sized once (by identity), so ``[x, x]`` doubled n times costs n steps, not 2^n."""
    cap = _budget.get()[1]
    sizes: dict[int, int] = {}
    open_ = set()  # containers being sized: one that holds itself counts 1 there
    stack = [value]
    while stack:
        item = stack[-1]
        kids = _parts(item)
        open_.add(id(item))
        pending = [k for k in kids or () if _parts(k) is not None and id(k) not in sizes and id(k) not in open_]
        if pending:
            stack += pending
            continue
        stack.pop()
        open_.discard(id(item))
        size = _leaf(item) if kids is None else 1 + sum(sizes.get(id(k), 1) if _parts(k) is not None else _leaf(k)
                                                        for k in kids)
        sizes[id(item)] = min(size, cap + 1)
    return sizes[id(value)]


def _parts(item) -> list | None:
    """What a container prints (None for a leaf)."""
    from jinja2.utils import Namespace

    if isinstance(item, Mapping):
        return [*item.keys(), *item.values()]
    if isinstance(item, Namespace):
        return [item._Namespace__attrs]  # prints as <Namespace {...}>
    if isinstance(item, Collection) and not isinstance(item, (str, range, bytes)):
        return list(item)
    return None


def _leaf(item) -> int:
    return len(item) if isinstance(item, str) else item.bit_length() // 3 + 1 if isinstance(item, int) else 1


def _check_binop(operator: str, left, right) -> None:
    """Refuse ``*``, ``**``, ``+`` and ``%`` whose result would be too large, before making it."""
    _check()
    ints = isinstance(left, int) and isinstance(right, int)
    if operator in ("*", "**") and ints and abs(left) > 1:
        bits = left.bit_length() + right.bit_length() if operator == "*" else left.bit_length() * right
        if bits > MAX_INT_BITS:
            raise _Limit(f"it would make an integer of over {MAX_INT_BITS} bits")
    elif operator == "*" and not ints:
        for seq, times in ((left, right), (right, left)):
            if isinstance(times, int) and isinstance(seq, (str, list, tuple)):
                _check(_weight(seq) * times)
    elif operator == "+" and not ints:
        _check(_weight(left) + _weight(right))
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right)


def _check_format(text: str, values=()) -> None:
    """Format fields pad to any width ('%0999999999d', '{:>999999999}'): add the widths up first."""
    if re.search(r"%[^a-zA-Z%]*\*|\{[^{}]*:[^{}]*\{", text):  # '%*d', '{:{}}'
        raise _Limit("its format string takes a width from an argument")
    widths = sum(int(d) for field in FORMAT_FIELD.findall(text) for d in re.findall(r"\d+", field))
    _check(len(text) + widths + _weight(values))


def _checked_call(name: str, func, values: list, /, *args, **kwargs):
    """func(*args, **kwargs), a call or a filter, after checking the time, the size of its inputs
    (values) and the width it pads to, and before handing back a result that is not too large."""
    _check(sum(map(_weight, values)))
    if name == "format" and isinstance(values[0], str):  # the format filter is the % operator
        _check_format(values[0], values[1:])
    elif name in PADDING_CALLS:
        _check(max((abs(v) for v in values if isinstance(v, int)), default=0))
    result = func(*args, **kwargs)
    if isinstance(result, Collection) and not isinstance(result, range):
        _check(_weight(result))
    return result


def _collect(chunks) -> str:
    """Join text as it comes and stop once it passes the cap: a template can print forever."""
    parts, size, cap = [], 0, _budget.get()[1]
    for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise _Limit(f"its output passed {cap} characters")
        _check()
        parts.append(chunk)
    return "".join(parts)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' tojson (no HTML escaping), made piece by piece under the cap: a wide indent on
    every line of a deep value would be a memory bomb."""
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return _collect(encoder.iterencode(value))


@lru_cache(maxsize=1)
def _sandbox():
    """The environment, made on first use: importing jinja2 would slow the start of every command."""
    from jinja2 import nodes
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import _PassArg
    from jinja2.visitor import NodeTransformer

    def guarded(name, args):  # a call of environment.<name>(*args), checked like any call
        return nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None, lineno=args[0].lineno)

    class Guards(NodeTransformer):
        """Route each loop, each ``~`` (else a bare str_join) and each list, tuple or dict literal
        through call: ``[x, x]`` doubled in a loop would print 2**n copies of x."""

        def generic_visit(self, node):
            node = super().generic_visit(node)
            if isinstance(node, nodes.For):
                node.iter = guarded("guarded_iter", [node.iter])
            elif isinstance(node, nodes.Concat):
                return guarded("guarded_concat", node.nodes)
            elif isinstance(node, (nodes.List, nodes.Dict)) or isinstance(node, nodes.Tuple) and node.ctx == "load":
                return guarded("guarded_value", [node])
            return node

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})  # this also keeps them from folding

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):
            text = [__obj.__self__] if isinstance(getattr(__obj, "__self__", None), str) else []  # of a str method
            values = [*text, *args, *(v for k, v in kwargs.items() if k[:1] != "_")]  # not _loop_vars
            name = __obj.__name__ if text else ""
            return _checked_call(name, super().call, values, __context, __obj, *args, **kwargs)

        def wrap_str_format(self, value):  # str.format and format_map: checked when looked up
            if (wrapper := super().wrap_str_format(value)) is not None:
                _check_format(value.__self__)
            return wrapper

        def concat(self, parts):  # the buffers of macros, call blocks and {% set %} blocks
            return _collect(parts)

        def guarded_iter(self, items):
            for item in items:
                _check()
                yield item

        guarded_concat = staticmethod(lambda *parts: "".join(map(str, parts)))
        guarded_value = staticmethod(lambda value: value)

        def _parse(self, source, name, filename):
            return Guards().visit(super()._parse(source, name, filename)).set_environment(self)

    def guard(name, func):  # a filter checked like a call; a context or environment may come first
        skip = _PassArg.from_obj(func) is not None
        return wraps(func)(lambda *args, **kw: _checked_call(name, func, [*args[skip:], *kw.values()], *args, **kw))

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    for name in ("striptags", "urlize"):  # HTML helpers with regexes that take quadratic time
        del env.filters[name]
    env.filters = {name: guard(name, func) for name, func in env.filters.items()}
    del env.globals["lipsum"]  # a Python loop as long as it is asked to be
    env.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


@lru_cache(maxsize=8)
def _compile(source: str):
    return _sandbox().from_string(source)


@contextmanager
def _alarm(seconds: float):
    """A SIGALRM after ``seconds``, which also stops what passes no check (a regex, a Python loop
    in a filter). Only in the main thread and with no other timer set, as that would be lost;
    elsewhere the checks in each operation, call, loop step and piece of output stop the template."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer") \
            or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def on_alarm(signum, frame):  # one shot, so put the old handler back first: the _Limit may
        signal.signal(signal.SIGALRM, previous)  # cut short the unwinding that would do it
        raise _Limit(f"it ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    previous = signal.SIG_DFL if previous is None else previous
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGALRM) is on_alarm:  # it has not gone off
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class ChatTemplate:
    """A model's chat template, read once (``LanguageModel.chat_template``), rendered per call."""

    def __init__(self, root: Path):
        self.root = root
        source, config = find_template(root)
        self.source = source
        self.special = {k: v.get("content") if isinstance(v, dict) else v  # a dict is a serialized AddedToken
                        for k, v in config.items() if k.endswith("_token") and not k.startswith("add_")}

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None,
               options: dict | None = None) -> str:
        """The prompt text for a conversation (``[{"role": ..., "content": ...}, ...]``, with
        ``tool_calls`` on assistant turns where there were some), ready to generate the next
        assistant turn. ``tools`` reach the template as transformers passes them; ``options``
        are the request's own template variables (``enable_thinking``, say)."""
        check_messages(messages)
        size = sum(len(m["content"]) for m in messages) + len(json.dumps([tools, options, [
            m.get("tool_calls") for m in messages]], default=str))
        token = _budget.set((time.monotonic() + MAX_SECONDS, MAX_OUTPUT + MESSAGE_COPIES * size))
        failed = f"the chat template in {self.root} failed"
        try:
            with _alarm(MAX_SECONDS):
                variables = {**(options or {}), **self.special, "messages": messages,
                             "add_generation_prompt": add_generation_prompt}
                if tools:
                    variables["tools"] = tools
                return _collect(_compile(self.source).generate(**variables))
        except _Refused as exc:
            raise InputError(f"the chat template in {self.root} refused: {_one_line(exc)}") from None
        except _Limit as exc:
            raise CheckpointError(f"{failed}: {exc}") from None
        except Exception as exc:  # a syntax error, a division by zero, a recursion without end...
            raise CheckpointError(f"{failed}: {type(exc).__name__}: {_one_line(exc)}") from None
        finally:
            _budget.reset(token)


def messages_of(user: str, system: str | None = None) -> list[dict]:
    """One user turn, after a system message if there is one."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def check_messages(messages) -> None:
    """Messages as the chat templates take them: a list of {"role": str, "content": str}."""
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise InputError('messages must be a list of {"role": ..., "content": ...} with string values')
    for m in messages:
        utf8_text(m["role"] + m["content"], f"a {m['role'][:20]!r} message")


def render_chat(root: Path, user: str, system: str | None = None) -> str:
    """The prompt text for one user turn (and an optional system message), ready to generate."""
    return ChatTemplate(root).render(messages_of(user, system))


def _one_line(text) -> str:
    return " ".join(str(text).split())[:500]
