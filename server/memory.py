"""Memory that large requests freed, given back to the system once the server is idle.

glibc keeps the heap memory a process frees for its own reuse: after many large constraint and
tool-schema requests a front end of 0.6 GB stayed at 1.1 GB while idle (a red-team pass), though
the same request repeated does not grow it (not a leak; docs/RESULTS.md section 4b).
``malloc_trim(0)`` returns what is free at the top of the heaps and the unused pages within
them. It runs when no request is in flight and some came since the last time, at most once every
``interval`` seconds; elsewhere than glibc it does nothing.
"""

import ctypes
import time


class IdleTrim:
    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            self._trim = None
        self._last = time.monotonic()
        self._busy_since_trim = False

    def tick(self, active_requests: int) -> bool:
        """Called often; True when it trimmed."""
        if self._trim is None:
            return False
        if active_requests:
            self._busy_since_trim = True
            return False
        now = time.monotonic()
        if not self._busy_since_trim or now - self._last < self.interval:
            return False
        self._last, self._busy_since_trim = now, False
        self._trim(0)
        return True
