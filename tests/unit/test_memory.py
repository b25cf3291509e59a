"""Idle trimming: only when idle, only after requests, at most once an interval."""

import time

from server.memory import IdleTrim


def test_trims_once_idle_after_requests_and_not_again_until_more_came():
    trim = IdleTrim(interval=0.05)
    assert trim._trim is not None  # glibc on these machines
    assert not trim.tick(0)  # nothing came yet
    assert not trim.tick(3)  # busy
    time.sleep(0.06)
    assert trim.tick(0)  # idle after requests, the interval past
    time.sleep(0.06)
    assert not trim.tick(0)  # no request since
    assert not trim.tick(1)
    assert trim.tick(0)  # a request came, and the interval since the last trim has passed
    assert not trim.tick(1)
    assert not trim.tick(0)  # a request came, but the interval has not passed again
