"""reconcile.retire_after_hours, against the stand-in over HTTP: a CI gone from AWS stays active until it has
been gone that long (the time kept from run to run in report.output_dir), a plan reads that time and never
writes it, and a CI back in the meantime is not retired at all."""

from __future__ import annotations

import json
import logging

from connector.inventory import write_inventory
from connector.report.absent import absent_state_path, load_absent
from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory
from connector.settings import load_settings

from .test_lookups import PASSWORD, VM, vms

INSTANCES = 10  # 2 gone of 10: under the guard's 25%


def settings_for(server, tmp_path, hours: float = 24):
    return load_settings(None, {"aws": {"external_id": "not-used-here"},
                                "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD},
                                "reconcile": {"retire_after_hours": hours},
                                "report": {"output_dir": str(tmp_path / "reports")}})


def inventory_without(tmp_path, *gone: int):
    inventory = synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=INSTANCES)
    instances = [r for r in inventory.records if r.source == "ec2:instance"]
    inventory.records = [r for r in inventory.records if r not in [instances[n] for n in gone]]
    path = tmp_path / f"inventory-{'-'.join(map(str, gone))}.jsonl"
    write_inventory(inventory, path)
    return path, [instances[n].resource["InstanceId"] for n in gone]


def state(tmp_path) -> dict:
    return json.loads(absent_state_path(tmp_path / "reports", None).read_text())


def test_a_ci_gone_is_retired_once_gone_the_hours_set_and_one_back_meanwhile_never(tmp_path, caplog):
    everything, _ = inventory_without(tmp_path)
    two_gone, (first, second) = inventory_without(tmp_path, 0, 1)
    one_gone, _ = inventory_without(tmp_path, 0)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=everything).exit_code == 0
        with caplog.at_level(logging.INFO):
            waiting = run_pipeline(settings, inventory_file=two_gone)
        assert waiting.exit_code == 0 and waiting.report["changes"] == []  # nothing retired yet
        pending = {p["identity"].rsplit("/", 1)[1]: p for p in waiting.report["retire_pending"]}
        assert set(pending) == {first, second}
        assert {row["identity"] for row in state(tmp_path)["absent"]} == {p["identity"] for p in pending.values()}
        assert any("2 CI(s) gone from AWS are left active" in r.getMessage() for r in caplog.records)
        assert {vms(server)[i]["install_status"] for i in (first, second)} == {"1"}

        # a day later (the kept times moved a day back), the second one has come back
        kept = state(tmp_path)
        for row in kept["absent"]:
            row["since"] = "2026-01-01 00:00:00"
        absent_state_path(tmp_path / "reports", None).write_text(json.dumps(kept))
        predicted = run_pipeline(settings, mode="plan", inventory_file=one_gone)
        assert [(c["action"], c["identity"].rsplit("/", 1)[1]) for c in predicted.report["changes"]] == [
            ("retire", first)]
        assert state(tmp_path) == kept  # a plan reads the times and leaves them as they are
        done = run_pipeline(settings, inventory_file=one_gone)
        assert [(c["action"], c["identity"].rsplit("/", 1)[1], c["status"]) for c in done.report["changes"]] == [
            ("retire", first, "applied")]
        assert (vms(server)[first]["install_status"], vms(server)[second]["install_status"]) == ("7", "1")
        again = run_pipeline(settings, inventory_file=one_gone)
        assert again.report["changes"] == [] and again.report["retire_pending"] == []
        assert state(tmp_path)["absent"] == []  # retired: not gone-and-active any more


def test_the_kept_times_of_another_instance_or_a_broken_file_start_the_wait_again(tmp_path, caplog):
    path = absent_state_path(tmp_path, (2, 4))
    assert path.name == "absent-shard-2-of-4.json"
    assert load_absent(path, "https://x.service-now.com", "AWS CMDB Connector") == {}  # none yet
    row = {"table": VM, "identity": "arn:i-1", "sys_id": "s1", "since": "2026-11-01 00:00:00"}
    path.write_text(json.dumps({"instance": "https://dev.service-now.com", "discovery_source": "AWS CMDB Connector",
                                "absent": [row]}))
    assert load_absent(path, "https://dev.service-now.com", "AWS CMDB Connector") == {(VM, "arn:i-1"): row["since"]}
    assert load_absent(path, "https://prod.service-now.com", "AWS CMDB Connector") == {}
    assert load_absent(path, "https://dev.service-now.com", "Another connector") == {}
    edited = {**row, "identity": "arn:i-2", "since": "yesterday"}  # edited by hand into something else: dropped
    path.write_text(json.dumps({"instance": "https://dev.service-now.com", "discovery_source": "AWS CMDB Connector",
                                "absent": [row, edited]}))
    assert load_absent(path, "https://dev.service-now.com", "AWS CMDB Connector") == {(VM, "arn:i-1"): row["since"]}
    path.write_text('{"instance": ')
    with caplog.at_level(logging.WARNING):
        assert load_absent(path, "https://dev.service-now.com", "AWS CMDB Connector") == {}
    assert any("the wait before retiring starts again" in r.getMessage() for r in caplog.records)
