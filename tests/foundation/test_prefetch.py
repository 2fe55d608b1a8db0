"""prefetched: items in order, producer errors raised where they happen, no thread left behind."""

from __future__ import annotations

import threading

import pytest

from gru4rec.foundation.prefetch import prefetched


def _prefetch_threads() -> int:
    return sum(t.name == "gru4rec-prefetch" for t in threading.enumerate())


def test_items_come_in_order_and_the_thread_ends():
    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(prefetched([])) == []
    assert _prefetch_threads() == 0


def test_an_error_while_producing_is_raised_at_its_item():
    def items():
        yield 1
        yield 2
        raise ValueError("bad block")

    seen = []
    with pytest.raises(ValueError, match="bad block"):
        for item in prefetched(items()):
            seen.append(item)
    assert seen == [1, 2] and _prefetch_threads() == 0


def test_stopping_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    for item in prefetched(items(), depth=2):
        if item == 5:
            break
    assert _prefetch_threads() == 0 and len(produced) <= 5 + 1 + 2 + 1  # what was read ahead, no more
