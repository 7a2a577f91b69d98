"""Tags in cmdb_key_value (reconcile.tags), against the stand-in over HTTP."""

from __future__ import annotations

from collections import Counter

from connector.inventory import write_inventory
from connector.report.json_report import summary_line
from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory
from connector.settings import load_settings

from .killed_run import kill_9_run_when

PASSWORD = "tags-password"


def settings_for(server, tmp_path, tags: bool):
    return load_settings(None, {"aws": {"external_id": "not-used-here"},
                                "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD,
                                               "workers": 4, "batch_size": 5},
                                "reconcile": {"tags": tags},
                                "report": {"output_dir": str(tmp_path / "reports")}})


def tags_in_cmdb(server) -> dict[tuple[str, str], str]:
    """(CI correlation_id, key) -> value, for every cmdb_key_value row; fails on a row for no CI or a repeated key."""
    out: dict[tuple[str, str], str] = {}
    for row in server.store.rows("cmdb_key_value"):
        ci = server.store.get("cmdb_ci", row["configuration_item"])
        assert ci is not None, row
        key = (ci["correlation_id"], row["key"])
        assert key not in out, f"two rows for {key}"
        out[key] = row["value"]
    return out


def instances(inventory):
    return [r for r in inventory.records if r.source == "ec2:instance"]


def instance_arn(record) -> str:
    return f"arn:aws:ec2:{record.region}:{record.account_id}:instance/{record.resource['InstanceId']}"


def with_env_tag(tmp_path, count: int, value: str):
    """One account's inventory of ``count`` instances, each also tagged env = ``value``, and its file."""
    inventory = synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=count)
    for record in instances(inventory):
        record.resource["Tags"].append({"Key": "env", "Value": value})
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    return inventory, path


def test_tags_are_written_kept_in_step_and_predicted_by_plan(tmp_path):
    inventory, path = with_env_tag(tmp_path, 3, "prod")
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path, tags=True)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 0, first.report["errors"]
        vm = instances(inventory)
        vpc = next(r for r in inventory.records if r.source == "ec2:vpc")
        vpc_arn = f"arn:aws:ec2:us-east-1:{vpc.account_id}:vpc/{vpc.resource['VpcId']}"
        expected = {(instance_arn(r), t["Key"]): t["Value"] for r in vm for t in r.resource["Tags"]}
        expected[(vpc_arn, "Name")] = "vpc-0"
        assert tags_in_cmdb(server) == expected
        assert first.report["key_values"] == {"created": 7, "updated": 0, "deleted": 0, "unchanged": 0}
        assert "tags 7 created, 0 updated, 0 deleted, 0 unchanged; " in summary_line(first.report)
        assert sum(1 for c in first.report["changes"] if c["table"] == "cmdb_key_value") == 7
        reports = first.report_path.parent
        assert 'cmdb_connector_tags{action="created"} 7' in (reports / "cmdb_connector.prom").read_text()
        assert "Tags: 7 created, 0 updated, 0 deleted, 0 unchanged." in first.report_path.with_suffix(".html").read_text()
        assert f"create,cmdb_key_value,cmdb_ci_vm_instance:{instance_arn(vm[0])} tag env" in \
            first.report_path.with_suffix(".csv").read_text()

        writes = server.writes()
        again = run_pipeline(settings, inventory_file=path)
        assert again.report["changes"] == [] and server.writes() == writes
        assert again.report["key_values"]["unchanged"] == 7

        vm[0].resource["Tags"] = [{"Key": "Name", "Value": "app-0"}, {"Key": "env", "Value": "dev"}]  # changed
        vm[1].resource["Tags"] = [{"Key": "Name", "Value": "app-1"}]                                   # env removed
        vm[2].resource["Tags"].append({"Key": "owner", "Value": "team-a"})                            # added
        write_inventory(inventory, path)
        predicted = run_pipeline(settings, mode="plan", inventory_file=path)
        assert server.writes() == writes  # plan writes nothing
        done = run_pipeline(settings, inventory_file=path)
        assert done.exit_code == 0, done.report["errors"]

        def actions(report):
            return sorted((c["action"], c["identity"], str(c["fields"])) for c in report["changes"])

        assert actions(predicted.report) == actions(done.report)
        assert sorted((c["action"], c["identity"]) for c in done.report["changes"]) == [
            ("create", f"cmdb_ci_vm_instance:{instance_arn(vm[2])} tag owner"),
            ("delete", f"cmdb_ci_vm_instance:{instance_arn(vm[1])} tag env"),
            ("update", f"cmdb_ci_vm_instance:{instance_arn(vm[0])} tag env"),
        ]
        assert done.report["key_values"] == {"created": 1, "updated": 1, "deleted": 1, "unchanged": 5}
        expected[(instance_arn(vm[0]), "env")] = "dev"
        del expected[(instance_arn(vm[1]), "env")]
        expected[(instance_arn(vm[2]), "owner")] = "team-a"
        assert tags_in_cmdb(server) == expected
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_tags_left_alone_when_not_managed_and_on_cis_not_ours(tmp_path):
    inventory = synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=2)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        off = run_pipeline(settings_for(server, tmp_path, tags=False), inventory_file=path)
        assert off.exit_code == 0
        assert server.store.rows("cmdb_key_value") == []
        assert not [k for k in server.stats if "cmdb_key_value" in k]  # not even read
        assert off.report["key_values"] == {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
        assert "tags" not in summary_line(off.report)

        theirs = server.store.insert("cmdb_ci_vm_instance", {"name": "discovered", "discovery_source": "ServiceNow",
                                                             "correlation_id": "arn:aws:ec2:us-east-1:1:instance/i-x"}, "disco")
        server.store.insert("cmdb_key_value", {"configuration_item": theirs["sys_id"], "key": "env", "value": "x"}, "disco")
        on = run_pipeline(settings_for(server, tmp_path, tags=True), inventory_file=path)
        assert on.exit_code == 0, on.report["errors"]
        rows = Counter(row["configuration_item"] for row in server.store.rows("cmdb_key_value"))
        assert rows[theirs["sys_id"]] == 1  # another source's CI keeps its row
        assert on.report["key_values"]["created"] == 3  # the instances' and the VPC's Name tags


def test_a_ci_adopted_gets_its_tags_in_the_same_run_its_own_rows_given_the_values_not_made_twice(tmp_path):
    inventory, path = with_env_tag(tmp_path, 2, "prod")
    adopted = instances(inventory)[0]
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        # made by Discovery before the connector ran: no correlation_id, the instance's object_id, rows of its own
        theirs = server.store.insert("cmdb_ci_vm_instance", {"name": "discovered", "discovery_source": "ServiceNow",
                                                             "object_id": adopted.resource["InstanceId"]}, "disco")
        for key, value in (("env", "staging"), ("legacy", "x")):
            server.store.insert("cmdb_key_value", {"configuration_item": theirs["sys_id"], "key": key, "value": value},
                                "disco")
        settings = settings_for(server, tmp_path, tags=True)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 0, first.report["errors"]
        assert [c["note"] for c in first.report["changes"] if c["sys_id"] == theirs["sys_id"]] == [
            "adopted: CI of another source, now owned"]
        tags = tags_in_cmdb(server)  # (fails on two rows for one key)
        arn = instance_arn(adopted)
        assert tags[(arn, "env")] == "prod"  # its own row, given the value
        assert tags[(arn, "Name")] == next(t["Value"] for t in adopted.resource["Tags"] if t["Key"] == "Name")
        assert tags[(arn, "legacy")] == "x"  # not read as ours in this run: left until the next
        second = run_pipeline(settings, inventory_file=path)
        assert [(c["table"], c["action"], c["fields"]["key"]["old"]) for c in second.report["changes"]] == [
            ("cmdb_key_value", "delete", "legacy")]
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_kill_9_while_writing_tags_then_the_next_run_completes_them_once(tmp_path):
    inventory = synthetic_inventory(accounts=2, vpcs=1, subnets=2, instances=20)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.02) as server:
        kill_9_run_when(server, PASSWORD, tmp_path, path, until=lambda: len(server.store.rows("cmdb_key_value")) >= 20,
                        extra_config="\n[reconcile]\ntags = true\n")
        written = len(server.store.rows("cmdb_key_value"))
        assert 20 <= written < 82  # killed part-way through the tags (80 instances' and 2 VPCs' Name tags)

        settings = settings_for(server, tmp_path, tags=True)
        finished = run_pipeline(settings, inventory_file=path)
        assert finished.exit_code == 0, finished.report["errors"]
        assert len(tags_in_cmdb(server)) == 82  # every tag, each in one row (tags_in_cmdb fails on a second)
        tags = finished.report["key_values"]
        assert tags["unchanged"] >= written and tags["created"] == 82 - tags["unchanged"]  # none written twice
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_tag_values_longer_than_the_field_are_cut_once_and_then_left_alone(tmp_path):
    """cmdb_key_value.value shortened to 3 characters: the values are cut to fit, and a rerun writes no tag."""
    _inventory, path = with_env_tag(tmp_path, 2, "production")
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        server.store.set_length("cmdb_key_value", "value", 3)
        settings = settings_for(server, tmp_path, tags=True)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 0, first.report["errors"]
        assert {value for (arn, key), value in tags_in_cmdb(server).items() if key == "env"} == {"pro"}
        assert any(w.startswith("cmdb_key_value.value: ") for w in first.report["warnings"])
        second = run_pipeline(settings, inventory_file=path).report
        assert second["changes"] == [] and second["key_values"]["created"] == second["key_values"]["updated"] == 0
        assert second["key_values"]["deleted"] == 0 and second["key_values"]["unchanged"] > 0
