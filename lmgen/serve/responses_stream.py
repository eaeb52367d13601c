"""The Responses API's stream: a reply's parts as the typed server-sent events OpenAI sends.

``response.created`` and ``response.in_progress`` open it; each output item is announced
(``response.output_item.added``), filled (``response.reasoning_text.delta``,
``response.output_text.delta``, ``response.function_call_arguments.delta``) and closed (its
``….done`` events, then ``response.output_item.done``); ``response.completed`` (or
``response.incomplete``) carries the whole Response, the same as the one a request without
``stream`` gets. An error ends the stream with an ``error`` event.
"""

from __future__ import annotations

from lmgen.serve import responses_api as shapes
from lmgen.serve.replies import api_error, pieces, sse


class _Events:
    def __init__(self):
        self.number = 0
        self.items: list[dict] = []  # the output so far
        self.open: dict | None = None  # the item being filled (reasoning or message)

    def event(self, kind: str, **fields) -> str:
        self.number += 1
        return sse({"type": kind, "sequence_number": self.number, **fields}, kind)

    def _at(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self.items.index(item)}

    def start(self, item: dict) -> list[str]:
        self.items.append(item)
        out = [self.event("response.output_item.added", output_index=len(self.items) - 1, item=item)]
        if item["type"] == "message":
            out.append(self.event("response.content_part.added", **self._at(item), content_index=0,
                                  part=item["content"][0]))
        return out

    def text(self, kind: str, text: str) -> list[str]:
        """A piece of reasoning or answer: into the open item of its kind (opening one)."""
        want = "reasoning" if kind == "reasoning" else "message"
        out = [] if self.open and self.open["type"] == want else self.close()
        if not self.open:
            self.open = shapes.reasoning_item("") if want == "reasoning" else \
                {**shapes.message_item(""), "status": "in_progress"}
            out += self.start(self.open)
        self.open["content"][0]["text"] += text
        delta = "response.reasoning_text.delta" if want == "reasoning" else "response.output_text.delta"
        extra = {} if want == "reasoning" else {"logprobs": []}
        return out + [self.event(delta, **self._at(self.open), content_index=0, delta=text, **extra)]

    def close(self) -> list[str]:
        item, self.open = self.open, None
        if item is None:
            return []
        part, at = item["content"][0], self._at(item)
        if item["type"] == "reasoning":
            out = [self.event("response.reasoning_text.done", **at, content_index=0, text=part["text"])]
        else:
            item["status"] = "completed"
            out = [self.event("response.output_text.done", **at, content_index=0, text=part["text"], logprobs=[]),
                   self.event("response.content_part.done", **at, content_index=0, part=part)]
        return out + [self.event("response.output_item.done", output_index=at["output_index"], item=item)]

    def call(self, call) -> list[str]:
        item = shapes.call_item(call)
        out = self.close() + self.start({**item, "arguments": "", "status": "in_progress"})
        self.items[-1] = item
        at = self._at(item)
        return out + [self.event("response.function_call_arguments.delta", **at, delta=call.arguments),
                      self.event("response.function_call_arguments.done", **at, arguments=call.arguments),
                      self.event("response.output_item.done", output_index=at["output_index"], item=item)]


async def stream(ctx, ticket, shape, ident: str, body: dict, chat, on_close):
    events, prompt = _Events(), len(ticket.job.ids)
    try:
        started = shapes.response(ident, ctx.name, body, chat, [], None, prompt)
        yield events.event("response.created", response=started)
        yield events.event("response.in_progress", response=started)
        async for kind, value in pieces(ctx, ticket, shape):
            if kind == "done":
                for line in events.close():
                    yield line
                if not events.items:  # an empty reply is still a message, as the whole reply has
                    for line in events.text("content", "") + events.close():
                        yield line
                final = shapes.response(ident, ctx.name, body, chat, events.items, value, prompt)
                name = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
                yield events.event(name, response=final)
                return
            lines = [line for call in value for line in events.call(call)] if kind == "calls" else \
                events.text(kind, value)
            for line in lines:
                yield line
    except Exception as exc:  # the engine's error for this ticket (or the model's)
        error = api_error(exc)
        yield events.event("error", code=error.code, message=error.message, param=error.param)
    finally:
        on_close()
