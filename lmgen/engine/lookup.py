"""Prompt-lookup drafts: the tokens that followed the last time the text ended as it does now.

Output that repeats its input — an edited paragraph, a quote, a fixed code snippet — can be
guessed from the input itself (transformers' ``prompt_lookup_num_tokens``, llama.cpp's lookup
decoding): find the most recent earlier occurrence of the last few tokens (3, else 2, else 1)
in the prompt and the output so far, and draft the tokens that followed it. The engine checks a
draft in one decode step (``batching.Engine``) and keeps what the model itself would have
chosen, so a draft can cost a little time but never change the output.

Every n-gram is indexed as its tokens arrive (where it last ended), so a draft costs a few dict
lookups whatever the length of the text.
"""

from __future__ import annotations

NGRAMS = (3, 2, 1)  # the suffix lengths tried, longest first


class PromptLookup:
    def __init__(self, ids: list[int], limit: int):
        self.limit = limit  # tokens drafted at most
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest earlier occurrence ended
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

    def draft(self, room: int) -> list[int]:
        """Up to min(limit, room) tokens that followed the latest earlier occurrence of the
        longest suffix (3 tokens, else 2, else 1) found; [] when there is none."""
        count = min(self.limit, room)
        if count <= 0:
            return []
        tokens = self.tokens
        for n in NGRAMS:
            if len(tokens) > n and (end := self.ends.get(tuple(tokens[-n:]))) is not None:
                return tokens[end : end + count]
        return []
