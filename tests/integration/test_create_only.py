"""A field marked create_only, against the stand-in over HTTP: written when its CI is created, then the
CMDB's (a person's edit stays, a change in AWS does not overwrite it); everything else kept in step."""

from __future__ import annotations

from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn

from .test_lookups import PASSWORD, VM, mappings_with, settings_for, tagged_inventory, vms

SEEDED = 'comments = { tag = "Purpose", create_only = true }\n'


def test_a_create_only_field_is_written_once_and_then_left_to_the_cmdb(tmp_path):
    by_instance, path = tagged_inventory(tmp_path, [{"Purpose": "batch jobs"}, {"Purpose": "web"}])
    first, second = by_instance
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path, mappings_with(tmp_path, SEEDED))
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        assert {i: r["comments"] for i, r in vms(server).items()} == {first: "batch jobs", second: "web"}

        server.store.update(VM, vms(server)[first]["sys_id"], {"comments": "edited by the app team"}, "admin")
        _by_instance, path = tagged_inventory(tmp_path, [{"Purpose": "batch jobs, nightly"}, {"Purpose": ""}])
        outcome = run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == 0 and outcome.report["changes"] == []
        assert {i: r["comments"] for i, r in vms(server).items()} == {first: "edited by the app team", second: "web"}
