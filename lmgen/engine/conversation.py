"""A conversation with a chat model, turn after turn, reusing what the KV cache already holds.

Every turn the whole conversation is rendered with the model's chat template and tokenized, as
a one-shot prompt would be: the template decides everything. The KV cache is kept between turns
with the token ids whose keys and values it holds; a new turn prefills only the tokens after the
longest common prefix of the two (the new user message and the generation prompt, plus whatever
the template renders differently from what was generated). A reply cut short (Ctrl-C) stays in
the history, marked ``"cut": true``. When the conversation outgrows the context window, its
oldest exchanges are dropped (never the system message).
"""

from __future__ import annotations

from collections.abc import Iterator

from lmgen.engine.chat_history import ChatHistory, drop_oldest_exchange
from lmgen.engine.generation import Finished, GenerationSettings, LanguageModel, Token, check_logit_bias, events_alone
from lmgen.engine.prefix_cache import common_prefix
from lmgen.errors import InputError, LmgenError
from lmgen.text.reasoning import opens_thinking

REPLY_SHARE = 8  # of the context window, the most kept free for a reply


class Conversation(ChatHistory):
    def __init__(self, lm: LanguageModel, settings: GenerationSettings = GenerationSettings(),
                 system: str | None = None):
        lm.chat_template  # a model without one fails here, before the first turn
        check_logit_bias(lm, settings)  # (a turn's prompt ids are its own, not prompt_ids_for's)
        super().__init__(system)
        self.lm, self.settings = lm, settings
        self.cache = None
        self.cached_ids: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self.prefilled = 0  # tokens the last turn prefilled (its prompt's, less those reused)
        self.reused = 0  # tokens the last turn found in the cache
        self.dropped = 0  # exchanges the last turn dropped to fit the context window
        self.thinking = False  # the last turn's prompt opened a thinking block (its reply starts inside it)
        self.last: Finished | None = None  # the last complete reply's closing event

    def reply(self, user: str) -> Iterator[Token | Finished]:
        """The events of the assistant's reply to ``user``; the exchange joins the history."""
        self.messages.append({"role": "user", "content": user})
        tokens: list[int] = []
        done = None
        try:
            ids = self._fit()
        except LmgenError:  # it cannot be answered: as if it had not been said
            self.messages.pop()
            raise
        try:
            self.reused = min(common_prefix(self.cached_ids, ids), len(ids) - 1)
            self.cached_ids = self.cached_ids[: self.reused]  # the rest is about to be overwritten
            self.prefilled = len(ids) - self.reused
            budget = min(self.settings.max_new_tokens, self.lm.config.max_context - len(ids))
            cache = self._reserve(len(ids) + budget)
            for event in events_alone(self.lm, ids, self.settings, cache, self.reused):
                if isinstance(event, Token):
                    tokens.append(event.id)
                    self.cached_ids = ids + tokens[:-1]  # the last one is fed at the next step
                else:
                    done = self.last = event
                yield event
        finally:  # also when cut short (Ctrl-C, or the caller closing the events)
            text = done.output if done else self.lm.tokenizer.decode(tokens)
            self.answered(text, cut=done is None)

    def _fit(self) -> list[int]:
        """The conversation's prompt ids. The reply's budget shrinks to what the context window
        leaves; only when that is less than ``reply_room`` are the oldest exchanges dropped."""
        context, room = self.lm.config.max_context, self.reply_room()
        messages, dropped = list(self.messages), 0  # the conversation changes only if the message fits
        while True:
            text = self.lm.chat_template.render(messages)
            ids = self.lm.encode_prompt(text)
            if len(ids) + room <= context or not drop_oldest_exchange(messages):
                if len(ids) >= context:
                    raise InputError(f"the message has {len(ids)} tokens with what must stay of the conversation "
                                     f"but the context window holds {context}; send a shorter message")
                self.messages, self.dropped, self.thinking = messages, dropped, opens_thinking(text)
                return ids
            dropped += 1

    def reply_room(self) -> int:
        """Tokens kept free for a reply before old exchanges are dropped: max-new-tokens, but at
        most an eighth of the context (a large -n shortens the reply, never the memory)."""
        return min(self.settings.max_new_tokens, max(1, self.lm.config.max_context // REPLY_SHARE))

    def _reserve(self, length: int):
        """The KV cache, grown (its filled part kept) to hold ``length`` positions."""
        self.cache = self.lm.model.grow_cache(self.cache, length)
        return self.cache
