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


def test_a_stop_signal_before_the_read_ends_the_run_at_once_with_its_report(tmp_path, monkeypatch):
    """SIGTERM while the inventory is collected: neither the CMDB read nor the plan is begun (minutes, on a
    large CMDB, that no write would follow); the report says where the run stopped."""
    import connector.run as run
    from connector.inventory import write_inventory
    from connector.sandbox.servicenow import ServiceNowStandIn
    from connector.sandbox.synthetic import synthetic_inventory
    from connector.settings import load_settings

    path = tmp_path / "inventory.jsonl"
    write_inventory(synthetic_inventory(accounts=1, instances=2), path)
    read_inventory = run.read_inventory

    def read_then_stopped(file, sink):
        inventory = read_inventory(file, sink)
        ops.request_stop()  # as the signal handler does
        return inventory

    monkeypatch.setattr(run, "read_inventory", read_then_stopped)
    with ServiceNowStandIn(users={"svc": "pw"}) as server:
        settings = load_settings(None, {"aws": {"external_id": "not-used-here"},
                                        "servicenow": {"instance_url": server.url, "username": "svc", "password": "pw"},
                                        "report": {"output_dir": str(tmp_path / "reports")}})
        outcome = run.run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == ops.EXIT_INTERRUPTED
        assert outcome.report["errors"] == ["interrupted by a stop signal before read: nothing was written; the next "
                                            "run does it all"]
        # each unit's records were mapped as they came in: map's time is its own, not collect's
        assert set(outcome.report["timings"]) == {"collect", "map"} and outcome.report_path.exists()
        gets = {kind: n for kind, n in server.stats.items() if kind.startswith("GET ")}
        assert gets == {"GET cmdb_ci": 1} and server.writes() == 0  # the login check, and nothing more


def test_units_not_begun_when_a_stop_signal_comes_are_left_unknown():
    from connector.aws.collect import Collector, Unit
    from connector.mapping.load import load_mappings
    from connector.models import SKIPPED

    source = load_mappings().sources["ec2:instance"]
    ops.request_stop()
    scope, records = Collector(pool=None, max_per_account=1).run_unit(Unit("111122223333", "eu-west-1", source))
    assert (scope.status, scope.error, records) == (SKIPPED, "not collected: the run was stopped", [])
