"""accounts, sessions and collect against in-process moto (and Stubber where moto does not page)."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from connector.aws.accounts import (OrganizationsError, account_state, discover_accounts, list_organization_accounts,
                                    walk_organization)
from connector.aws.collect import collect_inventory, fetch_items
from connector.aws.sessions import RoleSettings, SessionPool
from connector.mapping.load import load_mappings
from tests.conftest import foundation_mappings
from connector.models import DENIED, OK, SKIPPED, THROTTLED, Account

ROLE = RoleSettings("CMDBReadRole", "ext-id-42", "CMDBInventorySession", 3600)


@pytest.fixture
def org():
    """An Organization: management + three members, one of them then closed (SUSPENDED)."""
    with mock_aws():
        client = boto3.client("organizations", region_name="us-east-1")
        client.create_organization(FeatureSet="ALL")
        ids = {}
        for name in ("prod", "dev", "old"):
            ids[name] = client.create_account(Email=f"{name}@x.com", AccountName=name)["CreateAccountStatus"]["AccountId"]
        client.close_account(AccountId=ids["old"])
        yield client, ids


def test_discover_organization_accounts_with_states_and_exclusions(org):
    client, ids = org
    accounts = discover_accounts([], [ids["dev"]], [], lambda: (client, "the base credentials"))
    by_id = {a.account_id: a for a in accounts}
    assert len(accounts) == 4
    assert by_id[ids["prod"]].status == OK
    assert by_id[ids["dev"]] .status == SKIPPED and "exclude_accounts" in by_id[ids["dev"]].error
    assert by_id[ids["old"]].status == SKIPPED and "SUSPENDED" in by_id[ids["old"]].error
    assert by_id[ids["prod"]].raw["Organization"]["MasterAccountId"] == "123456789012"


def test_organizational_units_are_walked_recursively(org):
    client, ids = org
    root = client.list_roots()["Roots"][0]["Id"]
    top = client.create_organizational_unit(ParentId=root, Name="workloads")["OrganizationalUnit"]["Id"]
    nested = client.create_organizational_unit(ParentId=top, Name="prod")["OrganizationalUnit"]["Id"]
    client.move_account(AccountId=ids["prod"], SourceParentId=root, DestinationParentId=nested)
    accounts = discover_accounts([], [], [top], lambda: (client, "x"))
    assert [a.account_id for a in accounts] == [ids["prod"]]


def test_the_organizations_tree_gives_every_ou_with_its_parent_and_each_accounts_parent(org):
    client, ids = org
    root = client.list_roots()["Roots"][0]
    top = client.create_organizational_unit(ParentId=root["Id"], Name="workloads")["OrganizationalUnit"]
    nested = client.create_organizational_unit(ParentId=top["Id"], Name="prod")["OrganizationalUnit"]
    client.move_account(AccountId=ids["prod"], SourceParentId=root["Id"], DestinationParentId=nested["Id"])
    tree = walk_organization(client, "x", "123456789012")
    assert tree.failure is None and tree.management_account == "123456789012"
    assert tree.organization["Id"] == client.describe_organization()["Organization"]["Id"]
    assert tree.organization["Roots"][0]["Id"] == root["Id"]
    units = {u["Name"]: u for u in tree.units}
    assert units["workloads"]["Parent"] == {"Id": root["Id"], "Type": "ROOT", "Arn": root["Arn"]}
    assert units["prod"]["Parent"] == {"Id": top["Id"], "Type": "ORGANIZATIONAL_UNIT", "Arn": top["Arn"]}
    assert units["prod"]["RootId"] == root["Id"] and units["prod"]["Organization"]["MasterAccountId"] == "123456789012"
    assert tree.parents[ids["prod"]]["Id"] == nested["Id"]
    assert tree.parents[ids["dev"]]["Type"] == "ROOT" and tree.parents["123456789012"]["Type"] == "ROOT"


@pytest.mark.parametrize("code, status", [("AccessDeniedException", "denied"), ("TooManyRequestsException", "throttled")])
def test_a_tree_that_cannot_be_read_is_a_failure_kept_not_raised(code, status):
    client = _org_client()
    with Stubber(client) as stub:
        stub.add_response("describe_organization", {"Organization": {"Id": "o-1", "MasterAccountId": "111111111111"}})
        stub.add_client_error("list_roots", service_error_code=code, http_status_code=400)
        tree = walk_organization(client, "CMDBReadRole in account 111111111111", "111111111111")
    assert tree.units == [] and tree.parents == {}
    assert tree.failure[0] == status
    assert code in tree.failure[1] and "CMDBReadRole in account 111111111111" in tree.failure[1]


def test_the_tree_goes_to_the_management_accounts_scope_and_a_failed_walk_is_that_scope_failed():
    from connector.aws.collect import OrganizationTags, _record_organization
    from connector.mapping.load import load_mappings
    from connector.models import Inventory, OrganizationTree

    sources = [s for s in load_mappings().sources.values() if s.kind in ("organization", "organizational_unit")]
    inventory = Inventory()
    _record_organization(OrganizationTree("111111111111", {"Id": "o-1"}, [{"Id": "ou-1"}, {"Id": "ou-2"}]), sources,
                         inventory, OrganizationTags(None, 1))
    assert sorted((s.account_id, s.region, s.source, s.status) for s in inventory.scopes) == [
        ("111111111111", "global", "organizations:organization", OK),
        ("111111111111", "global", "organizations:organizational_unit", OK)]
    assert sorted((r.source, r.resource["Id"]) for r in inventory.records) == [
        ("organizations:organization", "o-1"), ("organizations:organizational_unit", "ou-1"),
        ("organizations:organizational_unit", "ou-2")]
    failed = Inventory()
    _record_organization(OrganizationTree("111111111111", {}, [], failure=("denied", "AccessDenied on ListRoots")),
                         sources, failed, OrganizationTags(None, 1))
    assert {(s.status, s.error) for s in failed.scopes} == {("denied", "AccessDenied on ListRoots")}
    assert failed.records == []
    _record_organization(None, sources, failed, OrganizationTags(None, 1))  # aws.accounts, or another shard's: nothing, no scope
    assert len(failed.scopes) == 2


def test_an_ou_whose_tags_are_refused_fails_the_ous_scope_and_an_account_its_own():
    from connector.aws.collect import OrganizationTags, _account_units, _record_organization
    from connector.mapping.load import load_mappings
    from connector.models import Account, Inventory, OrganizationTree

    class Organizations:
        def list_tags_for_resource(self, ResourceId):
            if ResourceId in ("ou-2", "222222222222"):
                raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListTagsForResource")
            return {"Tags": [{"Key": "team", "Value": ResourceId}]}

    sources = load_mappings().sources
    units = [s for s in sources.values() if s.kind == "organizational_unit"]
    tags = OrganizationTags(Organizations(), 8)
    inventory = Inventory()
    _record_organization(OrganizationTree("111111111111", {"Id": "o-1"}, [{"Id": "ou-1"}, {"Id": "ou-2"}]), units,
                         inventory, tags)
    (scope,) = inventory.scopes
    assert scope.status == "denied" and "AccessDeniedException" in scope.error and inventory.records == []
    account = sources["organizations:account"]
    accounts = [Account("111111111111", "a", raw={"Id": "111111111111"}), Account("222222222222", "b", raw={"Id": "222222222222"})]
    items = {account.name: dict(zip(("111111111111", "222222222222"), tags.each(account, [a.raw for a in accounts])))}
    for one in accounts:
        _account_units(one, [], {account.name: account}, inventory, items)
    assert [(s.account_id, s.status) for s in inventory.scopes[1:]] == [("111111111111", OK), ("222222222222", "denied")]
    (record,) = inventory.records
    assert record.resource["_cmdb_tags"] == {"Tags": [{"Key": "team", "Value": "111111111111"}]}


def test_explicit_account_list_skips_organizations():
    def no_org():
        raise AssertionError("Organizations must not be called")

    accounts = discover_accounts(["111122223333", "444455556666"], ["444455556666"], [], no_org)
    assert [(a.account_id, a.status) for a in accounts] == [("111122223333", OK), ("444455556666", SKIPPED)]


@pytest.mark.parametrize("raw, state", [
    ({"State": "ACTIVE", "Status": "SUSPENDED"}, "ACTIVE"),
    ({"Status": "SUSPENDED"}, "SUSPENDED"),
    ({"State": "PENDING_CLOSURE"}, "PENDING_CLOSURE"),
])
def test_state_is_read_before_status(raw, state):
    assert account_state(raw) == state


def _org_client():
    return boto3.client("organizations", region_name="us-east-1")


def test_list_accounts_follows_next_token_across_empty_pages():
    client = _org_client()
    with Stubber(client) as stub:
        stub.add_response("describe_organization", {"Organization": {"Id": "o-1", "MasterAccountId": "111111111111"}})
        stub.add_response("list_accounts", {"Accounts": [{"Id": "111111111111", "Name": "a", "State": "ACTIVE"}], "NextToken": "t1"})
        stub.add_response("list_accounts", {"Accounts": [], "NextToken": "t2"}, {"NextToken": "t1"})
        stub.add_response("list_accounts", {"Accounts": [{"Id": "222222222222", "Name": "b", "Status": "ACTIVE"}]}, {"NextToken": "t2"})
        raws = list_organization_accounts(client, [], "x")
    assert [r["Id"] for r in raws] == ["111111111111", "222222222222"]


@pytest.mark.parametrize("code", ["AccessDeniedException", "AWSOrganizationsNotInUseException"])
def test_list_accounts_refused_says_what_to_configure(code):
    client = _org_client()
    with Stubber(client) as stub:
        stub.add_client_error("describe_organization", service_error_code=code, http_status_code=400)
        with pytest.raises(OrganizationsError) as info:
            list_organization_accounts(client, [], "the base credentials")
    message = str(info.value)
    assert code in message and "aws.organization_account_id" in message and "aws.accounts" in message


def test_member_account_listing_nothing_is_an_error():
    client = _org_client()
    with Stubber(client) as stub:
        stub.add_response("describe_organization", {"Organization": {"Id": "o-1"}})
        stub.add_response("list_accounts", {"Accounts": []})
        with pytest.raises(OrganizationsError, match="listed no accounts"):
            list_organization_accounts(client, [], "x")


def _deny_assume_role(base: boto3.Session, account: str, calls: list):
    def handler(params, **_):
        calls.append(params)
        if f":{account}:" in params["RoleArn"]:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: sts:AssumeRole"}},
                              "AssumeRole")

    base._session.register("provide-client-params.sts.AssumeRole", handler)


@mock_aws
def test_assume_role_carries_external_id_session_name_duration_once_per_account():
    base = boto3.Session()
    calls: list = []
    _deny_assume_role(base, "999999999999", calls)
    pool = SessionPool(base, ROLE, "us-east-1")
    assert pool.open("111122223333") == (OK, None)
    status, reason = pool.open("999999999999")
    assert status == DENIED and "AccessDenied" in reason and "ext-id-42" not in reason
    assert calls[0] == {"RoleArn": "arn:aws:iam::111122223333:role/CMDBReadRole", "RoleSessionName": "CMDBInventorySession",
                        "ExternalId": "ext-id-42", "DurationSeconds": 3600}
    # clients in several regions and services reuse the one assumed session
    for region in ("us-east-1", "eu-west-1"):
        pool.client("111122223333", "ec2", region).describe_vpcs()
        pool.client("111122223333", "ec2", region).describe_subnets()
    assert len(calls) == 2
    assert pool.client("111122223333", "ec2", "eu-west-1") is pool.client("111122223333", "ec2", "eu-west-1")
    # the credentials refresh themselves, and land calls in the member account
    creds = pool.get("111122223333").session.get_credentials()
    assert creds.refresh_needed() is False and creds.method == "assume-role"
    sts = pool.client("111122223333", "sts", "us-east-1")
    assert sts.get_caller_identity()["Account"] == "111122223333"


def _seed_member(account: str, region: str) -> dict:
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/seed", RoleSessionName="seed")["Credentials"]
    ec2 = boto3.client("ec2", region_name=region, aws_access_key_id=creds["AccessKeyId"],
                       aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
    ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, SubnetId=subnet)
    ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=subnet)
    return {"vpc": vpc, "subnet": subnet}


@mock_aws
def test_collect_units_are_complete_and_a_throttled_unit_is_kept_in_its_scope():
    acct = "111122223333"
    seeded = _seed_member(acct, "eu-west-1")
    pool = SessionPool(boto3.Session(), ROLE, "us-east-1")
    assert pool.open(acct)[0] == OK

    def throttle(**_):
        raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."}}, "DescribeSubnets")

    pool.get(acct).session.register("before-call.ec2.DescribeSubnets", throttle)
    sources = foundation_mappings().sources
    inventory = collect_inventory(pool, [Account(acct, "prod", raw={"Id": acct, "Name": "prod"})], sources,
                                  ["us-east-1", "eu-west-1"], max_workers=4, max_per_account=2)
    status = {(s.region, s.source): s.status for s in inventory.scopes}
    assert status[("eu-west-1", "ec2:instance")] == OK
    assert status[("eu-west-1", "ec2:vpc")] == OK
    assert status[("global", "organizations:account")] == OK
    assert status[("eu-west-1", "ec2:subnet")] == THROTTLED
    assert status[("us-east-1", "ec2:subnet")] == THROTTLED
    assert len(inventory.scopes) == 1 + 2 * 4
    instances = [r for r in inventory.records if r.source == "ec2:instance" and r.region == "eu-west-1"]
    assert len(instances) == 3
    vpcs = {r.resource["VpcId"] for r in inventory.records if r.source == "ec2:vpc" and r.region == "eu-west-1"}
    assert seeded["vpc"] in vpcs
    assert not [r for r in inventory.records if r.source == "ec2:subnet"]
    # raw items are JSON-safe: a saved inventory maps the same as a live one
    assert isinstance(instances[0].resource["LaunchTime"], str)


@mock_aws
def test_with_a_sink_each_units_records_go_to_it_in_the_inventorys_order_and_the_inventory_keeps_none():
    acct = "111122223333"
    _seed_member(acct, "eu-west-1")
    pool = SessionPool(boto3.Session(), ROLE, "us-east-1")
    assert pool.open(acct)[0] == OK
    sources, regions = foundation_mappings().sources, ["us-east-1", "eu-west-1"]
    account = Account(acct, "prod", raw={"Id": acct, "Name": "prod"})
    whole = collect_inventory(pool, [account], sources, regions, max_workers=4, max_per_account=2)
    batches: list[list] = []
    streamed = collect_inventory(pool, [account], sources, regions, max_workers=4, max_per_account=2,
                                 sink=batches.append)
    assert streamed.records == [] and len(whole.records) > 5
    assert [r for batch in batches for r in batch] == whole.records
    # the accounts' and regions' own items first, then one batch per unit, as it is in
    units = [scope for scope in streamed.scopes if sources[scope.source].kind == "api"]
    assert len(units) == 6 and len(batches) == 1 + len(units)
    assert streamed.scopes == whole.scopes


def test_an_items_path_that_finds_no_list_fails_the_unit_rather_than_taking_a_dicts_keys_for_items():
    """items = "Vpcs[0]" finds one VPC, an object: its keys were taken for items (strings, each a mapping
    problem). The unit fails with the reason instead, and nothing of its scope is retired. None found (a page
    without the member) is no items, as AWS leaves an empty list out of some answers."""
    import dataclasses

    client = boto3.client("ec2", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_network"].source
    one = dataclasses.replace(source, items=lambda page: page["Vpcs"][0], items_text="Vpcs[0]")
    with Stubber(client) as stub:
        stub.add_response("describe_vpcs", {"Vpcs": [{"VpcId": "vpc-1"}]})
        with pytest.raises(ValueError, match=r"source.items 'Vpcs\[0\]' finds dict, not a list of items, in an "
                                             "answer of describe_vpcs"):
            fetch_items(client, one)
    absent = dataclasses.replace(source, items=lambda page: page.get("Nothing"))
    with Stubber(client) as stub:
        stub.add_response("describe_vpcs", {"Vpcs": [{"VpcId": "vpc-1"}]})
        assert fetch_items(client, absent) == []


def test_fetch_items_follows_every_page():
    client = boto3.client("ec2", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_vm_instance"].source
    with Stubber(client) as stub:
        stub.add_response("describe_instances", {"Reservations": [{"Instances": [
            {"InstanceId": "i-1", "State": {"Name": "running"}}]}], "NextToken": "p2"})
        stub.add_response("describe_instances", {"Reservations": [{"Instances": [
            {"InstanceId": "i-2", "State": {"Name": "running"}},
            {"InstanceId": "i-3", "State": {"Name": "terminated"}}]}]}, {"NextToken": "p2"})
        items = fetch_items(client, source)
    assert [i["InstanceId"] for i in items] == ["i-1", "i-2"]
