"""A table that changes while it is read a page at a time, against the stand-in over HTTP.

Pages by offset then skip rows (rows deleted before the next page's offset) or repeat them (rows added):
one of our CIs skipped would be planned as a create, a duplicate of the CI the CMDB has. Each page tells
the count again, and begins on the row the page before ended on; a read whose pages disagree is read again
by sys_id, each page from the last row of the one before, which such changes cannot shift: a table that
someone writes to all along (another shard's first run) is still read whole, and never written from an
incomplete read.
"""

from __future__ import annotations

import logging
from collections import Counter

from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.settings import load_settings

from .test_lookups import PASSWORD, VM, tagged_inventory

INSTANCES = 35


def settings_for(server, tmp_path):
    return load_settings(None, {"aws": {"external_id": "not-used-here"},
                                "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD,
                                               "workers": 4, "page_size": 10},
                                "report": {"output_dir": str(tmp_path / "reports")}})


def correlation_ids(server) -> Counter:
    return Counter(row["correlation_id"] for row in server.store.rows(VM))


def test_rows_deleted_under_a_read_make_it_read_again_and_nothing_is_created_twice(tmp_path, caplog):
    _by_instance, path = tagged_inventory(tmp_path, [{}] * INSTANCES)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        assert len(correlation_ids(server)) == INSTANCES
        # the first page's first 3 rows are deleted once it is served: pages 2-4, by offset, would skip 3 more
        server.faults.update({"delete_after_first_page": {VM: 3}})
        with caplog.at_level(logging.WARNING):
            again = run_pipeline(settings, inventory_file=path)
        assert again.exit_code == 0
        assert again.report["tables"][VM]["created"] == 3  # the 3 deleted, made again; none of the skipped
        assert again.report["tables"][VM]["unchanged"] == INSTANCES - 3
        ids = correlation_ids(server)
        assert len(ids) == INSTANCES and set(ids.values()) == {1}  # no duplicate
        assert any("cmdb_ci_vm_instance: rows were added or removed while it was read (35 rows when the first page "
                   "was read, then 32)" in r.getMessage() and "reading it again by sys_id" in r.getMessage()
                   for r in caplog.records)
        assert server.faults.delete_after_first_page == {}  # once, as set
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_rows_added_and_deleted_under_a_read_in_equal_numbers_are_told_by_the_seams(tmp_path, caplog):
    _by_instance, path = tagged_inventory(tmp_path, [{}] * INSTANCES)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        # 3 rows deleted from the first page, and 3 added after every other (another shard's creates): the
        # count stays 35, but the pages after the first, by offset, begin 3 rows further on
        server.faults.update({"delete_after_first_page": {VM: 3}, "add_after_first_page": {VM: 3}})
        with caplog.at_level(logging.WARNING):
            again = run_pipeline(settings, inventory_file=path)
        assert again.exit_code == 0, again.report["errors"]
        assert again.report["tables"][VM]["created"] == 3  # the 3 deleted, made again; none of the skipped
        assert again.report["tables"][VM]["unchanged"] == INSTANCES - 3
        ids = correlation_ids(server)
        assert len(ids) == INSTANCES + 3 and set(ids.values()) == {1}  # no duplicate; the other shard's 3 kept
        assert sum(":999999999999:" in i for i in ids) == 3
        assert any("the page at offset 10 began on" in r.getMessage() and "reading it again by sys_id" in r.getMessage()
                   for r in caplog.records)
        assert server.faults.add_after_first_page == {}  # once, as set
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_a_class_that_someone_writes_to_all_along_is_read_whole_by_sys_id(tmp_path, caplog):
    # another shard's first run: after every first page served (each page of a read by sys_id is one), two
    # rows more in the class, sorting after every other
    _by_instance, path = tagged_inventory(tmp_path, [{}] * INSTANCES)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        server.faults.update({"add_after_first_page": {VM: 2}, "delete_after_first_page_times": 0})
        with caplog.at_level(logging.WARNING):
            outcome = run_pipeline(settings, inventory_file=path)
        added = sum(":999999999999:" in i for i in correlation_ids(server))
        server.faults.update({"add_after_first_page": {}})
        assert outcome.exit_code == 0, outcome.report["errors"]
        counts = outcome.report["tables"][VM]
        assert (counts["created"], counts["updated"], counts["retired"], counts["unchanged"]) == (0, 0, 0, INSTANCES)
        assert added >= 6  # the writes went on through the read by sys_id: it is one page after another
        assert any("reading it again by sys_id" in r.getMessage() for r in caplog.records)
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_a_class_whose_rows_are_deleted_all_along_is_read_by_sys_id_and_nothing_is_created_twice(tmp_path):
    _by_instance, path = tagged_inventory(tmp_path, [{}] * INSTANCES)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        server.faults.update({"delete_after_first_page": {VM: 1}, "delete_after_first_page_times": 0})
        outcome = run_pipeline(settings, inventory_file=path)
        server.faults.update({"delete_after_first_page": {}})
        assert outcome.exit_code == 0, outcome.report["errors"]
        # someone else's deletions, every page: those made before a row was read are created again, the others
        # are read as they were (the next run makes them); none of the rows there throughout is created twice
        ids = correlation_ids(server)
        assert set(ids.values()) == {1}
        gone = INSTANCES - len(ids)
        assert gone >= 2  # (the read by offset's first page, and the read by sys_id's pages)
        healed = run_pipeline(settings, inventory_file=path)  # once the table is still: the rest made again
        assert healed.exit_code == 0 and healed.report["tables"][VM]["created"] == gone
        assert len(correlation_ids(server)) == INSTANCES and set(correlation_ids(server).values()) == {1}
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []
