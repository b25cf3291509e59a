"""Stored responses for ``previous_response_id``: in memory, bounded, per API key.

A stored response is the conversation it ended (chat messages, its own answer included), so a
follow-up request continues it. Only the key that created a response can continue it (without
keys, every client shares one space). The oldest entries go first past ``max_entries``; a
restart forgets them all (clients then get a 404 and can resend the whole input).
"""

from collections import OrderedDict
from typing import Any


class ResponseStore:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[bytes, str], list[dict[str, Any]]] = OrderedDict()

    def put(self, owner: bytes, response_id: str, messages: list[dict[str, Any]]) -> None:
        if self.max_entries == 0:
            return
        self._entries[(owner, response_id)] = messages
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, owner: bytes, response_id: str) -> list[dict[str, Any]] | None:
        messages = self._entries.get((owner, response_id))
        if messages is not None:
            self._entries.move_to_end((owner, response_id))
        return messages

    def __len__(self) -> int:
        return len(self._entries)
