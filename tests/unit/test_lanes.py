"""The engine lanes of a LoRA server: a prompt-log-probability request runs alone."""

import asyncio

from server.lanes import EngineLanes


def run(lanes: EngineLanes, plan: list[tuple[str, bool, float]]) -> list[tuple[str, str]]:
    """Each (name, alone, seconds) holds the engine that long; the order of enter and leave."""
    events: list[tuple[str, str]] = []

    async def one(name: str, alone: bool, seconds: float, delay: float) -> None:
        await asyncio.sleep(delay)
        async with lanes.enter(alone):
            events.append(("in", name))
            await asyncio.sleep(seconds)
            events.append(("out", name))

    async def main() -> None:
        await asyncio.gather(*(one(n, a, s, 0.01 * i) for i, (n, a, s) in enumerate(plan)))

    asyncio.run(main())
    return events


def test_an_exclusive_request_waits_for_the_engine_to_empty_and_holds_it_alone():
    events = run(
        EngineLanes(exclusive_needed=True),
        [("a", False, 0.1), ("b", False, 0.1), ("x", True, 0.1), ("c", False, 0.05)],
    )
    x_in, x_out = events.index(("in", "x")), events.index(("out", "x"))
    assert events.index(("out", "a")) < x_in and events.index(("out", "b")) < x_in
    assert events[x_in + 1] == ("out", "x")  # nobody entered while it ran
    assert events.index(("in", "c")) > x_out  # a later request waited for it, not before it


def test_two_exclusive_requests_never_overlap():
    events = run(EngineLanes(exclusive_needed=True), [("x", True, 0.05), ("y", True, 0.05)])
    assert events == [("in", "x"), ("out", "x"), ("in", "y"), ("out", "y")]


def test_without_lora_everything_shares_the_engine():
    events = run(EngineLanes(exclusive_needed=False), [("x", True, 0.1), ("y", True, 0.1)])
    assert events[:2] == [("in", "x"), ("in", "y")]
