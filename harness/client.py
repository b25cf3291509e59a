"""What tests and benchmarks read from a server again and again: metric samples, streamed
events, comma lists, the peak of a reading (a server's memory). HTTP and text only."""

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? (\S+)")


def metric_samples(text: str, name: str, labels: str = "") -> list[float]:
    """Values of the samples of ``name`` in Prometheus text whose labels contain ``labels``
    (e.g. ``endpoint="/v1/completions"``); ``name`` may carry them itself (``m{a="b"}``)."""
    if "{" in name:
        name, _, inline = name.partition("{")
        labels = inline.rstrip("}") + labels
    values = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name and labels in (match.group(2) or ""):
            values.append(float(match.group(3)))
    return values


def metric(base_url: str, name: str, labels: str = "", **request: Any) -> float:
    """The sum of a metric's samples on a server's ``/metrics`` (0 if it has none)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30, **request).text
    return sum(metric_samples(text, name, labels))


def sse_data(lines: Iterable[str]) -> list[str]:
    """The payloads of a server-sent event stream's ``data:`` lines, ``[DONE]`` included."""
    return [line[6:] for line in lines if line.startswith("data: ")]


def comma_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """``"1024,4096"`` -> ``[1024, 4096]`` with ``kind=int``; empty parts are skipped."""
    return [kind(part) for part in text.split(",") if part]


class Peak:
    """The largest value of ``read()`` (say a server's RSS), sampled every ``interval`` seconds
    while in the ``with`` block."""

    def __init__(self, read: Callable[[], float], interval: float = 0.2) -> None:
        self.read, self.interval = read, interval
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def __enter__(self) -> "Peak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())
