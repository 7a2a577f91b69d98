"""The fair gate that bounds the requests in flight."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import pytest

from connector.concurrency import FairSlots


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_waiters_get_in_first_come_first_served():
    gate = FairSlots(1)
    order: list[int] = []
    threads = []
    with gate:  # the one slot held: everyone after this waits
        for n in range(8):
            thread = threading.Thread(target=lambda n=n: gate.__enter__() or order.append(n) or gate.__exit__())
            thread.start()
            threads.append(thread)
            _wait_until(lambda: len(gate._waiting) == n + 1)  # queued, in this order
    for thread in threads:
        thread.join(5)
    assert order == list(range(8))  # a plain Semaphore may wake them in any order


def test_never_more_holders_than_slots_and_a_failure_gives_its_slot_back():
    gate = FairSlots(3)
    lock = threading.Lock()
    holding, most = 0, 0

    def hold(n: int) -> None:
        nonlocal holding, most
        with pytest.raises(RuntimeError) if n % 2 else nullcontext():
            with gate:
                with lock:
                    holding += 1
                    most = max(most, holding)
                time.sleep(0.002)
                with lock:
                    holding -= 1
                if n % 2:
                    raise RuntimeError("a failed request")

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most == 3
    assert gate._free == 3 and not gate._waiting  # every slot back, failures too



def test_a_waiter_interrupted_while_waiting_leaves_the_slots_as_they_were():
    gate = FairSlots(1)

    class Interrupted:
        """A turn whose wait is cut short, as a KeyboardInterrupt would."""

        def __init__(self):
            self.calls = 0

        def acquire(self):
            self.calls += 1
            if self.calls == 2:  # the first locks it; the second is the wait
                raise KeyboardInterrupt

        def release(self):
            pass

    gate._new_turn = Interrupted
    with gate:
        with pytest.raises(KeyboardInterrupt):
            gate.__enter__()
        assert not gate._waiting  # no turn left behind for a holder to hand its slot to
    assert gate._free == 1
    with gate:  # and the slot is usable again
        assert gate._free == 0
