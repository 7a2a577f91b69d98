"""Reconciliation that never loses data, against the stand-in over HTTP."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from urllib.parse import unquote_plus

import pytest

from connector.errors import ConfigError
from connector.inventory import write_inventory
from connector.report.json_report import summary_line
from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory
from connector.servicenow.client import TableClient
from connector.servicenow.cmdb import CmdbReader
from connector.settings import load_settings

from .killed_run import kill_9_run_when

PASSWORD = "safety-password"
DS = "AWS CMDB Connector"


def settings_for(server, tmp_path, reconcile=None, **servicenow):
    return load_settings(None, {"aws": {"external_id": "not-used-here"},
                                "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD, **servicenow},
                                "reconcile": reconcile or {},
                                "report": {"output_dir": str(tmp_path / "reports")}})


def inventory_file(tmp_path, **sizes):
    """A synthetic inventory of ``sizes`` (see synthetic_inventory), and the file it is written to."""
    inventory = synthetic_inventory(**sizes)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    return inventory, path


def duplicates(server) -> list[str]:
    keys = Counter(r["correlation_id"] for r in server.store.rows("cmdb_ci"))
    return [k for k, n in keys.items() if n > 1]


def test_kill_9_during_apply_then_the_next_run_converges(tmp_path):
    inventory, path = inventory_file(tmp_path, accounts=2, vpcs=1, subnets=2, instances=20)
    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.02) as server:
        kill_9_run_when(server, PASSWORD, tmp_path, path, until=lambda: server.writes() >= 25)
        half = server.writes()
        assert 25 <= half < 100  # killed part-way through the CIs

        settings = settings_for(server, tmp_path, workers=4)
        finished = run_pipeline(settings, inventory_file=path)
        assert finished.exit_code == 0, finished.report["errors"]
        assert duplicates(server) == []
        assert len(server.store.rows("cmdb_ci")) == 2 + 2 + 2 + 4 + 80  # accounts, regions, VPCs, subnets, instances
        relations = Counter((r["parent"], r["child"], r["type"]) for r in server.store.rows("cmdb_rel_ci"))
        assert max(relations.values()) == 1 and len(relations) == 2 + 2 + 4 * 2 + 80
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_kill_9_during_ire_writes_then_the_next_run_converges(tmp_path):
    """servicenow.writer = "ire": killed part-way through the IRE payloads, the next run finishes the job,
    with no CI and no relation twice (IRE identifies the CIs the first run made)."""
    _inventory, path = inventory_file(tmp_path, accounts=2, vpcs=1, subnets=2, instances=20)
    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.02) as server:
        kill_9_run_when(server, PASSWORD, tmp_path, path, until=lambda: server.writes() >= 25,
                        servicenow_config='writer = "ire"\n')
        half = len(server.store.rows("cmdb_ci"))
        assert server.stats["POST identifyreconcile"] >= 25 and 0 < half < 90  # killed part-way through the CIs

        settings = settings_for(server, tmp_path, workers=4, writer="ire")
        finished = run_pipeline(settings, inventory_file=path)
        assert finished.exit_code == 0, finished.report["errors"]
        assert duplicates(server) == []
        assert len(server.store.rows("cmdb_ci")) == 2 + 2 + 2 + 4 + 80
        relations = Counter((r["parent"], r["child"], r["type"]) for r in server.store.rows("cmdb_rel_ci"))
        assert max(relations.values()) == 1 and len(relations) == 2 + 2 + 4 * 2 + 80
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []


def test_a_dropped_query_condition_never_retires_what_is_not_ours(tmp_path, monkeypatch):
    """ServiceNow drops conditions on unknown fields: a typo returns every row. Nothing wrong is retired."""
    inventory, path = inventory_file(tmp_path, accounts=1, vpcs=1, subnets=1, instances=4)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        account = inventory.accounts[0].account_id
        theirs = server.store.insert("cmdb_ci_vm_instance", {
            "name": "discovered", "discovery_source": "ServiceNow", "install_status": "1",
            "correlation_id": f"arn:aws:ec2:us-east-1:{account}:instance/i-discovered", "object_id": "i-discovered"}, "disco")
        unkeyed = server.store.insert("cmdb_ci_vm_instance", {"name": "by hand", "install_status": "1"}, "admin")

        def typo_owned(self, table, fields):
            # discovery_sorce: the instance drops the condition and returns every row of the table
            return self._cis(table, f"discovery_sorce={self.discovery_source}^sys_class_name={table}", fields)

        monkeypatch.setattr(CmdbReader, "owned_cis", typo_owned)
        outcome = run_pipeline(load_settings(None, {**_data(server, tmp_path), "reconcile": {"max_retire_fraction": 1.0}}),
                               inventory_file=path)
        assert outcome.exit_code == 0
        assert [c for c in outcome.report["changes"] if c["action"] == "retire"] == []
        assert server.store.get("cmdb_ci_vm_instance", theirs["sys_id"])["install_status"] == "1"
        assert server.store.get("cmdb_ci_vm_instance", unkeyed["sys_id"])["install_status"] == "1"


def _data(server, tmp_path) -> dict:
    return {"aws": {"external_id": "not-used-here"},
            "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD},
            "report": {"output_dir": str(tmp_path / "reports")}}


def test_adoption_duplicates_revive_and_the_guard_over_http(tmp_path):
    inventory = synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=8)
    account = inventory.accounts[0].account_id
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        first_vm = next(r.resource["InstanceId"] for r in inventory.records if r.source == "ec2:instance")
        made_by_discovery = server.store.insert("cmdb_ci_vm_instance", {
            "name": "old name", "object_id": first_vm, "discovery_source": "ServiceNow", "install_status": "1"}, "disco")
        twin = f"arn:aws:ec2:us-east-1:{account}:subnet/" + next(r.resource["SubnetId"] for r in inventory.records if r.source == "ec2:subnet")
        for _ in range(2):
            server.store.insert("cmdb_ci_cloud_subnet", {"name": "dup", "correlation_id": twin, "discovery_source": DS}, "x")
        settings = settings_for(server, tmp_path)
        report = run_pipeline(settings, inventory_file=path).report
        adopted = server.store.get("cmdb_ci_vm_instance", made_by_discovery["sys_id"])
        assert adopted["discovery_source"] == DS and adopted["correlation_id"].endswith(first_vm)
        assert len([r for r in server.store.rows("cmdb_ci_vm_instance") if r["object_id"] == first_vm]) == 1
        assert report["duplicates"] == [{"table": "cmdb_ci_cloud_subnet", "identity": twin, "sys_ids": sorted(
            r["sys_id"] for r in server.store.rows("cmdb_ci_cloud_subnet"))}]

        # six of eight instances gone: the guard holds them, --force retires them
        gone = synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=2)
        smaller = tmp_path / "smaller.jsonl"
        write_inventory(gone, smaller)
        held = run_pipeline(settings, inventory_file=smaller)
        assert held.report["tables"]["cmdb_ci_vm_instance"]["retired"] == 0
        assert "would retire 6 of 8 owned CIs" in held.report["guards"][0]
        assert "cmdb_connector_guards 1\n" in (held.report_path.parent / "cmdb_connector.prom").read_text()
        assert summary_line(held.report).endswith(", 1 guard(s)")
        forced = run_pipeline(settings, inventory_file=smaller, force=True)
        assert forced.report["tables"]["cmdb_ci_vm_instance"]["retired"] == 6
        # they come back: revived
        back = run_pipeline(settings, inventory_file=path)
        assert back.report["tables"]["cmdb_ci_vm_instance"]["revived"] == 6
        assert {r["install_status"] for r in server.store.rows("cmdb_ci_vm_instance")} == {"1"}


def test_writes_the_instance_undoes_between_runs_are_named_in_the_report(tmp_path):
    """A business rule that renames a CI after each run, an identity edited by hand: each run would
    write the same again for ever, and the report says so."""
    inventory, path = inventory_file(tmp_path, accounts=1, vpcs=1, subnets=1, instances=2)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 0 and first.report["warnings"] == []
        ruled, edited = ({**row} for row in sorted(server.store.rows("cmdb_ci_vm_instance"), key=lambda r: r["correlation_id"]))

        def business_rule():
            server.store.update("cmdb_ci_vm_instance", ruled["sys_id"], {"name": "renamed-by-a-rule"}, "rule")

        business_rule()
        server.store.update("cmdb_ci_vm_instance", edited["sys_id"], {"correlation_id": "edited-by-hand"}, "admin")
        second = run_pipeline(settings, inventory_file=path).report
        assert {(c["action"], c["identity"]) for c in second["changes"] if c["table"] == "cmdb_ci_vm_instance"} >= {
            ("update", ruled["correlation_id"]), ("create", edited["correlation_id"])}
        # the first run created the renamed CI (no update to repeat); the edited one is created again
        assert [w for w in second["warnings"] if w.startswith("cmdb_ci_vm_instance")] == [
            w for w in second["warnings"] if w.startswith("cmdb_ci_vm_instance: 1 record(s) created again")]
        assert any(w.startswith("cmdb_ci_vm_instance: 1 record(s) created again") for w in second["warnings"])

        business_rule()
        third = run_pipeline(settings, inventory_file=path).report
        [renamed] = [w for w in third["warnings"] if w.startswith("cmdb_ci_vm_instance.name")]
        assert summary_line(third).endswith(f"0 error(s), {len(third['warnings'])} warning(s)")
        prometheus = (tmp_path / "reports" / "cmdb_connector.prom").read_text()
        assert f"cmdb_connector_warnings {len(third['warnings'])}\n" in prometheus  # something to alert on
        assert f"e.g. {ruled['correlation_id']}: it reads 'renamed-by-a-rule' again" in renamed
        assert "created again" not in " ".join(third["warnings"])  # the second run's create held

        fourth = run_pipeline(settings, inventory_file=path).report  # no rule this time: converged, nothing said
        assert fourth["changes"] == [] and fourth["warnings"] == []
        assert summary_line(fourth).endswith("0 error(s)")
        assert "cmdb_connector_warnings 0\n" in (tmp_path / "reports" / "cmdb_connector.prom").read_text()


@contextmanager
def reconciled_estate(tmp_path, instances: int = 12):
    """The stand-in, holding what a first run made of one account with ``instances`` instances."""
    path = tmp_path / "inventory.jsonl"
    write_inventory(synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=instances), path)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        yield server, settings, path


def edited_mappings(tmp_path, file: str, old: str, new: str):
    """The built-in mappings, copied as an admin would, with one edit."""
    import shutil

    from connector.mapping.load import builtin_mappings_dir, load_mappings

    edited = tmp_path / "mappings"
    shutil.copytree(builtin_mappings_dir(), edited)
    text = (edited / file).read_text()
    assert old in text
    (edited / file).write_text(text.replace(old, new))
    return load_mappings(edited)


def run_log(caplog) -> list[tuple[str, str]]:
    """What the runs so far logged, as (level, message)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("connector")]


def test_a_typo_in_a_relation_template_deletes_no_relation_without_force(tmp_path, caplog):
    """A CMDB admin mistypes the datacenter identity of the instances' mapping: nothing points anywhere any more.
    The guard and the warning are in the log too, for whoever reads the log and not the report."""
    with reconciled_estate(tmp_path) as (server, settings, path):
        before = sorted((r["parent"], r["child"], r["type"]) for r in server.store.rows("cmdb_rel_ci"))

        typo = edited_mappings(tmp_path, "cmdb_ci_vm_instance.toml", ":region/{$region}", ":regoin/{$region}")
        held = run_pipeline(settings, inventory_file=path, mappings=typo)
        assert sorted((r["parent"], r["child"], r["type"]) for r in server.store.rows("cmdb_rel_ci")) == before
        [guard] = held.report["guards"]
        assert guard.startswith("cmdb_ci_vm_instance: would delete 12 of its 12 'Hosted on::Hosts' relations (100%)")
        [lost] = held.report["warnings"]  # the lost targets, in one line with an example
        assert lost.startswith("cmdb_ci_vm_instance: Hosted on::Hosts target cmdb_ci_aws_datacenter not found for "
                               "12 CI(s), e.g. arn:aws:ec2:") and ":regoin/" in lost
        assert summary_line(held.report).endswith(", 1 guard(s), 1 warning(s)")
        assert {("WARNING", f"guard: {guard}"), ("WARNING", lost)} <= set(run_log(caplog))

        forced = run_pipeline(settings, inventory_file=path, mappings=typo, force=True)
        assert forced.report["relations"]["deleted"] == 12 and forced.report["guards"] == []


def test_a_changed_identity_template_creates_no_duplicate_without_force(tmp_path):
    """An admin changes how the instances' correlation_id is built: every instance would be created again."""
    with reconciled_estate(tmp_path) as (server, settings, path):
        before = {table: sorted(r["sys_id"] for r in server.store.rows(table)) for table in ("cmdb_ci", "cmdb_rel_ci")}

        changed = edited_mappings(tmp_path, "cmdb_ci_vm_instance.toml", ":instance/{InstanceId}", ":instance/{InstanceId}/v2")
        held = run_pipeline(settings, inventory_file=path, mappings=changed)
        assert {table: sorted(r["sys_id"] for r in server.store.rows(table)) for table in before} == before
        assert [g.split(":")[0] for g in held.report["guards"]] == ["cmdb_ci_vm_instance"] * 2
        assert "would create 12 CIs for resources its owned CIs already hold" in held.report["guards"][1]
        assert held.report["changes"] == []

        forced = run_pipeline(settings, inventory_file=path, mappings=changed, force=True)
        vm = forced.report["tables"]["cmdb_ci_vm_instance"]
        assert (vm["created"], vm["retired"]) == (12, 12) and forced.report["errors"] == []


def test_a_mistyped_field_path_empties_no_field_without_force(tmp_path):
    """An admin mistypes the path of ip_address: it finds nothing on any instance."""
    with reconciled_estate(tmp_path) as (server, settings, path):
        addresses = sorted(r["ip_address"] for r in server.store.rows("cmdb_ci_vm_instance"))
        assert all(addresses)

        typo = edited_mappings(tmp_path, "cmdb_ci_vm_instance.toml", 'ip_address = "PrivateIpAddress"',
                               'ip_address = "PrivateIpAdress"')
        held = run_pipeline(settings, inventory_file=path, mappings=typo)
        assert sorted(r["ip_address"] for r in server.store.rows("cmdb_ci_vm_instance")) == addresses
        assert held.report["guards"][0].startswith("cmdb_ci_vm_instance.ip_address: would empty it on 12 of 12 CIs")
        assert held.report["changes"] == [] and held.report["tables"]["cmdb_ci_vm_instance"]["unchanged"] == 12
        # and the run says why, for CIs it creates too (no guard holds those): the field mapped empty everywhere
        assert [w for w in held.report["warnings"] if "empty for every one" in w] == [
            "cmdb_ci_vm_instance.ip_address: empty for every one of the 12 resources cmdb_ci_vm_instance.toml mapped: "
            "a path or tag that matches nothing (a typo, a key AWS renamed)? `cmdb-connector map --inventory FILE` "
            "shows what each field gets from a saved inventory"]

        forced = run_pipeline(settings, inventory_file=path, mappings=typo, force=True)
        assert forced.report["tables"]["cmdb_ci_vm_instance"]["updated"] == 12
        assert {r["ip_address"] for r in server.store.rows("cmdb_ci_vm_instance")} == {""}


def test_cis_of_a_class_no_mapping_covers_are_named_kept_and_not_made_twice(tmp_path):
    """A CMDB admin moves the instances to another class: the old CIs are named, kept as they are, and not
    duplicated in the new class without --force."""
    import shutil

    from connector.mapping.load import builtin_mappings_dir, load_mappings

    with reconciled_estate(tmp_path) as (server, settings, path):
        before = {r["sys_id"]: dict(r) for r in server.store.rows("cmdb_ci_vm_instance")}
        moved = tmp_path / "moved"
        shutil.copytree(builtin_mappings_dir(), moved)
        (moved / "cmdb_ci_vm_instance.toml").rename(moved / "cmdb_ci_vm.toml")
        volumes = moved / "cmdb_ci_storage_volume.toml"
        volumes.write_text(volumes.read_text().replace("cmdb_ci_vm_instance", "cmdb_ci_vm"))

        held = run_pipeline(settings, inventory_file=path, mappings=load_mappings(moved))
        assert held.exit_code == 0, held.report["errors"]
        assert server.store.rows("cmdb_ci_vm") == [] and duplicates(server) == []
        assert {r["sys_id"]: r for r in server.store.rows("cmdb_ci_vm_instance")} == before  # not retired either
        [guard] = held.report["guards"]
        assert guard.startswith("cmdb_ci_vm: would create 12 CIs for resources that CIs of this connector in "
                                "cmdb_ci_vm_instance (a class that no mapping file covers now) already hold")
        assert f"cmdb_ci_vm_instance: 12 active CI(s) of this connector (discovery_source = {DS})" in " ".join(
            held.report["warnings"])

        forced = run_pipeline(settings, inventory_file=path, mappings=load_mappings(moved), force=True)
        assert forced.exit_code == 0 and forced.report["tables"]["cmdb_ci_vm"]["created"] == 12
        assert {r["sys_id"]: r for r in server.store.rows("cmdb_ci_vm_instance")} == before
        assert any(w.startswith("cmdb_ci_vm_instance: 12 active CI(s)") for w in forced.report["warnings"])



def test_a_refused_look_for_cis_in_other_classes_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    from connector.errors import ServiceNowPermissionError

    def refused(self, tables):
        raise ServiceNowPermissionError("ServiceNow refused the request: ACL", status=403, method="GET", url="/cmdb_ci")

    with reconciled_estate(tmp_path) as (server, settings, path):
        monkeypatch.setattr(CmdbReader, "owned_in_other_classes", refused)
        rerun = run_pipeline(settings, inventory_file=path)
        assert rerun.exit_code == 0 and rerun.report["changes"] == []
        assert rerun.report["warnings"] == ["CIs of this connector in classes that no mapping file covers were not "
                                            "looked for: ServiceNow refused the request: ACL | HTTP 403 | GET /cmdb_ci"]


def test_a_datacenter_made_by_hand_is_adopted_by_no_account_when_several_match_it(tmp_path):
    """Two accounts in us-east-1, one datacenter "us-east-1" made by hand: object_id alone cannot say whose."""
    inventory, path = inventory_file(tmp_path, accounts=2, vpcs=1, subnets=1, instances=2)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        by_hand = server.store.insert("cmdb_ci_aws_datacenter", {"name": "us-east-1", "object_id": "us-east-1",
                                                                  "install_status": "1"}, "admin")
        first = run_pipeline(settings_for(server, tmp_path), inventory_file=path)
        assert first.exit_code == 0, first.report["errors"]
        assert server.store.get("cmdb_ci", by_hand["sys_id"]) == by_hand  # untouched
        ours = [r for r in server.store.rows("cmdb_ci_aws_datacenter") if r["discovery_source"] == DS]
        assert sorted(r["correlation_id"].split(":")[4] for r in ours) == sorted(a.account_id for a in inventory.accounts)
        [warning] = [w for w in first.report["warnings"] if "without correlation_id" in w]
        assert warning.startswith(f"cmdb_ci_aws_datacenter: 1 CI(s) without correlation_id match several resources "
                                  f"by object_id (e.g. {by_hand['sys_id']}, for 2 resources")
        # each account's instances hang on their own account's datacenter
        dc_account = {r["sys_id"]: r["correlation_id"].split(":")[4] for r in ours}
        rel_parent_dc = {r["parent"]: r["child"] for r in server.store.rows("cmdb_rel_ci") if r["child"] in dc_account}
        for vm in server.store.rows("cmdb_ci_vm_instance"):
            assert dc_account[rel_parent_dc[vm["sys_id"]]] == vm["correlation_id"].split(":")[4]
        assert run_pipeline(settings_for(server, tmp_path), inventory_file=path).report["changes"] == []


def test_a_class_identified_by_another_field_than_correlation_id_converges(tmp_path):
    """[target] identity names another field: CIs are matched on it, so a rerun makes nothing twice."""
    path = tmp_path / "inventory.jsonl"
    write_inventory(synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=6), path)
    by_instance_id = edited_mappings(tmp_path, "cmdb_ci_vm_instance.toml", "\n[fields]\n",
                                     '\n[target]\nidentity = "vm_inst_id"\n\n[fields]\n')
    assert by_instance_id.mappings["cmdb_ci_vm_instance"].identity_field == "vm_inst_id"
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        first = run_pipeline(settings, inventory_file=path, mappings=by_instance_id)
        assert first.exit_code == 0 and first.report["tables"]["cmdb_ci_vm_instance"]["created"] == 6
        again = run_pipeline(settings, inventory_file=path, mappings=by_instance_id)
        assert again.report["changes"] == [] and again.report["guards"] == []
        assert again.report["tables"]["cmdb_ci_vm_instance"]["unchanged"] == 6 and duplicates(server) == []
        assert again.report["relations"]["unchanged"] == first.report["relations"]["created"]

        # one instance gone: retired under its identity, by its correlation_id's scope
        write_inventory(synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=5), path)
        fewer = run_pipeline(settings, inventory_file=path, mappings=by_instance_id)
        [retired] = [c for c in fewer.report["changes"] if c["action"] == "retire"]
        assert retired["table"] == "cmdb_ci_vm_instance" and retired["identity"].startswith("i-")


def test_values_longer_than_their_field_are_cut_as_the_dictionary_says_and_a_rerun_writes_nothing(tmp_path):
    """The instance keeps 3 characters of every CI's name (cmdb_ci.name, inherited by every class): names are
    cut to fit. Then it keeps 40 of correlation_id: CIs whose ARN is longer are not written at all (cut, their
    identity would never match again: each run would make them once more), and none of them is retired."""
    inventory, path = inventory_file(tmp_path, accounts=1, vpcs=1, subnets=1, instances=3)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        reader_lengths = CmdbReader(TableClient(settings.servicenow), DS).field_lengths(
            {"cmdb_ci_vm_instance": ["name", "vm_inst_id", "cpus", "no_such_field"], "cmdb_ci_aws_datacenter": ["region"]})
        assert reader_lengths == {"cmdb_ci_vm_instance": {"name": 255, "vm_inst_id": 255},
                                  "cmdb_ci_aws_datacenter": {"region": 255}}  # cpus is an integer: never cut
        server.store.set_length("cmdb_ci", "name", 3)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 0 and duplicates(server) == []
        names = [r["name"] for r in server.store.rows("cmdb_ci_vm_instance")]
        assert sorted(names) == ["app"] * 3  # app-0, app-1, app-2
        assert any(w.startswith("cmdb_ci_vm_instance.name: 3 value(s) longer than the field's 3 characters")
                   for w in first.report["warnings"])
        second = run_pipeline(settings, inventory_file=path)
        assert second.exit_code == 0
        assert second.report["changes"] == [] and not second.report["relations"]["created"]
        assert not any("written again" in w for w in second.report["warnings"])

        before = {r["sys_id"]: dict(r) for r in server.store.rows("cmdb_ci")}
        relations = len(server.store.rows("cmdb_rel_ci"))
        server.store.set_length("cmdb_ci", "correlation_id", 40)  # every ARN here is longer
        third = run_pipeline(settings, inventory_file=path)
        assert third.report["changes"] == [] and not third.report["relations"]["deleted"]  # nothing made, nothing retired
        assert any(w.startswith("cmdb_ci_vm_instance.correlation_id: 3 CI(s) not written: the identity is longer")
                   for w in third.report["warnings"])
        assert {r["sys_id"]: r for r in server.store.rows("cmdb_ci")} == before
        assert len(server.store.rows("cmdb_rel_ci")) == relations


def test_a_refused_read_of_the_dictionary_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    from connector.errors import ServiceNowPermissionError

    def refused(self, fields):
        raise ServiceNowPermissionError("ServiceNow refused the request: ACL", status=403, method="GET",
                                        url="/sys_db_object")

    with reconciled_estate(tmp_path) as (server, settings, path):
        monkeypatch.setattr(CmdbReader, "dictionary", refused)
        rerun = run_pipeline(settings, inventory_file=path)
        assert rerun.exit_code == 0 and rerun.report["changes"] == []
        assert rerun.report["warnings"] == [
            "field lengths not read from sys_dictionary and sys_db_object, so a value longer than its field is not "
            "cut to fit (the instance cuts it, and each run writes it again), and a mapped field the class lacks is "
            "not found: ServiceNow refused the request: ACL | HTTP 403 | GET /sys_db_object"]


def test_a_class_the_instance_lacks_is_left_as_it_is_and_the_others_are_reconciled(tmp_path, caplog):
    """An instance without one class (its plugin not installed: 400 "Invalid table") or whose ACLs refuse
    it: that class is named in the errors and the run exits 1, none of its CIs is created, updated or
    retired and their relations are kept; every other class is reconciled. Once the class is there, the
    next run creates its CIs and converges."""
    inventory, path = inventory_file(tmp_path, accounts=1, vpcs=1, subnets=2, instances=3)
    subnets = "cmdb_ci_cloud_subnet"
    with ServiceNowStandIn(users={"svc": PASSWORD}, missing_tables=[subnets]) as server:
        settings = settings_for(server, tmp_path)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 1
        [error] = first.report["errors"]
        assert error.startswith(f"{subnets}: its CIs could not be read from ServiceNow") and "Invalid table" in error
        assert ("ERROR", error) in run_log(caplog)
        assert any(g.startswith(f"{subnets}: its CIs could not be read") for g in first.report["guards"])
        assert server.stats.get(f"POST {subnets}", 0) == 0 and not any(k.endswith(f" {subnets}") and "batch" in k
                                                                          for k in server.stats)
        assert len(server.store.rows("cmdb_ci_vm_instance")) == 6  # every other class made
        assert first.report["tables"][subnets]["created"] == 0

        server.faults.update({"missing_tables": []})  # the class installed
        second = run_pipeline(settings, inventory_file=path)
        assert second.exit_code == 0, second.report["errors"]
        assert second.report["tables"][subnets]["created"] == 2 and duplicates(server) == []
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []
        relations = len(server.store.rows("cmdb_rel_ci"))

        # Unreadable again, and a subnet and an instance gone from AWS: the instance is retired, the
        # subnet's CI and every relation stay as they are.
        server.faults.update({"missing_tables": [subnets]})
        gone_subnet = next(r for r in inventory.records if r.source == "ec2:subnet")
        gone_vm = next(r for r in inventory.records if r.source == "ec2:instance" and r.resource["SubnetId"] != gone_subnet.resource["SubnetId"])
        inventory.records = [r for r in inventory.records if r is not gone_subnet and r is not gone_vm]
        write_inventory(inventory, path)
        before = {r["sys_id"]: dict(r) for r in server.store.rows(subnets)}
        third = run_pipeline(settings, inventory_file=path)
        assert third.exit_code == 1
        assert [c["action"] for c in third.report["changes"]] == ["retire"]
        assert third.report["changes"][0]["identity"].endswith(gone_vm.resource["InstanceId"])
        assert {r["sys_id"]: dict(r) for r in server.store.rows(subnets)} == before
        assert len(server.store.rows("cmdb_rel_ci")) == relations and third.report["relations"]["deleted"] == 0


def test_last_discovered_is_stamped_on_writes_and_again_once_old_then_nothing(tmp_path):
    """Over HTTP: a create stamps first_discovered and last_discovered with the run's time (in ServiceNow's
    UTC form); a rerun writes nothing; once every stamp is older than reconcile.last_discovered_days, each
    CI is stamped again (refreshed: no other field written, nothing else counted), and the next run
    writes nothing. With last_discovered_days = 0 nothing is stamped."""
    inventory, path = inventory_file(tmp_path, accounts=1, vpcs=1, subnets=1, instances=4)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        settings = settings_for(server, tmp_path)
        first = run_pipeline(settings, inventory_file=path)
        assert first.exit_code == 0
        started = first.report["started_at"].replace("T", " ")[:19]
        cis = server.store.rows("cmdb_ci")
        assert {(r["first_discovered"], r["last_discovered"]) for r in cis} == {(started, started)}
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []

        for row in cis:
            server.store.update(row["sys_class_name"], row["sys_id"], {"last_discovered": "2020-01-01 00:00:00"}, "admin")
        before = {r["sys_id"]: dict(r) for r in server.store.rows("cmdb_ci")}
        aged = run_pipeline(settings, inventory_file=path)
        assert aged.exit_code == 0
        assert {c["action"] for c in aged.report["changes"]} == {"refresh"} and len(aged.report["changes"]) == len(cis)
        assert all(list(c["fields"]) == ["last_discovered"] for c in aged.report["changes"])
        counts = aged.report["tables"]["cmdb_ci_vm_instance"]
        assert counts["refreshed"] == 4 and counts["unchanged"] == counts["updated"] == 0
        assert f"{len(cis)} refreshed" in summary_line(aged.report) and not aged.report["warnings"]
        for row in server.store.rows("cmdb_ci"):
            was = before[row["sys_id"]]
            assert row["last_discovered"] > "2020-01-01 00:00:00" and row["first_discovered"] == was["first_discovered"]
            assert {k: v for k, v in row.items() if not k.startswith("sys_") and k != "last_discovered"} == {
                k: v for k, v in was.items() if not k.startswith("sys_") and k != "last_discovered"}
        assert run_pipeline(settings, inventory_file=path).report["changes"] == []

    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        never = settings_for(server, tmp_path / "never", reconcile={"last_discovered_days": 0})
        assert run_pipeline(never, inventory_file=path).exit_code == 0
        assert {(r["first_discovered"], r["last_discovered"]) for r in server.store.rows("cmdb_ci")} == {("", "")}


def test_a_first_run_into_a_class_others_fill_looks_up_hundreds_of_resources_in_requests_an_instance_takes(tmp_path):
    """The adoption lookups of a first run into a class that Discovery fills ask for every resource's
    identity: in chunks that the stand-in, refusing request heads over 8 KB as Tomcat does, still takes."""
    inventory, path = inventory_file(tmp_path, accounts=2, vpcs=1, subnets=2, instances=60)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        discovered = server.store.insert("cmdb_ci_vm_instance", {"name": "by discovery", "discovery_source": "ServiceNow",
                                                                 "object_id": "i-not-in-aws"}, "discovery")
        first = run_pipeline(settings_for(server, tmp_path), inventory_file=path)
        assert first.exit_code == 0, first.report["errors"]
        assert first.report["tables"]["cmdb_ci_vm_instance"]["created"] == 240 and duplicates(server) == []
        lookups = [r for r in map(unquote_plus, server.reads) if "correlation_idIN" in r and "vm_instance" in r]
        assert len(lookups) >= 3  # 240 ARNs: more than two chunks of the size an instance takes
        assert server.store.get("cmdb_ci_vm_instance", discovered["sys_id"])["discovery_source"] == "ServiceNow"


def test_a_discovery_source_longer_than_the_instance_keeps_is_refused_before_any_write(tmp_path):
    """Cut by the instance, the stamp would mark no CI as ours: every run would create every CI again. The
    dictionary says how long the field is: a longer discovery_source is a config error (exit 2), nothing
    written; one that fits runs as usual."""
    inventory, path = inventory_file(tmp_path, accounts=1, vpcs=1, subnets=1, instances=2)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        server.store.set_length("cmdb_ci", "discovery_source", 10)
        with pytest.raises(ConfigError) as refused:
            run_pipeline(settings_for(server, tmp_path), inventory_file=path)
        message = str(refused.value)
        assert message.startswith("[servicenow] discovery_source: 'AWS CMDB Connector' is 18 characters, and the "
                                  "instance keeps 10 of it") and "Fix: a discovery_source of at most 10" in message
        assert refused.value.exit_code == 2 and server.writes() == 0
        fits = settings_for(server, tmp_path, discovery_source="AWS CMDB")
        assert run_pipeline(fits, inventory_file=path).exit_code == 0
        assert run_pipeline(fits, inventory_file=path).report["changes"] == []


def test_a_mapped_field_the_class_lacks_is_named_and_not_written_again_on_every_run(tmp_path):
    """An admin maps a field the instance's class does not have (a typo, or a custom field not made yet). The
    instance ignores it on write, so each run would write it on every CI again. The dictionary says the class
    lacks it: it is left out, with one warning, and the estate stays still."""
    with reconciled_estate(tmp_path) as (server, settings, path):
        typo = edited_mappings(tmp_path, "cmdb_ci_vm_instance.toml", 'ip_address = "PrivateIpAddress"',
                               'ip_adress = "PrivateIpAddress"\nip_address = "PrivateIpAddress"')
        writes = server.writes()
        again = run_pipeline(settings, inventory_file=path, mappings=typo)
        assert again.exit_code == 0 and again.report["changes"] == [] and server.writes() == writes
        assert again.report["warnings"] == [
            "cmdb_ci_vm_instance.ip_adress: the class has no such field on this instance (sys_dictionary), so it is "
            "not written (12 CI(s)). Check the field's name in its mapping, or add the field to the class."]


def test_an_identity_field_the_class_lacks_holds_the_class_and_makes_no_duplicate(tmp_path):
    """Were its identity missing on the instance, no CI of the class would ever match: each run would create them
    all again. The class is held, with a guard that says why; the rest is reconciled."""
    with reconciled_estate(tmp_path) as (server, settings, path):
        rows = {r["sys_id"]: dict(r) for r in server.store.rows("cmdb_ci_vm_instance")}
        typo = edited_mappings(tmp_path, "cmdb_ci_vm_instance.toml", 'vm_inst_id = "InstanceId"',
                               'vm_inst_id = "InstanceId"\nvm_instance_id = "InstanceId"')
        path_of = tmp_path / "mappings" / "cmdb_ci_vm_instance.toml"
        path_of.write_text(path_of.read_text() + '\n[target]\nidentity = "vm_instance_id"\n')
        from connector.mapping.load import load_mappings

        typo = load_mappings(tmp_path / "mappings")
        held = run_pipeline(settings, inventory_file=path, mappings=typo)
        assert held.exit_code == 0 and held.report["changes"] == [] and duplicates(server) == []
        assert {r["sys_id"]: r for r in server.store.rows("cmdb_ci_vm_instance")} == rows
        [guard] = held.report["guards"]
        assert guard.startswith("cmdb_ci_vm_instance: the class has no field vm_instance_id on this instance")


def test_resources_that_clash_on_one_identity_are_named_in_the_report(tmp_path):
    """A datacenter template without the region: each account's regions map to one identity."""
    _inventory, path = inventory_file(tmp_path, accounts=1, regions=("us-east-1", "eu-west-1"), vpcs=1, subnets=1,
                                      instances=1)
    clashing = edited_mappings(tmp_path, "cmdb_ci_aws_datacenter.toml", "ec2:{$region}:{$account_id}:region/{RegionName}",
                               "ec2::{$account_id}:region")
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        plan = run_pipeline(settings_for(server, tmp_path), mode="plan", inventory_file=path, mappings=clashing)
        assert plan.report["tables"]["cmdb_ci_aws_datacenter"]["created"] == 1
        assert any(w.startswith("cmdb_ci_aws_datacenter: 1 resource(s) map to an identity that another resource has "
                                "already") for w in plan.report["warnings"]), plan.report["warnings"]
