"""One way to run a call over many items on a few threads, and a fair gate for a few at a time."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_order(call: Callable[[T], R], items: Sequence[T], width: int, name: str) -> list[R]:
    """``call`` over ``items``, up to ``width`` at once on threads of their own.

    The results keep the items' order and the first failure is raised, as one
    after another would; with one item or a width of one, no thread is started.
    """
    if width < 2 or len(items) < 2:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(width, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(call, items))


class FairSlots:
    """At most ``size`` holders at once, like a semaphore, but the waiters get in first come, first served.

    ``threading.Semaphore`` wakes any waiter: under load, a request queued
    early can wait behind every one queued after it. The pages of a query are
    queued in order; served in order, its first pages are in first, and
    whoever reads them in order can start.
    """

    _new_turn = threading.Lock  # a waiter's turn: locked while it waits

    def __init__(self, size: int):
        self._lock = threading.Lock()
        self._free = max(1, size)
        self._waiting: deque = deque()

    def __enter__(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = self._new_turn()
            turn.acquire()
            self._waiting.append(turn)
        try:
            turn.acquire()  # released by the holder that hands its slot over
        except BaseException:  # a KeyboardInterrupt while waiting: the slot must not be lost
            with self._lock:
                if turn in self._waiting:
                    self._waiting.remove(turn)
                else:
                    self._give_back()  # handed over meanwhile: on to the next in line
            raise

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._give_back()

    def _give_back(self) -> None:
        """A slot freed (the caller holds ``_lock``): straight to the next in line, or back to the free ones."""
        if self._waiting:
            self._waiting.popleft().release()
        else:
            self._free += 1
