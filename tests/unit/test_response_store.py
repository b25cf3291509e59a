"""The Responses API's store: per key, bounded in entries and in characters."""

from server.response_store import ResponseStore

TURN = [{"role": "user", "content": "x" * 100}]


def test_only_the_owner_continues_and_the_oldest_go_first():
    store = ResponseStore(max_entries=2)
    store.put(b"a", "r1", TURN)
    store.put(b"a", "r2", TURN)
    assert store.get(b"b", "r1") is None and store.get(b"a", "r1") == TURN
    store.put(b"a", "r3", TURN)  # r2 is now the oldest used
    assert store.get(b"a", "r2") is None and len(store) == 2


def test_the_characters_held_are_bounded_whatever_one_key_sends():
    store = ResponseStore(max_entries=1000, max_chars=1000)
    for i in range(50):
        store.put(b"attacker", f"r{i}", TURN)
    assert len(store) <= 8  # each entry is over 100 characters
    store.put(b"attacker", "huge", [{"role": "user", "content": "x" * 5000}])
    assert store.get(b"attacker", "huge") is None and store.get(b"attacker", "r49") == TURN
