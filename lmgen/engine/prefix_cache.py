"""Keys and values of recent sequences, kept for the next prompt that starts the same way.

Chat clients resend the whole conversation every turn, and many requests share a system
prompt: the keys and values of those tokens were computed by an earlier request. When a row
finishes, the engine stores what its cache holds (the prompt and the tokens fed after it) under
those token ids; a new prompt copies the longest common prefix of ids into its row and prefills
only the rest. Entries are evicted least recently used first, to stay within ``capacity`` bytes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


def common_prefix(a, b) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    def __init__(self, capacity: int):
        self.capacity = capacity  # bytes of keys and values held at most
        self.entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.held = 0  # bytes held now

    def longest(self, ids: list[int]) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(n, keys, values) of the entry sharing the most leading ids with ``ids``: keys and
        values of shape (layers, kv_heads, ≥ n, head_dim), of which the first n positions are
        ``ids[:n]``'s. (0, None, None) when no entry starts like ``ids``."""
        best, found = 0, None
        for key in self.entries:
            n = common_prefix(key, ids)
            if n > best:
                best, found = n, key
        if found is None:
            return 0, None, None
        self.entries.move_to_end(found)  # used: the last to be evicted
        return (best, *self.entries[found])

    def put(self, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep a copy of ``k`` and ``v`` (layers, kv_heads, len(ids), head_dim) under ``ids``. An
        entry whose ids are a prefix of these is replaced (this one serves every prompt it served)."""
        key = tuple(ids)
        size = 2 * k.numel() * k.element_size()
        if not key or size > self.capacity:
            return
        holder = next((old for old in self.entries if old[: len(key)] == key), None)
        if holder is not None:  # an entry already holds these (and perhaps more)
            self.entries.move_to_end(holder)
            return
        for old in [old for old in self.entries if key[: len(old)] == old]:
            self._evict(old)
        while self.held + size > self.capacity:
            self._evict(next(iter(self.entries)))
        self.entries[key] = (k.clone(), v.clone())
        self.held += size

    def _evict(self, key: tuple[int, ...]) -> None:
        k, v = self.entries.pop(key)
        self.held -= 2 * k.numel() * k.element_size()
