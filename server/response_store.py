"""Stored responses for ``previous_response_id``: in memory, bounded, per API key.

A stored response is the conversation it ended (chat messages, its own answer included), so a
follow-up request continues it. Only the key that created a response can continue it (without
keys, every client shares one space). The oldest entries go first past ``max_entries`` or past
``max_chars`` characters in all (so no key holder can make it hold more memory than that); a
restart forgets them all (clients then get a 404 and can resend the whole input).
"""

import json
from collections import OrderedDict
from typing import Any

MAX_CHARS = 64 * 2**20  # characters of all stored conversations together


class ResponseStore:
    def __init__(self, max_entries: int, max_chars: int = MAX_CHARS) -> None:
        self.max_entries, self.max_chars = max_entries, max_chars
        self._entries: OrderedDict[tuple[bytes, str], tuple[list[dict[str, Any]], int]] = (
            OrderedDict()
        )
        self._chars = 0

    def put(self, owner: bytes, response_id: str, messages: list[dict[str, Any]]) -> None:
        size = len(json.dumps(messages, ensure_ascii=False, default=str))
        if self.max_entries == 0 or size > self.max_chars:
            return
        self._entries[(owner, response_id)] = (messages, size)
        self._chars += size
        while len(self._entries) > self.max_entries or self._chars > self.max_chars:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._chars -= dropped

    def get(self, owner: bytes, response_id: str) -> list[dict[str, Any]] | None:
        entry = self._entries.get((owner, response_id))
        if entry is None:
            return None
        self._entries.move_to_end((owner, response_id))
        return entry[0]

    def __len__(self) -> int:
        return len(self._entries)
