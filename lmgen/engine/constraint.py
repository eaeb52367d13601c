"""Constrained decoding: output that a JSON schema, a regular expression or a Lark grammar accepts.

The grammar engine is llguidance (``pip install "lmgen[structured]"``), imported only when a
constraint is used. A ``Constraint`` is what the user asked for; ``compile`` turns it into
llguidance's grammar for a model's tokenizer, checked once, and each output gets its own
``Matcher``. At every step the matcher gives the tokens that can continue a valid output;
the others get -inf before the penalties, temperature and filters (``restrict``). An
end-of-sequence token is allowed only once the output is complete, and an output ends when the
grammar is satisfied and nothing more can follow (``Matcher.stopped``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmgen.errors import CheckpointError, EnvironmentFailure, InputError
from lmgen.formats.files import parse_json, read_text
from lmgen.text.utf8 import utf8_text

KINDS = ("json_schema", "regex", "grammar")
OPTIONS = {"json_schema": "--json-schema", "regex": "--regex", "grammar": "--grammar"}
# JSON may be laid out as the model likes, but never with more than 20 blank characters in a
# row: a small model can otherwise spend its whole budget on whitespace. (A schema's own
# "x-guidance" options take precedence.)
JSON_OPTIONS = {"whitespace_pattern": r"[ \t\n\r]{0,20}"}


@dataclass(frozen=True)
class Constraint:
    kind: str  # one of KINDS
    text: str  # the schema (JSON text), the pattern, or the Lark grammar

    @classmethod
    def from_options(cls, json_schema: str | None = None, regex: str | None = None,
                     grammar: str | None = None) -> "Constraint | None":
        """The constraint the options ask for (None: none), checked (so that a bad one fails
        before any model loads). A schema is inline JSON or a file's path; a grammar is a file's
        path."""
        given = {kind: value for kind, value in zip(KINDS, (json_schema, regex, grammar)) if value is not None}
        if len(given) > 1:
            raise InputError(f"choose one of {', '.join(OPTIONS[k] for k in given)}")
        if not given:
            return None
        kind, value = given.popitem()
        inline = kind == "regex" or (kind == "json_schema" and _looks_like_json(value))
        if inline:
            utf8_text(value, OPTIONS[kind])
        if not inline:
            try:
                value = read_text(Path(value), "the file of " + OPTIONS[kind])
            except CheckpointError as exc:  # the user's own file: bad input, exit 2
                raise InputError(str(exc)) from None
        constraint = cls(kind, value)
        constraint.check()
        return constraint

    def describe(self) -> str:
        return OPTIONS[self.kind]

    def grammar(self) -> str:
        """llguidance's grammar for it (not yet checked)."""
        LLMatcher = _llguidance().LLMatcher
        if self.kind == "json_schema":
            try:
                schema = parse_json(self.text, "--json-schema")
            except CheckpointError as exc:
                raise InputError(f"{exc} (give a schema's JSON or a file's path)") from None
            if not isinstance(schema, (dict, bool)):
                raise InputError("--json-schema must be a JSON object (or true or false)")
            if schema is False:
                raise InputError("--json-schema false accepts no output at all")
            try:  # an escaped lone surrogate ("\ud800") parses, but no text can hold it
                json.dumps(schema, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise InputError("--json-schema holds a string that is not valid UTF-8 (a lone surrogate)") from None
            return LLMatcher.grammar_from_json_schema({} if schema is True else schema, defaults=JSON_OPTIONS)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.text)
        return LLMatcher.grammar_from_lark(self.text)

    def check(self, tokenizer=None) -> str:
        """The grammar, checked (for a tokenizer, or on its own before any model is loaded):
        one line naming the problem (InputError) if llguidance rejects it."""
        grammar = self.grammar()
        problem = _llguidance().LLMatcher.validate_grammar(grammar, tokenizer, limits=limits())
        if problem:
            raise InputError(f"{self.describe()}: {_one_line(problem, self.kind)}")
        return grammar


def _looks_like_json(value: str) -> bool:
    """A --json-schema given inline (an object, an array or a boolean), not a file's path."""
    return value.lstrip().startswith(("{", "[")) or value.strip() in ("true", "false")


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise EnvironmentFailure('structured output needs llguidance: pip install "lmgen[structured]"') from None
    return llguidance


def _one_line(message: str, kind: str) -> str:
    """llguidance's multi-line message as one line: the problem, the parser's detail, and for a
    grammar file where it is."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["rejected"]
    where = re.match(r"at (\d+)\((\d+)\): (.*)", lines[0])
    head = where.group(3) if where else lines[0]
    head = head.split(" (in ")[0].rstrip(":")
    detail = next((line[len("error: "):] for line in lines[1:] if line.startswith("error: ")), None)
    if where and kind == "grammar":
        head = f"line {where.group(1)}, column {where.group(2)}: {head}"
    return head + (f": {detail}" if detail else "")


class Compiled:
    """A constraint compiled for one model's tokenizer: makes a Matcher per output."""

    def __init__(self, constraint: Constraint, lm):
        self.tokenizer = _tokenizer(lm)
        self.vocab = lm.config.vocab_size
        self.grammar = constraint.check(self.tokenizer)
        # Built once here (llguidance builds its lexer then: up to a second for a hard pattern);
        # each output's matcher is a copy, so a row joining a batch never builds it again.
        self.pristine = _llguidance().LLMatcher(self.tokenizer, self.grammar, log_level=0, limits=limits())
        probe = self.matcher()
        probe.ll.unsafe_compute_mask_ptr(probe.bits.ctypes.data, probe.bits.nbytes)
        if probe.ll.is_error() or not probe.bits.any():
            raise InputError(f"{constraint.describe()} accepts no text that this model's tokens can make")

    def matcher(self) -> "Matcher":
        return Matcher(self.pristine.deep_copy(), self.vocab)


def limits():
    """llguidance's resource limits, with terse errors (its verbose ones dump the parser's state,
    which is no message for a user, nor for a client of the server)."""
    return _llguidance().LLParserLimits(verbose_errors=False)


def compiled(lm, constraint: Constraint) -> Compiled:
    """The constraint compiled for lm's tokenizer (once per model and constraint)."""
    cache = getattr(lm, "_compiled_constraints", None)
    if cache is None:
        cache = {}
        object.__setattr__(lm, "_compiled_constraints", cache)
    if constraint not in cache:
        cache[constraint] = Compiled(constraint, lm)
    return cache[constraint]


def _tokenizer(lm):
    """llguidance's view of the model's tokenizer (built once per model: ~0.25 s for 49k tokens)."""
    cached = getattr(lm, "_constraint_tokenizer", None)
    if cached is None:
        ll = _llguidance()
        known = sorted(i for i in lm.eos_ids if i < lm.tokenizer.vocab_size)  # (not an embedding's padding rows)
        cached = ll.LLTokenizer(lm.tokenizer.backend.to_str(), n_vocab=lm.config.vocab_size, eos_token=known or None)
        object.__setattr__(lm, "_constraint_tokenizer", cached)
    return cached


class Matcher:
    """One output's place in the grammar."""

    def __init__(self, matcher, vocab: int):
        self.ll, self.vocab = matcher, vocab
        self.bits = np.zeros((vocab + 31) // 32, dtype=np.int32)
        self.seconds = 0.0  # spent computing masks and advancing

    def restrict(self, logits):
        """logits (1, vocab) with -inf for every token that cannot come next."""
        import torch

        start = time.perf_counter()
        self.ll.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        self._check()
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.vocab]
        out = logits.masked_fill(torch.from_numpy(allowed == 0).to(logits.device), float("-inf"))
        self.seconds += time.perf_counter() - start
        return out

    def advance(self, token: int) -> None:
        start = time.perf_counter()
        self.ll.consume_token(token)
        self._check()
        self.seconds += time.perf_counter() - start

    @property
    def stopped(self) -> bool:
        """The output is complete and nothing more can follow it."""
        return self.ll.is_stopped()

    @property
    def complete(self) -> bool:
        """The output so far is one the constraint accepts."""
        return self.ll.is_accepting()

    def _check(self) -> None:
        if self.ll.is_error():  # only allowed tokens are consumed: a limit hit (too complex a constraint)
            raise ConstraintFailed(f"the constraint gave up: {_one_line(self.ll.get_error(), 'json_schema')}"[:300])


class ConstraintFailed(InputError):
    """A matcher that hit llguidance's limits on a step: its output ends, no other."""
