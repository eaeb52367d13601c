"""Prompt-lookup drafts: the tokens that followed the last time the text ended as it does now.

Output that repeats its input — an edited paragraph, a quote, a fixed code snippet — can be
guessed from the input itself (transformers' ``prompt_lookup_num_tokens``, llama.cpp's lookup
decoding): find the most recent earlier occurrence of the last few tokens (3, else 2, else 1)
in the prompt and the output so far, and draft the tokens that followed it. The engine checks a
draft in one decode step (``batching.Engine``) and keeps what the model itself would have
chosen, so a draft can cost a little time but never change the output.

Every n-gram is indexed as its tokens arrive (where it last ended), so a draft costs a few dict
lookups whatever the length of the text.

Checking a draft is not free: each drafted token is one more row of the decode step, about
``ROW_COST`` of a one-row step here (a 9-row step took 4.3 times a 1-row one). So each text keeps
an estimate of how often its drafts' tokens are accepted (counts that halve at each draft, so it follows
the text: a quote, then free prose), drafts only tokens whose chance of being reached is worth
their row (p^i > ROW_COST for the i-th), and only from suffixes of two tokens or more (a
one-token match is a guess). Where drafts keep failing it stops drafting; the fading brings it
back to a one-token try now and then.
"""

from __future__ import annotations

import math

NGRAMS = (3, 2)  # the suffix lengths tried, longest first
# A decode step's time per extra row, in one-row steps (measured: 1 row 4.2 ms, 9 rows 18.0).
# With AMX tiles a 9-row step costs less (6.3 -> 16.5 ms: 0.2 a row), but drafting more eagerly
# lost there (bench_lookup at 0.25: edit 0.94x, fix code 0.90x, against 1.11x and 1.01x at 0.45).
ROW_COST = 0.45
FADE = 0.5  # the weight the acceptance counts keep at each checked draft: the last few drafts decide
DRIFT = 0.03  # added to the accepted count at each step without a draft, while the odds are below even


class PromptLookup:
    def __init__(self, ids: list[int], limit: int):
        self.limit = limit  # tokens drafted at most
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest earlier occurrence ended
        self.accepted, self.rejected = 1.0, 1.0  # fading counts of drafted tokens taken and drafts cut short
        for token in ids:
            self.add(token)

    def add(self, token: int) -> None:
        """The next token of the text. The n-grams ending just before it become findable: a
        draft looks for where the current suffix occurred *before*."""
        tokens = self.tokens
        end = len(tokens)
        for n in NGRAMS:
            if end >= n:
                self.ends[tuple(tokens[end - n : end])] = end
        tokens.append(token)

    def worth(self) -> int:
        """Tokens worth drafting: those whose chance of being reached, p^i, beats a row's cost."""
        p = self.accepted / (self.accepted + self.rejected)
        if p <= ROW_COST:
            return 0
        return self.limit if p >= 1 else min(self.limit, int(math.log(ROW_COST) / math.log(p)))

    def checked(self, drafted: int, accepted: int) -> None:
        """A step drafted ``drafted`` tokens and the model took the first ``accepted``. With no
        draft there is no evidence: the odds drift back towards even, so that a text whose drafts
        kept failing tries one token again some 20-30 steps later (a failed try costs about half
        a step: under 2% of the time)."""
        if drafted:
            self.accepted = FADE * self.accepted + accepted
            self.rejected = FADE * self.rejected + (accepted < drafted)
        elif self.accepted < self.rejected:
            self.accepted += DRIFT

    def draft(self, room: int) -> list[int]:
        """Up to min(limit, room, what is worth it) tokens that followed the latest earlier
        occurrence of the longest suffix (3 tokens, else 2) found; [] when there is none."""
        count = min(room, self.worth())
        if count <= 0:
            return []
        tokens = self.tokens
        for n in NGRAMS:
            if len(tokens) > n and (end := self.ends.get(tuple(tokens[-n:]))) is not None:
                return tokens[end : end + count]
        return []
