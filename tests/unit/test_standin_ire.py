"""The stand-in's Identification and Reconciliation API, over real HTTP (connector/sandbox/ire.py)."""

from __future__ import annotations

import requests

AUTH = ("admin", "s3cret-pw")
SOURCE = "cmdb-connector"


def post(standin, body, source=SOURCE, path="identifyreconcile"):
    params = {"sysparm_data_source": source} if source else {}
    response = requests.post(f"{standin.url}/api/now/{path}", params=params, json=body, auth=AUTH, timeout=10)
    return response.status_code, response.json()


def account(account_id="111111111111"):
    return {"className": "cmdb_ci_cloud_service_account",
            "values": {"account_id": account_id, "object_id": account_id, "name": f"acct-{account_id}"},
            "sys_object_source_info": {"source_name": SOURCE, "source_native_key": f"arn:aws:iam::{account_id}:root"}}


def datacenter(region="us-east-1"):
    return {"className": "cmdb_ci_aws_datacenter", "values": {"object_id": region, "region": region, "name": region}}


def vm(instance_id="i-1", **values):
    return {"className": "cmdb_ci_vm_instance", "values": {"object_id": instance_id, "name": instance_id, **values}}


def chain(*items):
    """items[0] hosted on items[1] hosted on items[2]: a resource, its datacenter, its account."""
    return {"items": list(items), "relations": [{"parent": 0, "child": 1, "type": "Hosted on::Hosts"},
                                                {"parent": 1, "child": 2, "type": "Hosted on::Hosts"}]}


def operations(answer):
    return [item["operation"] for item in answer["result"]["items"]]


def test_a_chain_is_inserted_then_found_again(standin):
    status, answer = post(standin, chain(vm(), datacenter(), account()))
    assert status == 200
    assert operations(answer) == ["INSERT", "INSERT", "INSERT"]
    assert [r["operation"] for r in answer["result"]["relations"]] == ["INSERT", "INSERT"]
    instance = standin.store.rows("cmdb_ci_vm_instance")[0]
    assert instance["discovery_source"] == SOURCE and instance["sys_id"] == answer["result"]["items"][0]["sysId"]

    _status, again = post(standin, chain(vm(), datacenter(), account()))
    assert operations(again) == ["NO_CHANGE", "NO_CHANGE", "NO_CHANGE"]
    _status, changed = post(standin, chain(vm(state="off"), datacenter(), account()))
    assert operations(changed) == ["UPDATE", "NO_CHANGE", "NO_CHANGE"]
    assert standin.store.rows("cmdb_ci_vm_instance")[0]["state"] == "off"
    assert (len(standin.store.rows("cmdb_ci")), len(standin.store.rows("cmdb_rel_ci"))) == (3, 2)


def test_the_same_object_id_in_another_region_is_another_ci(standin):
    post(standin, chain(vm(), datacenter("us-east-1"), account()))
    _status, answer = post(standin, chain(vm(), datacenter("eu-west-1"), account()))
    assert operations(answer) == ["INSERT", "INSERT", "NO_CHANGE"]  # identified under its own datacenter
    assert len(standin.store.rows("cmdb_ci_vm_instance")) == 2


def test_a_dependent_item_without_its_host_is_refused_and_nothing_of_the_payload_is_committed(standin):
    body = chain(vm("i-1"), datacenter(), account())
    body["items"].append(vm("i-2"))  # no relation to a datacenter
    _status, answer = post(standin, body)
    items = answer["result"]["items"]
    assert items[3]["errors"][0]["error"] == "MISSING_DEPENDENCY"
    assert "Hosted on::Hosts" in items[3]["errors"][0]["message"]
    assert all(not item["errors"] for item in items[:3])
    assert items[0]["warnings"][0]["error"] == "ABANDONED"
    assert standin.store.rows("cmdb_ci") == [] and standin.store.rows("cmdb_rel_ci") == []


def test_missing_attributes_an_unknown_class_and_no_data_source_are_errors(standin):
    _status, answer = post(standin, {"items": [{"className": "cmdb_ci_cloud_service_account", "values": {"name": "x"}}]})
    assert answer["result"]["items"][0]["errors"][0]["error"] == "MISSING_MATCHING_ATTRIBUTES"
    _status, answer = post(standin, {"items": [{"className": "cmdb_ci_nope", "values": {}}]})
    assert "Invalid className 'cmdb_ci_nope'" in answer["result"]["items"][0]["errors"][0]["message"]
    _status, answer = post(standin, {"items": [account()]}, source="")
    assert "sysparm_data_source" in answer["result"]["items"][0]["errors"][0]["message"]
    status, _answer = post(standin, {"no": "items"})
    assert status == 400
    assert standin.store.rows("cmdb_ci") == []


def test_two_cis_that_one_item_matches_are_a_multi_match(standin):
    post(standin, chain(vm(), datacenter(), account()))
    dc = standin.store.rows("cmdb_ci_aws_datacenter")[0]
    twin = standin.store.insert("cmdb_ci_vm_instance", {"object_id": "i-1", "name": "made by hand"}, "admin")
    standin.store.insert("cmdb_rel_ci", {"parent": twin["sys_id"], "child": dc["sys_id"],
                                         "type": next(r["sys_id"] for r in standin.store.rows("cmdb_rel_type")
                                                      if r["name"] == "Hosted on::Hosts")}, "admin")
    vm_item = vm()
    del vm_item["values"]["name"]  # no source key either: identified by the rule
    _status, answer = post(standin, chain(vm_item, datacenter(), account()))
    assert answer["result"]["items"][0]["errors"][0]["error"] == "MULTI_MATCH"
    assert len(standin.store.rows("cmdb_ci_vm_instance")) == 2


def test_the_source_key_identifies_first(standin):
    item = account()
    post(standin, {"items": [item]})
    item["values"]["account_id"] = "999999999999"  # the same native key: the same CI, updated
    _status, answer = post(standin, {"items": [item]})
    assert operations(answer) == ["UPDATE"]
    (row,) = standin.store.rows("cmdb_ci_cloud_service_account")
    assert row["account_id"] == "999999999999"
    (source,) = standin.store.rows("sys_object_source")
    assert (source["name"], source["target_sys_id"]) == (SOURCE, row["sys_id"])


def test_query_says_what_it_would_do_and_commits_nothing(standin):
    _status, answer = post(standin, chain(vm(), datacenter(), account()), path="identifyreconcile/query")
    assert operations(answer) == ["INSERT", "INSERT", "INSERT"]
    assert standin.store.rows("cmdb_ci") == []
    assert not any("_new" in item for item in answer["result"]["items"])  # nothing of the stand-in's own


def test_a_reconciliation_rule_keeps_a_field_for_its_source(standin):
    post(standin, chain(vm(), datacenter(), account()))  # an insert takes every value
    standin.faults.update({"ire_authoritative": {"cmdb_ci.name": "ServiceNow"}})
    _status, answer = post(standin, chain(vm(name="renamed", state="off"), datacenter(), account()))
    assert operations(answer)[0] == "UPDATE"
    row = standin.store.rows("cmdb_ci_vm_instance")[0]
    assert (row["name"], row["state"]) == ("i-1", "off")  # name is ServiceNow's to write, state anyone's
    _status, answer = post(standin, chain(vm(name="renamed", state="off"), datacenter(), account()))
    assert operations(answer)[0] == "NO_CHANGE"  # all that differs is what it may not write
    _status, answer = post(standin, chain(vm(name="renamed"), datacenter(), account()), source="ServiceNow")
    assert standin.store.rows("cmdb_ci_vm_instance")[0]["name"] == "renamed"
