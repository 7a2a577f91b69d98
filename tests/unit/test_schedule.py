"""run --every: the schedule, and what ends it."""

from __future__ import annotations

import logging

import pytest

from connector import ops
from connector.errors import MappingError


@pytest.fixture(autouse=True)
def no_stop_left_over():
    ops._STOP.clear()
    yield
    ops._STOP.clear()


def test_a_bad_mapping_in_a_later_run_is_logged_and_the_schedule_goes_on(caplog):
    caplog.set_level(logging.INFO, logger="connector")
    calls = []

    def once() -> int:
        calls.append(len(calls) + 1)
        if len(calls) == 2:  # an admin saved a broken mapping file between runs
            raise MappingError("1 problem(s) in the mapping files:\n  maps/cmdb_ci_network.toml: fields.name: bad")
        if len(calls) == 3:  # mended: this run works, then a stop signal comes
            ops._STOP.set()
        return 0

    assert ops.run_every(0.01, 0, once) == ops.EXIT_INTERRUPTED
    assert calls == [1, 2, 3]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("run not made: 1 problem(s) in the mapping files")
    assert "maps/cmdb_ci_network.toml: fields.name: bad" in errors[0]
    assert "run ended with exit code 2" in caplog.text


def test_a_bad_mapping_in_the_first_run_ends_the_schedule():
    def once() -> int:
        raise MappingError("maps/cmdb_ci_network.toml: invalid TOML")

    with pytest.raises(MappingError, match="invalid TOML"):
        ops.run_every(0.01, 0, once)
