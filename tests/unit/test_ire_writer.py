"""IreWriter against the stand-in's IRE, over real HTTP: payloads, waves, and one bad item among good ones."""

from __future__ import annotations

import json
import shutil

import responses

from connector.cli import main
from connector.mapping.load import builtin_mappings_dir
from connector.models import DesiredCI, RelationRef
from connector.servicenow.client import TableClient
from connector.servicenow.cmdb import TableApiWriter, WriteOp, create_ci_op, create_relation_op
from connector.servicenow.ire import IreWriter
from connector.settings import ServiceNowSettings

SOURCE = "cmdb-connector"
ACCOUNT = ("cmdb_ci_cloud_service_account", "arn:aws:iam::111111111111:root")
DC = ("cmdb_ci_aws_datacenter", "arn:aws:ec2:us-east-1:111111111111:region/us-east-1")
DC2 = ("cmdb_ci_aws_datacenter", "arn:aws:ec2:eu-west-1:111111111111:region/eu-west-1")
SCOPE = ("111111111111", "us-east-1", "ec2:instance")
SCANNED = "2026-12-01 09:30:00"  # the run's time


def ci(key, relations=(), **fields) -> DesiredCI:
    return DesiredCI(key[0], key[1], {"correlation_id": key[1], **fields}, tuple(relations), SCOPE)


def hosted_on(key) -> RelationRef:
    return RelationRef("Hosted on::Hosts", key[0], key[1], "parent")


def vm(name: str, host=DC) -> DesiredCI:
    return ci(("cmdb_ci_vm_instance", f"arn:aws:ec2:us-east-1:111111111111:instance/{name}"), [hosted_on(host)],
              object_id=name, name=name)


def world(standin, desired, held=frozenset(), sys_ids=None):
    """A writer for ``desired`` and the account and both datacenters, all to be created but ``held``."""
    tables = TableClient(ServiceNowSettings(instance_url=standin.url, username="admin", password="s3cret-pw"))
    cis = [ci(ACCOUNT, account_id="111111111111", object_id="111111111111"),
           ci(DC, [hosted_on(ACCOUNT)], object_id="us-east-1", region="us-east-1"),
           ci(DC2, [hosted_on(ACCOUNT)], object_id="eu-west-1", region="eu-west-1"), *desired]
    sys_ids = sys_ids or {}
    creates = {(c.table, c.identity) for c in cis} - set(held) - set(sys_ids)
    return IreWriter(tables, TableApiWriter(tables), SOURCE, cis, sys_ids, creates, batch_size=10, scanned_at=SCANNED)


def create(desired: DesiredCI) -> WriteOp:
    return create_ci_op(desired.table, {k: str(v) for k, v in desired.fields.items()}, "correlation_id")


def test_a_create_carries_its_hosts_and_their_relations_which_are_then_done(standin):
    one = vm("i-1")
    writer = world(standin, [one])
    (result,) = writer.write_many([create(one)])
    assert result.error is None
    row = standin.store.get("cmdb_ci", result.sys_id)
    assert (row["sys_class_name"], row["name"], row["discovery_source"]) == ("cmdb_ci_vm_instance", "i-1", SOURCE)
    assert {r["sys_class_name"] for r in standin.store.rows("cmdb_ci")} == {
        "cmdb_ci_vm_instance", "cmdb_ci_aws_datacenter", "cmdb_ci_cloud_service_account"}  # not eu-west-1's
    assert writer.relations_done == {("Hosted on::Hosts", (one.table, one.identity), DC), ("Hosted on::Hosts", DC, ACCOUNT)}
    assert len(standin.store.rows("cmdb_rel_ci")) == 2
    sources = {row["target_sys_id"]: row for row in standin.store.rows("sys_object_source")}
    assert (sources[result.sys_id]["id"], sources[result.sys_id]["last_scan"]) == (one.identity, SCANNED)


def test_waves_put_hosts_first_and_the_table_api_keeps_what_ire_does_not_do(standin):
    one = vm("i-1")
    writer = world(standin, [one])
    ops = [create(one), WriteOp("DELETE", "cmdb_rel_ci", "0" * 32), create(writer.cis[DC]), create(writer.cis[ACCOUNT]),
           WriteOp("PATCH", "cmdb_ci_vm_instance", "f" * 32, {"install_status": "7"})]  # a retire: no desired CI
    assert writer.waves(ops) == [[1, 4], [3], [2], [0]]
    assert [writer.key(op) for op in ops] == [(one.table, one.identity), None, DC, ACCOUNT, None]
    relation = create_relation_op("a" * 32, "b" * 32, "c" * 32)
    assert writer.key(relation) is None


def test_an_update_whose_host_is_not_known_goes_by_sys_id_through_the_table_api(standin, caplog):
    """The datacenter's class could not be read this run (or its scope was not collected): an update of a CI
    plan matched cannot carry its host, IRE refuses it, and the Table API updates it by its sys_id."""
    one = vm("i-1")
    (made,) = world(standin, [one]).write_many([create(one)])
    for row in list(standin.store.rows("sys_object_source")):
        standin.store.delete("sys_object_source", row["sys_id"])  # as if made through the Table API: no source key
    writer = world(standin, [vm("i-1")], held={DC, DC2, ACCOUNT}, sys_ids={(one.table, one.identity): made.sys_id})
    (result,) = writer.write_many([WriteOp("PATCH", one.table, made.sys_id, {"state": "off"})])
    assert result.error is None and result.sys_id == made.sys_id
    assert standin.store.get("cmdb_ci", made.sys_id)["state"] == "off"
    assert "IRE: MISSING_DEPENDENCY" in caplog.text and "updated through the Table API by its sys_id" in caplog.text


def test_one_bad_item_fails_alone_and_a_held_host_is_never_created(standin):
    good, orphan, held = vm("i-1"), vm("i-2", host=("cmdb_ci_aws_datacenter", "arn:unknown")), vm("i-3", host=DC2)
    writer = world(standin, [good, orphan, held], held={DC2})
    results = writer.write_many([create(good), create(orphan), create(held)])
    assert results[0].error is None and results[0].sys_id
    for failed in results[1:]:
        assert failed.error.startswith("IRE: MISSING_DEPENDENCY: In payload missing a dependent relation 'Hosted on::Hosts'")
    assert sorted(r["name"] for r in standin.store.rows("cmdb_ci_vm_instance")) == ["i-1"]
    assert not [r for r in standin.store.rows("cmdb_ci_aws_datacenter") if r["region"] == "eu-west-1"]
    assert ("Hosted on::Hosts", (good.table, good.identity), DC) in writer.relations_done
    assert not any(key == (held.table, held.identity) for _t, key, _h in writer.relations_done)


def test_an_update_sends_every_mapped_value_with_the_changed_ones(standin):
    one = vm("i-1")
    writer = world(standin, [one])
    (made,) = writer.write_many([create(one)])
    standin.store.update("cmdb_ci", made.sys_id, {"name": "renamed by hand"}, "admin")
    updater = world(standin, [vm("i-1")], sys_ids={(one.table, one.identity): made.sys_id})
    (result,) = updater.write_many([WriteOp("PATCH", one.table, made.sys_id, {"name": "i-1", "last_discovered": "2026-12-01 10:00:00"})])
    assert result.sys_id == made.sys_id
    row = standin.store.get("cmdb_ci", made.sys_id)
    assert (row["name"], row["last_discovered"], row["object_id"]) == ("i-1", "2026-12-01 10:00:00", "i-1")
    assert len(standin.store.rows("cmdb_ci_vm_instance")) == 1


def test_a_user_refused_the_api_fails_each_write_with_the_reason(standin):
    standin.faults.update({"acl_denied_tables": ["identifyreconcile"]})  # no itil or asset role
    one = vm("i-1")
    (result,) = world(standin, [one]).write_many([create(one)])
    assert "ServiceNow refused the request: User Not Authorized" in result.error
    assert "itil or asset role" in result.error
    assert standin.store.rows("cmdb_ci") == []


def test_an_update_ire_would_put_elsewhere_goes_by_sys_id_through_the_table_api(standin, caplog):
    """A CI made through the Table API before the switch to IRE, whose "Hosted on" relation someone deleted:
    IRE's rule would not find it and would make a second CI. Plan matched it by identity: it is updated there."""
    one = vm("i-1")
    (made,) = world(standin, [one]).write_many([create(one)])
    for row in list(standin.store.rows("sys_object_source")):
        standin.store.delete("sys_object_source", row["sys_id"])  # as if made through the Table API
    for row in list(standin.store.rows("cmdb_rel_ci")):
        if row["parent"] == made.sys_id:
            standin.store.delete("cmdb_rel_ci", row["sys_id"])
    standin.stats.clear()
    writer = world(standin, [vm("i-1")], sys_ids={(one.table, one.identity): made.sys_id})
    (result,) = writer.write_many([WriteOp("PATCH", one.table, made.sys_id, {"name": "i-1", "state": "off"})])
    assert result.error is None and result.sys_id == made.sys_id
    assert [r["sys_id"] for r in standin.store.rows("cmdb_ci_vm_instance")] == [made.sys_id]  # no second CI
    assert standin.store.get("cmdb_ci", made.sys_id)["state"] == "off"
    assert standin.stats["POST identifyreconcile/query"] == 1 and "POST identifyreconcile" not in standin.stats
    assert standin.stats["PATCH cmdb_ci_vm_instance"] == 1
    assert f"IRE would create a new CI for cmdb_ci_vm_instance {one.identity}, which plan matched to {made.sys_id}" \
        in caplog.text
    assert writer.findings() == [f"IRE would create a new CI for cmdb_ci_vm_instance {one.identity}, which plan "
                                 f"matched to {made.sys_id}: updated through the Table API by its sys_id instead"]
    assert not any(key == (one.table, one.identity) for _t, key, _h in writer.relations_done)  # left to plan's create


def made_by_table_api(standin, first: DesiredCI) -> dict[tuple[str, str], str]:
    """``first``, its datacenter and account made (then their IRE source keys dropped, as if made through the
    Table API): plan's matches of the three."""
    (made,) = world(standin, [first]).write_many([create(first)])
    for row in list(standin.store.rows("sys_object_source")):
        standin.store.delete("sys_object_source", row["sys_id"])
    (dc,) = standin.store.rows("cmdb_ci_aws_datacenter")
    (account,) = standin.store.rows("cmdb_ci_cloud_service_account")
    return {(first.table, first.identity): made.sys_id, DC: dc["sys_id"], ACCOUNT: account["sys_id"]}


def test_a_create_whose_datacenter_lacks_its_relation_to_its_account_makes_no_second_datacenter(standin, caplog):
    """IRE identifies a datacenter under its account: one that lost its "Hosted on" relation to it (or never had
    it, made through the Table API) would not be found, and a payload carrying it would make a second one. The
    payload is asked first; the create goes through the Table API, and plan's relation creates mend the CMDB."""
    first, second, third = vm("i-1"), vm("i-2"), vm("i-3")
    sys_ids = made_by_table_api(standin, first)
    for row in list(standin.store.rows("cmdb_rel_ci")):
        if row["parent"] == sys_ids[DC]:
            standin.store.delete("cmdb_rel_ci", row["sys_id"])
    standin.stats.clear()
    writer = world(standin, [first, second, third], sys_ids=sys_ids)
    why = (f"IRE would make a second CI of the {DC[0]} {DC[1]} that it identifies others by, which plan matched to "
           f"{sys_ids[DC]} (does that CI lack the relation IRE identifies it by, to its own host?)")
    assert writer.predict([create(second)]) == [f"{why}: created through the Table API instead"]  # plan says so
    results = writer.write_many([create(second), create(third)])
    assert [r.error for r in results] == [None, None]
    assert [r["sys_id"] for r in standin.store.rows("cmdb_ci_aws_datacenter")] == [sys_ids[DC]]  # no second one
    assert [standin.store.get("cmdb_ci", r.sys_id)["name"] for r in results] == ["i-2", "i-3"]
    assert standin.stats["POST identifyreconcile/query"] == 2 and "POST identifyreconcile" not in standin.stats
    assert standin.stats["POST cmdb_ci_vm_instance"] == 2
    assert (f"for the create of cmdb_ci_vm_instance {second.identity}: created through the Table API instead"
            in caplog.text)
    assert writer.relations_done == set()  # left to plan's relation creates, through the Table API
    # the report's warnings: one line for the datacenter, with the writes it sent to the Table API
    assert writer.findings() == [f"{why}: the writes of the CIs it hosts went through the Table API instead (2 writes)"]


def test_the_findings_for_the_report_are_bounded(standin):
    writer = world(standin, [])
    for n in range(25):
        writer._found(f"finding {n}", "cmdb_ci_vm_instance")
    writer._found("finding 0", "cmdb_ci_vm_instance")
    lines = writer.findings()
    assert lines[:2] == ["finding 0 (2 writes)", "finding 1"] and len(lines) == 21
    assert lines[-1] == "and 5 more of IRE's writes that went otherwise than plan said (see the log)"


def test_a_create_whose_datacenter_ire_finds_goes_through_ire_after_asking(standin):
    first, second = vm("i-1"), vm("i-2")
    sys_ids = made_by_table_api(standin, first)  # the datacenter keeps its relation to its account
    standin.stats.clear()
    writer = world(standin, [first, second], sys_ids=sys_ids)
    (result,) = writer.write_many([create(second)])
    assert result.error is None
    assert [r["sys_id"] for r in standin.store.rows("cmdb_ci_aws_datacenter")] == [sys_ids[DC]]
    assert standin.stats["POST identifyreconcile/query"] == 1 and standin.stats["POST identifyreconcile"] == 1
    assert "POST cmdb_ci_vm_instance" not in standin.stats
    assert ("Hosted on::Hosts", (second.table, second.identity), DC) in writer.relations_done


def test_an_instance_that_refuses_a_payload_with_a_bad_item_as_a_whole_gets_each_item_alone():
    """Some instances answer a payload with one bad item with 400 and the IRE envelope, not 200: the items are
    then sent one by one too, and the bad one's error is IRE's own."""
    url = "https://sn.example.invalid/api/now/identifyreconcile"
    bad = "arn:aws:ec2:us-east-1:111111111111:instance/i-bad"

    def answer(request):
        items = json.loads(request.body)["items"]
        keys = [item["sys_object_source_info"]["source_native_key"] for item in items]
        envelope = [{"className": item["className"], "sysId": "Unknown" if key == bad else f"id-{n}",
                     "operation": "INSERT", "errors": [{"error": "MISSING_DEPENDENCY", "message": "no datacenter"}]
                     if key == bad else []} for n, (item, key) in enumerate(zip(items, keys))]
        return (400 if bad in keys else 200), {"Content-Type": "application/json"}, json.dumps(
            {"result": {"items": envelope, "relations": []}})

    with responses.RequestsMock() as mocked:
        mocked.add_callback(responses.POST, url, callback=answer)
        tables = TableClient(ServiceNowSettings(instance_url="https://sn.example.invalid", username="u", password="p"))
        good, worse = vm("i-good"), vm("i-bad")
        cis = [ci(ACCOUNT, account_id="111111111111"), ci(DC, [hosted_on(ACCOUNT)], object_id="us-east-1"), good, worse]
        writer = IreWriter(tables, TableApiWriter(tables), SOURCE, cis, {}, {(c.table, c.identity) for c in cis}, 10)
        results = writer.write_many([create(good), create(worse)])
        assert results[0].error is None and results[0].sys_id == "id-0"
        assert results[1].error.startswith("ServiceNow rejected the request: IRE: MISSING_DEPENDENCY: no datacenter")
        assert len(mocked.calls) == 3  # the pair, then each alone


def test_validate_names_the_files_ire_could_not_identify_by(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mappings"
    shutil.copytree(builtin_mappings_dir(), folder)
    network = folder / "cmdb_ci_network.toml"
    network.write_text("\n".join(line for line in network.read_text().splitlines() if not line.startswith("object_id")))
    instance = folder / "cmdb_ci_vm_instance.toml"
    instance.write_text(instance.read_text().replace('type = "Hosted on::Hosts"', 'type = "Runs on::Runs"'))
    config = tmp_path / "config.toml"
    config.write_text(f'[servicenow]\ninstance_url = "http://127.0.0.1:9"\nusername = "u"\nwriter = "ire"\n'
                      f'[reconcile]\nmappings_dir = "{folder}"\n')
    monkeypatch.setenv("CMDB_AWS__EXTERNAL_ID", "xx-yy")
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", "p")
    assert main(["validate", "--config", str(config)]) == 0  # warnings: an instance's own rules may differ
    out = capsys.readouterr().out
    assert "writer: ire (CI writes through /api/now/identifyreconcile); 2 warning(s)" in out
    assert ("  warning: cmdb_ci_network.toml: maps no object_id, which IRE identifies cmdb_ci_network by: its creates "
            "would fail (MISSING_MATCHING_ATTRIBUTES)") in out
    assert "  warning: cmdb_ci_vm_instance.toml: no [[relations]] \"Hosted on::Hosts\"" in out


def test_a_create_ire_puts_on_an_existing_ci_leaves_its_values_for_a_new_ci_only_out(standin):
    """An account of aws.accounts: its name (its id) is for a new CI only. IRE identifies the account CI
    another source made by account_id: that CI keeps its name; a truly new account gets the id as name."""
    theirs = standin.store.insert("cmdb_ci_cloud_service_account", {"name": "Payments production", "account_id": "222222222222",
                                                                    "object_id": "222222222222", "correlation_id": "theirs"}, "other")
    known = {"account_id": "222222222222", "object_id": "222222222222"}
    existing = DesiredCI(ACCOUNT[0], "arn:aws:iam::222222222222:root", {"correlation_id": "arn:aws:iam::222222222222:root",
                         **known}, (), SCOPE, create_only={"name": "222222222222"})
    new = DesiredCI(ACCOUNT[0], "arn:aws:iam::333333333333:root", {"correlation_id": "arn:aws:iam::333333333333:root",
                    "account_id": "333333333333", "object_id": "333333333333"}, (), SCOPE, create_only={"name": "333333333333"})
    writer = world(standin, [existing, new])
    ops = [create_ci_op(c.table, {**{k: str(v) for k, v in c.fields.items()}, "name": c.create_only["name"]}, "correlation_id")
           for c in (existing, new)]
    first, second = writer.write_many(ops)
    assert first.sys_id == theirs["sys_id"] and first.error is None
    assert standin.store.get("cmdb_ci", theirs["sys_id"])["name"] == "Payments production"
    assert standin.store.get("cmdb_ci", second.sys_id)["name"] == "333333333333"


def test_an_answer_whose_items_are_not_a_list_fails_each_write_with_the_reason_not_a_traceback():
    url = "https://sn.example.invalid/api/now/identifyreconcile"
    with responses.RequestsMock() as mocked:
        mocked.post(url, json={"result": {"items": {"0": {"sysId": "x"}}, "relations": []}})
        tables = TableClient(ServiceNowSettings(instance_url="https://sn.example.invalid", username="u", password="p"))
        one = vm("i-one")
        cis = [ci(ACCOUNT, account_id="111111111111"), ci(DC, [hosted_on(ACCOUNT)], object_id="us-east-1"), one]
        writer = IreWriter(tables, TableApiWriter(tables), SOURCE, cis, {}, {(c.table, c.identity) for c in cis}, 10)
        (result,) = writer.write_many([create(one)])
        assert result.sys_id is None and result.error.startswith("IRE: no sys_id in the answer (operation none)")


def test_an_update_ire_put_on_another_ci_than_it_said_is_a_finding():
    """The payload was asked first and IRE said the CI plan matched; the CMDB changed before the commit, which
    wrote another: the instance's call, said in the log and the report."""
    base = "https://sn.example.invalid/api/now/identifyreconcile"

    def answer(sys_id):
        return lambda request: (200, {"Content-Type": "application/json"}, json.dumps({"result": {"items": [
            {"className": item["className"], "sysId": sys_id if n == 0 else f"host-{n}", "operation": "UPDATE",
             "errors": []} for n, item in enumerate(json.loads(request.body)["items"])], "relations": []}}))

    with responses.RequestsMock() as mocked:
        mocked.add_callback(responses.POST, f"{base}/query", callback=answer("planned"))
        mocked.add_callback(responses.POST, base, callback=answer("another"))
        tables = TableClient(ServiceNowSettings(instance_url="https://sn.example.invalid", username="u", password="p"))
        one = vm("i-1")
        cis = [ci(ACCOUNT, account_id="111111111111"), ci(DC, [hosted_on(ACCOUNT)], object_id="us-east-1"), one]
        writer = IreWriter(tables, TableApiWriter(tables), SOURCE, cis, {(one.table, one.identity): "planned"},
                           {ACCOUNT, DC}, 10)
        (result,) = writer.write_many([WriteOp("PATCH", one.table, "planned", {"name": "i-1"})])
        assert result.sys_id == "another"
        assert writer.findings() == ["IRE wrote cmdb_ci_vm_instance another for the update planned on planned"]

