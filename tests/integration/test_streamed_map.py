"""A run maps each unit's records as they come in (from AWS, or from a saved inventory) and keeps no raw
item: when the CMDB is read, the memory holds the CIs, not the raw answers (DESIGN.md, "Memory")."""

from __future__ import annotations

import gc
import weakref

import connector.run as run
from connector.inventory import write_inventory
from connector.mapping.transform import Mapper
from connector.models import Record
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory
from connector.settings import load_settings

PASSWORD = "streamed-password"


def settings_for(server, tmp_path):
    return load_settings(None, {"aws": {"external_id": "not-used-here"},
                                "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD},
                                "report": {"output_dir": str(tmp_path / "reports")}})


def watch_the_read(monkeypatch) -> list[int]:
    """How many of the records mapped are still alive when the CMDB read begins, run after run (each
    record is watched through a weak reference, as the map is given it)."""
    mapped: list[weakref.ref] = []
    alive: list[int] = []
    add, read_cmdb = Mapper.add, run.read_cmdb

    def watched(self, records):
        mapped.extend(map(weakref.ref, records))
        return add(self, records)

    def counted(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in mapped))
        assert mapped  # the map was given them
        return read_cmdb(*args, **kwargs)

    monkeypatch.setattr(Mapper, "add", watched)
    monkeypatch.setattr(run, "read_cmdb", counted)
    return alive


def test_from_a_saved_inventory_no_raw_item_is_held_when_the_cmdb_is_read(tmp_path, monkeypatch):
    inventory = synthetic_inventory(accounts=2, instances=30)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    expected = len(inventory.records)
    del inventory
    alive = watch_the_read(monkeypatch)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        outcome = run.run_pipeline(settings_for(server, tmp_path), inventory_file=path)
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert alive == [0]  # every one of the file's resources mapped, and dropped
        created = sum(t["created"] for t in outcome.report["tables"].values())
        assert created == expected > 100  # each resource one CI here
        assert {"collect", "map", "read", "plan", "apply"} <= set(outcome.report["timings"])


def test_from_aws_each_units_records_go_to_the_map_as_the_unit_is_in(tmp_path, monkeypatch):
    def unit(record: Record) -> tuple[str, str, str]:
        return record.account_id, record.region, record.source

    expected = len(synthetic_inventory(accounts=1, instances=20).records)
    batches: list[int] = []

    def collect_from_aws(settings, mappings, shard, retire, only, sink):
        made = synthetic_inventory(accounts=1, instances=20)
        records, made.records = made.records, []
        for each in dict.fromkeys(map(unit, records)):  # as collect_inventory hands them over: a unit at a time
            batch = [r for r in records if unit(r) == each]
            batches.append(len(batch))
            sink(batch)
        return made

    monkeypatch.setattr(run, "collect_from_aws", collect_from_aws)
    alive = watch_the_read(monkeypatch)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        outcome = run.run_pipeline(settings_for(server, tmp_path))
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert sum(t["created"] for t in outcome.report["tables"].values()) == expected == sum(batches)
        assert len(batches) > 3
        assert alive == [0]  # the run keeps none of what the collector handed over
