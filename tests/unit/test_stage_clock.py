"""The report's timings: a stage within another (map, a unit's records at a time during collect)."""

from __future__ import annotations

import time

from connector.run import StageClock


def busy(seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass


def test_a_stage_within_another_counts_as_its_own_and_its_many_short_parts_add_up():
    clock = StageClock()
    started = time.perf_counter()
    with clock.stage("collect"):
        busy(0.02)
        for _ in range(250):  # each shorter than the millisecond the report rounds to
            with clock.stage("map"):
                busy(0.0004)
    total = time.perf_counter() - started
    assert clock.cpu["map"] >= 0.1 and clock.seconds["map"] >= 0.1
    assert clock.cpu["collect"] >= 0.02
    # collect's own time, without map's: the two add up to the whole (counted twice, they would pass it
    # by map's 0.1 s or more)
    assert abs(clock.seconds["collect"] + clock.seconds["map"] - total) < 0.05
    assert set(clock.seconds) == set(clock.cpu) == {"collect", "map"}
