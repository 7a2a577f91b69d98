"""servicenow.writer = "ire", end to end: the CLI, a moto server, the stand-in's IRE, all over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from connector.sandbox.aws import AwsSandbox, RegionPlan, seed_organization, terminate_instance
from connector.sandbox.servicenow import ServiceNowStandIn
from tests.e2e.test_run_e2e import EXTERNAL_ID, PASSWORD, REGIONS, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def world(tmp_path):
    with AwsSandbox(external_id=EXTERNAL_ID) as aws, ServiceNowStandIn(users={"svc_cmdb": PASSWORD}) as sn:
        org = seed_organization(aws.moto_url, ["alpha"], REGIONS, RegionPlan(vpcs=1, subnets_per_vpc=2,
                                                                             instances_per_subnet=2))

        def config(writer: str, batch_size: int = 20, tags: bool = False):
            path = tmp_path / f"{writer}.toml"
            path.write_text(f'[aws]\nregions = {json.dumps(REGIONS)}\n\n[servicenow]\ninstance_url = "{sn.url}"\n'
                            f'username = "svc_cmdb"\nwriter = "{writer}"\nbatch_size = {batch_size}\n\n'
                            f'[reconcile]\ntags = {str(tags).lower()}\n\n[report]\noutput_dir = "reports"\n')
            return path

        yield aws, sn, org, config


def writes(sn: ServiceNowStandIn) -> Counter:
    """The requests that may write (IRE's /query commits nothing: left out)."""
    return Counter({k: v for k, v in sn.stats.items()
                    if k.split(" ")[0] in ("POST", "PATCH", "DELETE", "batch") and not k.endswith("/query")})


def no_duplicates(sn: ServiceNowStandIn) -> None:
    keys = Counter((r["sys_class_name"], r["correlation_id"]) for r in sn.store.rows("cmdb_ci"))
    assert [k for k, n in keys.items() if n > 1] == []
    relations = Counter((r["parent"], r["child"], r["type"]) for r in sn.store.rows("cmdb_rel_ci"))
    assert [k for k, n in relations.items() if n > 1] == []


@pytest.mark.parametrize("batch_size", [0, 20])
def test_ire_makes_what_the_table_api_would_and_a_rerun_writes_nothing(world, batch_size):
    aws, sn, _org, config = world
    code, report, output = run_cli(aws.url, config("ire", batch_size), "run")
    assert code == 0, output
    made = writes(sn)
    assert made["POST identifyreconcile"] > 0
    assert not any(k.endswith(("cmdb_ci_vm_instance", "cmdb_ci_aws_datacenter")) for k in made)  # no Table API CI
    assert {c["status"] for c in report["changes"]} == {"applied"}
    no_duplicates(sn)
    assert len(sn.store.rows("sys_object_source")) == len(sn.store.rows("cmdb_ci"))  # each CI with its source key
    created = [c for c in report["changes"] if c["table"] == "cmdb_rel_ci" and c["action"] == "create"]
    assert any("[Hosted on::Hosts]" in c["identity"] for c in created)
    # IRE made the relations it identifies by (Hosted on, Contains) with their CIs; the Table API the others
    by_table_api = made.get("batch POST cmdb_rel_ci", 0) + made.get("POST cmdb_rel_ci", 0)
    assert 0 < by_table_api < len(created) == len(sn.store.rows("cmdb_rel_ci"))

    sn.stats.clear()
    code, report, output = run_cli(aws.url, config("ire", batch_size), "run")
    assert code == 0 and writes(sn) == Counter(), output
    # what IRE wrote is what the Table API writer wants, to the value and the relation: switching writes nothing
    code, report, output = run_cli(aws.url, config("table", batch_size), "run")
    assert code == 0 and writes(sn) == Counter(), output


def test_a_gone_resource_is_retired_through_the_table_api_and_a_change_goes_through_ire(world):
    aws, sn, _org, config = world
    assert run_cli(aws.url, config("ire", 0), "run")[0] == 0
    instances = sn.store.rows("cmdb_ci_vm_instance")
    gone = instances[0]
    _arn, _aws, _ec2, region, account, _rest = gone["correlation_id"].split(":")
    terminate_instance(aws.moto_url, account, region, gone["object_id"])
    sn.stats.clear()
    code, report, output = run_cli(aws.url, config("ire", 0), "run", "--force")
    assert code == 0, output
    assert sn.store.get("cmdb_ci", gone["sys_id"])["install_status"] == "7"
    made = writes(sn)
    assert made["PATCH cmdb_ci_vm_instance"] == 1 and "POST identifyreconcile" not in made  # the retire only
    no_duplicates(sn)


def test_answers_lost_on_the_way_make_no_duplicate_and_the_next_run_finishes(world):
    aws, sn, _org, config = world
    sn.faults.update({"rate_cancelled": 0.4})  # the work is done, the answer lost (500), on 40% of requests
    code, _report, output = run_cli(aws.url, config("ire", 5), "run")
    assert code in (0, 1), output
    no_duplicates(sn)
    sn.faults.update({"rate_cancelled": 0.0})
    assert run_cli(aws.url, config("ire", 5), "run")[0] == 0
    no_duplicates(sn)
    sn.stats.clear()
    assert run_cli(aws.url, config("ire", 5), "run")[0] == 0
    assert writes(sn) == Counter()


def test_a_ci_made_by_discovery_is_adopted_not_duplicated(world):
    """Plan adopts a Discovery CI (the resource's object_id, no correlation_id). IRE's rule would not find it
    (it is hosted on nothing), so the update goes by its sys_id through the Table API; later runs find it."""
    aws, sn, _org, config = world
    assert run_cli(aws.url, config("ire", 20), "run")[0] == 0
    ours = sn.store.rows("cmdb_ci_vm_instance")[0]
    for table in ("cmdb_rel_ci", "sys_object_source"):
        for row in list(sn.store.rows(table)):
            if ours["sys_id"] in (row.get("parent"), row.get("child"), row.get("target_sys_id")):
                sn.store.delete(table, row["sys_id"])
    sn.store.delete("cmdb_ci", ours["sys_id"])
    found = sn.store.insert("cmdb_ci_vm_instance", {"name": "found by Discovery", "object_id": ours["object_id"],
                                                    "discovery_source": "ServiceNow"}, "discovery")
    code, report, _output = run_cli(aws.url, config("ire", 20), "plan")
    (adopt,) = [c for c in report["changes"] if c["sys_id"] == found["sys_id"]]
    assert adopt["note"].endswith("IRE would create a new CI: updated by its sys_id through the Table API instead")
    code, report, output = run_cli(aws.url, config("ire", 20), "run")
    assert code == 0, output
    (adopted,) = [r for r in sn.store.rows("cmdb_ci_vm_instance") if r["object_id"] == ours["object_id"]]
    assert adopted["sys_id"] == found["sys_id"]
    assert (adopted["correlation_id"], adopted["name"]) == (ours["correlation_id"], ours["name"])
    assert "updated through the Table API by its sys_id instead" in output
    assert [w for w in report["warnings"] if w.endswith("updated through the Table API by its sys_id instead")] == [
        f"IRE would create a new CI for cmdb_ci_vm_instance {ours['correlation_id']}, which plan matched to "
        f"{found['sys_id']}: updated through the Table API by its sys_id instead"]  # in the report too
    no_duplicates(sn)
    sn.stats.clear()
    assert run_cli(aws.url, config("ire", 20), "run")[0] == 0
    assert writes(sn) == Counter()


def test_plan_says_when_ire_would_update_a_ci_it_identifies_rather_than_create_one(world):
    """Another source's CI, hosted on the same datacenter with the resource's object_id but a correlation_id
    of its own: plan sees no CI of the resource (nothing to adopt) and plans a create; IRE's rule identifies
    that CI. plan says so, and run updates it rather than make a second one."""
    aws, sn, _org, config = world
    assert run_cli(aws.url, config("ire", 20), "run")[0] == 0
    theirs = sn.store.rows("cmdb_ci_vm_instance")[0]
    for row in list(sn.store.rows("sys_object_source")):
        if row["target_sys_id"] == theirs["sys_id"]:
            sn.store.delete("sys_object_source", row["sys_id"])
    arn = theirs["correlation_id"]
    sn.store.update("cmdb_ci", theirs["sys_id"], {"correlation_id": "other-tool-key-1", "discovery_source": "ServiceNow"},
                    "other")
    sn.stats.clear()
    code, report, _output = run_cli(aws.url, config("ire", 20), "plan")
    (create,) = [c for c in report["changes"] if c["action"] == "create" and c["identity"] == arn]
    assert create["note"] == f"IRE would update the CI {theirs['sys_id']} it identifies, rather than create one"
    assert writes(sn) == Counter() and sn.stats["POST identifyreconcile/query"] > 1  # the check, then plan's asks
    code, report, output = run_cli(aws.url, config("ire", 20), "run", "--force")
    assert code == 0, output
    (made,) = [c for c in report["changes"] if c["action"] == "create" and c["identity"] == arn]
    assert made["sys_id"] == theirs["sys_id"]  # IRE's CI, as plan said
    (row,) = [r for r in sn.store.rows("cmdb_ci_vm_instance") if r["object_id"] == theirs["object_id"]]
    assert row["correlation_id"] == arn
    no_duplicates(sn)


def test_a_tag_row_on_the_ci_ire_identifies_gets_the_resources_value_in_the_same_run(world):
    """The other source's CI holds a row for the tag the resource has, with another value: the run that plan
    took for a create finds that row (no second one) and gives it the resource's value, so that the next run
    writes nothing."""
    aws, sn, _org, config = world
    assert run_cli(aws.url, config("ire", 20, tags=True), "run")[0] == 0
    theirs = sn.store.rows("cmdb_ci_vm_instance")[0]
    for row in list(sn.store.rows("sys_object_source")):
        if row["target_sys_id"] == theirs["sys_id"]:
            sn.store.delete("sys_object_source", row["sys_id"])
    sn.store.update("cmdb_ci", theirs["sys_id"], {"correlation_id": "other-tool-key-1", "discovery_source": "ServiceNow"},
                    "other")
    (tag,) = [r for r in sn.store.rows("cmdb_key_value") if r["configuration_item"] == theirs["sys_id"]]
    ours = tag["value"]
    sn.store.update("cmdb_key_value", tag["sys_id"], {"value": "set by the other tool"}, "other")
    code, report, output = run_cli(aws.url, config("ire", 20, tags=True), "run", "--force")
    assert code == 0, output
    (made,) = [c for c in report["changes"] if c["table"] == "cmdb_key_value" and c["action"] == "create"]
    assert made["sys_id"] == tag["sys_id"]
    (row,) = [r for r in sn.store.rows("cmdb_key_value") if r["configuration_item"] == theirs["sys_id"]]
    assert row["value"] == ours
    sn.stats.clear()
    assert run_cli(aws.url, config("ire", 20, tags=True), "run")[0] == 0
    assert writes(sn) == Counter()
    no_duplicates(sn)


def test_the_demo_through_ire(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "connector.cli", "demo", "--writer", "ire"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report_path = next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("report: "))
    report = json.loads(Path(report_path).read_text())
    assert {c["status"] for c in report["changes"]} == {"applied"}
    assert report["tables"]["cmdb_ci_vm_instance"]["created"] > 0 and report["relations"]["created"] > 0


def test_a_field_a_reconciliation_rule_keeps_for_another_source_is_named_not_fought_silently(world):
    """IRE leaves such a field as it is and says nothing (the write also stamps last_discovered, so it is an
    UPDATE still): the next run, writing it again, names it, from the previous run's report."""
    aws, sn, _org, config = world
    assert run_cli(aws.url, config("ire", 20), "run")[0] == 0
    sn.faults.update({"ire_authoritative": {"cmdb_ci.name": "ServiceNow"}})  # names are Discovery's to write
    renamed = dict(sn.store.rows("cmdb_ci_vm_instance")[0])
    sn.store.update("cmdb_ci", renamed["sys_id"], {"name": "named by Discovery"}, "discovery")
    code, report, output = run_cli(aws.url, config("ire", 20), "run")
    assert code == 0, output
    assert [c["fields"]["name"]["new"] for c in report["changes"] if c["sys_id"] == renamed["sys_id"]] == [renamed["name"]]
    assert sn.store.get("cmdb_ci", renamed["sys_id"])["name"] == "named by Discovery"
    code, report, output = run_cli(aws.url, config("ire", 20), "run")
    assert any(w.startswith("cmdb_ci_vm_instance.name: written again on 1 record(s)") and "reconciliation rule" in w
               for w in report["warnings"]), report["warnings"]


def test_a_user_refused_ire_fails_the_run_before_the_collection(world):
    aws, sn, _org, config = world
    sn.faults.update({"acl_denied_tables": ["identifyreconcile"]})  # no itil or asset role
    code, report, output = run_cli(aws.url, config("ire"), "run")
    assert code == 1
    assert any("servicenow.writer = \"ire\", but the instance refuses the Identification and Reconciliation API"
               in e and "itil or asset role" in e for e in report["errors"]), report["errors"]
    assert report["scopes"] == [] and sn.store.rows("cmdb_ci") == []  # nothing collected, nothing written
