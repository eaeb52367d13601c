"""``chat --server URL``: the conversation kept here, each reply streamed from a running
OpenAI-compatible server (the whole conversation sent every turn, as OpenAI's API has it; lmgen's
server finds the earlier turns in its prefix cache). Without torch or the model code.

The events are the ones a local ``Conversation`` yields (``Token`` per piece of text, then a
``Finished`` built from the API's usage), so the read–reply loop prints the same. A conversation
too long for the server's context loses its oldest exchanges, as locally; a message that cannot
fit even alone leaves the conversation as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from lmgen.cli.remote import Refused, chunks, post, settings_fields
from lmgen.cli.thinking import AsWritten
from lmgen.engine.chat_history import ChatHistory, drop_oldest_exchange
from lmgen.engine.events import Finished, Token
from lmgen.errors import EnvironmentFailure, LmgenError


class RemoteConversation(ChatHistory):
    def __init__(self, server: str, key: str | None, settings, system: str | None = None):
        super().__init__(system)
        self.server, self.key = server, key
        self.fields = {**settings_fields(settings), "n": 1, "stream": True, "stream_options": {"include_usage": True}}
        self.reused = 0  # prompt tokens the server found in its cache (usage.prompt_tokens_details)
        self.prefilled = 0
        self.dropped = 0  # exchanges the last turn dropped to fit the server's context window
        self.last: Finished | None = None  # the last complete reply's closing event

    def reply(self, user: str) -> Iterator[Token | Finished]:
        """The events of the assistant's reply to ``user``; the exchange joins the history."""
        self.messages.append({"role": "user", "content": user})
        try:
            response = self._send()
        except LmgenError:  # it cannot be answered: as if it had not been said
            self.messages.pop()
            raise
        pieces: list[str] = []  # the answer's (what the history keeps, as before thinking models)
        self.last = None
        try:
            yield from self._events(response, pieces)
        finally:  # also when cut short (Ctrl-C, or the caller closing the events)
            response.close()
            self.answered("".join(pieces), cut=self.last is None)

    def _send(self):
        """The open streaming response; old exchanges dropped while the server says the
        conversation is longer than its context window."""
        messages, dropped = list(self.messages), 0
        while True:
            try:
                response = post(self.server, "/v1/chat/completions", {**self.fields, "messages": messages}, self.key)
            except Refused as exc:
                if exc.code != "context_length_exceeded" or not drop_oldest_exchange(messages):
                    raise
                dropped += 1
                continue
            self.messages, self.dropped = messages, dropped
            return response

    def _events(self, response, pieces: list[str]) -> Iterator[Token | Finished]:
        """The reply's events. A thinking model's reasoning, which the server sends apart
        (``reasoning_content``), comes as a ``<think>`` block before the answer, as the model wrote
        it, so that --thinking and the records split it as locally."""
        start, first, reason, usage = time.perf_counter(), None, "stop", {}
        as_written, written = AsWritten(), []
        for chunk in chunks(response):
            if "error" in chunk:
                raise EnvironmentFailure(f"the server at {self.server} failed: {chunk['error'].get('message')}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                content = delta.get("content") or ""
                text = as_written(delta.get("reasoning_content") or "", content)
                reason = choice.get("finish_reason") or reason
                if text:
                    first = first or time.perf_counter()
                    pieces.append(content)
                    written.append(text)
                    yield Token(id=-1, text=text)
        end = time.perf_counter()
        first = first or end
        prompt_tokens = usage.get("prompt_tokens") or 0
        self.reused = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        self.prefilled = prompt_tokens - self.reused
        self.last = Finished(reason=reason, text="", prompt_tokens=prompt_tokens,
                             new_tokens=usage.get("completion_tokens") or len(written), prefill_seconds=first - start,
                             decode_seconds=end - first, output="".join(written), cached_tokens=self.reused)
        yield self.last
