"""A chat's messages and the commands that change them (/reset, /system, /undo, /save, /load):
plain lists, no model, so that a conversation held here (``Conversation``) and one whose replies
come from a server (``chat --server``) share them."""

from __future__ import annotations

import json
from pathlib import Path

from lmgen.errors import InputError
from lmgen.formats.files import read_json
from lmgen.text.chat import check_messages


def drop_oldest_exchange(messages: list[dict]) -> bool:
    """Remove the oldest exchange (a user turn and its replies; never the system message, nor the
    last user turn) from ``messages``; False when there is none to remove."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    later_user = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"), None)
    if later_user is None:
        return False
    del messages[first:later_user]
    return True


class ChatHistory:
    def __init__(self, system: str | None = None):
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def answered(self, text: str, cut: bool = False) -> None:
        """The assistant's reply joins the history; one cut short (Ctrl-C) is marked so."""
        self.messages.append({"role": "assistant", "content": text, **({"cut": True} if cut else {})})

    def reset(self) -> None:
        """A new conversation (the system message kept)."""
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]

    def undo(self) -> bool:
        """Drop the last exchange (the last user turn and what followed it); False if there is none."""
        last_user = next((i for i in range(len(self.messages) - 1, -1, -1) if self.messages[i]["role"] == "user"), None)
        if last_user is None:
            return False
        del self.messages[last_user:]
        return True

    def set_system(self, text: str) -> None:
        rest = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": text}] if text else []) + rest

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.messages, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    def load(self, path: Path) -> None:
        messages = read_json(path, "conversation", expect=list)
        try:
            check_messages(messages)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        self.messages = messages
