"""Collection at Organization scale, against in-process moto (Stubber where moto does not page)."""

from __future__ import annotations

import stat
from collections import Counter

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from connector.aws import targets
from connector.aws.access import check_access, render_table
from connector.aws.collect import collect_inventory, enabled_regions, fetch_items
from connector.aws.sessions import RoleSettings, SessionPool
from connector.aws.accounts import list_organization_accounts
from connector.errors import UsageError
from connector.mapping.load import load_mappings
from tests.conftest import foundation_mappings
from connector.models import DENIED, OK, SKIPPED, Account
from connector.run import collect_from_aws
from connector.settings import load_settings

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]
MANAGEMENT = "123456789012"
REAL_SESSION = boto3.Session  # the tests patch boto3.Session to watch every session made


class AssumeRoleLog:
    """Counts AssumeRole per account, refuses it for some, records the access key that signed it."""

    def __init__(self, denied: set[str] = frozenset()):
        self.calls: Counter[str] = Counter()
        self.denied = set(denied)
        self.signers: list[str] = []

    def params(self, params, **_):
        account = params["RoleArn"].split(":")[4]
        self.calls[account] += 1
        if account in self.denied:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: sts:AssumeRole"}},
                              "AssumeRole")

    def sent(self, request, **_):
        auth = request.headers.get("Authorization", b"")
        auth = auth.decode() if isinstance(auth, bytes) else auth
        self.signers.append(auth.split("Credential=")[1].split("/")[0])

    def session_factory(self):
        def make(*args, **kwargs):
            session = REAL_SESSION(*args, **kwargs)
            session._session.register("provide-client-params.sts.AssumeRole", self.params)
            session._session.register("before-send.sts.AssumeRole", self.sent)
            return session

        return make


@pytest.fixture
def organization():
    """Management + 24 members in two OUs; one member suspended."""
    with mock_aws():
        org = boto3.client("organizations", region_name="us-east-1")
        org.create_organization(FeatureSet="ALL")
        root = org.list_roots()["Roots"][0]["Id"]
        ous = [org.create_organizational_unit(ParentId=root, Name=n)["OrganizationalUnit"]["Id"] for n in ("prod", "dev")]
        members = []
        for i in range(24):
            account = org.create_account(Email=f"m{i}@x.com", AccountName=f"member-{i:02d}")["CreateAccountStatus"]["AccountId"]
            org.move_account(AccountId=account, SourceParentId=root, DestinationParentId=ous[i % 2])
            members.append(account)
        org.close_account(AccountId=members[0])
        yield {"members": members, "ous": ous}


def settings_for(tmp_path, **aws):
    return load_settings(None, {"aws": {"external_id": "scale-ext-id", "regions": REGIONS, **aws},
                                "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"},
                                "report": {"output_dir": str(tmp_path)}})


def test_25_accounts_2_ous_suspended_excluded_denied_3_regions(organization, monkeypatch, tmp_path):
    members = organization["members"]
    suspended, excluded, denied = members[0], members[1], members[2]
    log = AssumeRoleLog(denied={denied})
    monkeypatch.setattr(targets.boto3, "Session", log.session_factory())
    settings = settings_for(tmp_path, exclude_accounts=[excluded], max_workers=16, max_workers_per_account=4)
    inventory = collect_from_aws(settings, foundation_mappings())

    status = {a.account_id: a.status for a in inventory.accounts}
    assert len(status) == 25
    assert status[suspended] == SKIPPED and status[excluded] == SKIPPED and status[denied] == DENIED
    reachable = [a for a, s in status.items() if s == OK]
    assert len(reachable) == 22
    # AssumeRole exactly once per reachable account (and once for the refused one), never for skipped ones
    assert log.calls == Counter({a: 1 for a in [*reachable, denied]})

    scopes = Counter((s.account_id, s.status) for s in inventory.scopes)
    for account in reachable:
        assert scopes[(account, OK)] == 1 + len(REGIONS) * 4  # account + (region, vpc, subnet, instance) per region
    for account in (excluded, denied):
        assert not [s for s in inventory.scopes if s.account_id == account]
        assert not [r for r in inventory.records if r.account_id == account]
    # the suspended account: its own item (Organizations says it is suspended), none of its resources
    assert [(s.source, s.status) for s in inventory.scopes if s.account_id == suspended] == [("organizations:account", OK)]
    (own,) = [r for r in inventory.records if r.account_id == suspended]
    assert own.source == "organizations:account" and own.resource["State"] == "SUSPENDED"
    # every account's default VPC in every region, seen through its own role
    vpcs = Counter(r.account_id for r in inventory.records if r.source == "ec2:vpc")
    assert set(vpcs) == set(reachable) and set(vpcs.values()) == {len(REGIONS)}


def test_organizational_units_limit_the_targets(organization, tmp_path):
    settings = settings_for(tmp_path, organizational_units=[organization["ous"][1]], accounts=[])
    pool = targets.open_session_pool(settings)
    accounts = targets.target_accounts(settings, pool)
    assert sorted(a.account_id for a in accounts) == sorted(organization["members"][1::2])


def test_the_accounts_targeted_are_those_of_every_shard_less_the_excluded(organization, tmp_path):
    """Whatever the shard: the accounts listed (by Organizations, under the OUs targeted, or in aws.accounts),
    suspended ones too, less aws.exclude_accounts. Our CIs in any other account are collected by no run."""
    members = organization["members"]
    pool = lambda settings: targets.open_session_pool(settings)  # noqa: E731
    full = settings_for(tmp_path, exclude_accounts=[members[1]])
    found = targets.find_targets(full, pool(full), (1, 3))
    assert found.targeted == frozenset([*members, MANAGEMENT]) - {members[1]}  # members[0], suspended, among them
    assert 0 < len(found.accounts) < len(found.targeted)
    units = settings_for(tmp_path, organizational_units=[organization["ous"][1]])
    assert targets.find_targets(units, pool(units), tree=True).targeted == frozenset(members[1::2])
    listed = settings_for(tmp_path, accounts=[members[3], members[4]], exclude_accounts=[members[4]])
    assert targets.find_targets(listed, pool(listed), tree=True).targeted == {members[3]}


def test_account_option_takes_those_accounts_alone_as_a_shard_of_their_own(organization, tmp_path):
    """--account: of the accounts targeted, these alone; the Organization's tree only with the management
    account among them; the accounts targeted still every one (their CIs are another run's, not untargeted)."""
    members = organization["members"]
    settings = settings_for(tmp_path, exclude_accounts=[members[1]])
    pool = targets.open_session_pool(settings)
    every = targets.find_targets(settings, pool, tree=True)
    found = targets.find_targets(settings, pool, tree=True, only=frozenset({members[3], members[4]}))
    assert sorted(a.account_id for a in found.accounts) == sorted([members[3], members[4]])
    assert found.targeted == every.targeted and found.organization is None  # the management account's run reads it
    assert all(a.raw.get("Parent") for a in found.accounts)  # each account's OU still known: the tree was walked
    with_management = targets.find_targets(settings, pool, tree=True, only=frozenset({MANAGEMENT}))
    assert [a.account_id for a in with_management.accounts] == [MANAGEMENT] and with_management.organization
    pair = ([a for a in members[2:] if targets.in_shard(a, (1, 2))][:1]
            + [a for a in members[2:] if not targets.in_shard(a, (1, 2))][:1])  # one in shard 1/2, one not
    both = targets.find_targets(settings, pool, (1, 2), only=frozenset(pair))
    assert [a.account_id for a in both.accounts] == pair[:1]  # and in the shard
    for wrong in (members[1], "999999999999"):  # excluded, not in the Organization
        with pytest.raises(UsageError, match=f"--account {wrong}: not an account the configuration targets"):
            targets.find_targets(settings, pool, only=frozenset({wrong, members[3]}))


def test_list_accounts_goes_through_the_role_in_the_organization_account(organization, monkeypatch, tmp_path):
    log = AssumeRoleLog()
    monkeypatch.setattr(targets.boto3, "Session", log.session_factory())
    settings = settings_for(tmp_path, organization_account_id=MANAGEMENT)
    pool = targets.open_session_pool(settings)
    accounts = targets.target_accounts(settings, pool)
    assert len(accounts) == 25
    assert log.calls == Counter({MANAGEMENT: 1})
    targets.open_account_sessions(pool, accounts)
    assert log.calls[MANAGEMENT] == 1  # the open session is reused, not assumed again


def test_refused_organization_account_role_is_a_clear_error(organization, monkeypatch, tmp_path):
    from connector.errors import ConnectorError

    log = AssumeRoleLog(denied={MANAGEMENT})
    monkeypatch.setattr(targets.boto3, "Session", log.session_factory())
    settings = settings_for(tmp_path, organization_account_id=MANAGEMENT)
    with pytest.raises(ConnectorError, match=r"cannot assume CMDBReadRole in the organization account 123456789012 \(aws.organization_account_id\)"):
        targets.target_accounts(settings, targets.open_session_pool(settings))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_shards_cover_every_account_exactly_once(n):
    accounts = [f"{i:012d}" for i in range(100000000000, 100000000000 + 500, 7)]
    owners = Counter()
    for k in range(1, n + 1):
        owners.update(a for a in accounts if targets.in_shard(a, (k, n)))
    assert owners == Counter({a: 1 for a in accounts})
    # stable: the same answer every time
    assert [targets.in_shard(a, (1, n)) for a in accounts] == [targets.in_shard(a, (1, n)) for a in accounts]


@pytest.mark.parametrize("text", ["3", "0/2", "3/2", "a/b"])
def test_bad_shard_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--shard"):
        targets.parse_shard(text)


def test_enabled_regions_skip_not_opted_in():
    pool = SessionPool(boto3.Session(), RoleSettings("R", "ext-id", "s" * 2, 3600), "us-east-1")
    client = boto3.client("ec2", region_name="us-east-1")
    pool._sessions["111122223333"] = type("S", (), {"client": lambda self, *a: client})()
    with Stubber(client) as stub:
        stub.add_response("describe_regions", {"Regions": [
            {"RegionName": "us-east-1", "OptInStatus": "opt-in-not-required"},
            {"RegionName": "af-south-1", "OptInStatus": "not-opted-in"},
            {"RegionName": "ap-east-1", "OptInStatus": "opted-in"}]}, {"AllRegions": True})
        assert enabled_regions(pool, "111122223333", "us-east-1") == ["ap-east-1", "us-east-1"]


@mock_aws
def test_disabled_region_is_a_skipped_scope():
    pool = SessionPool(boto3.Session(), RoleSettings("CMDBReadRole", "ext-id", "sess", 3600), "us-east-1")
    assert pool.open("111122223333")[0] == OK

    def opt_in_required(model, context, **_):
        if context.get("client_region") == "ap-east-1" or "ap-east-1" in str(context):
            raise ClientError({"Error": {"Code": "OptInRequired", "Message": "not subscribed"}}, model.name)

    session = pool.get("111122223333").session
    for op in ("DescribeVpcs", "DescribeSubnets", "DescribeInstances"):
        session.register(f"before-call.ec2.{op}", lambda model, params, request_signer=None, **kw:
                         _region_off(request_signer, model))
    inventory = collect_inventory(pool, [Account("111122223333", "a", raw={"Id": "111122223333"})],
                                  foundation_mappings().sources, ["us-east-1", "ap-east-1"], 4, 2)
    by_region = Counter((s.region, s.status) for s in inventory.scopes if s.source.startswith("ec2:") and s.source != "ec2:region")
    assert by_region == Counter({("us-east-1", OK): 3, ("ap-east-1", SKIPPED): 3})
    reason = next(s.error for s in inventory.scopes if s.status == SKIPPED)
    assert reason.startswith("region not enabled or unreachable: OptInRequired")


def _region_off(signer, model):
    if signer is not None and signer.region_name == "ap-east-1":
        raise ClientError({"Error": {"Code": "OptInRequired", "Message": "You are not subscribed to this service."}},
                          model.name)


@pytest.mark.parametrize("table, operation, key, id_key", [
    ("cmdb_ci_network", "describe_vpcs", "Vpcs", "VpcId"),
    ("cmdb_ci_cloud_subnet", "describe_subnets", "Subnets", "SubnetId"),
])
def test_every_ec2_source_follows_next_token(table, operation, key, id_key):
    client = boto3.client("ec2", region_name="us-east-1")
    source = load_mappings().mappings[table].source
    with Stubber(client) as stub:
        stub.add_response(operation, {key: [{id_key: "a"}], "NextToken": "t1"})
        stub.add_response(operation, {key: [], "NextToken": "t2"}, {"NextToken": "t1"})
        stub.add_response(operation, {key: [{id_key: "b"}]}, {"NextToken": "t2"})
        assert [i[id_key] for i in fetch_items(client, source)] == ["a", "b"]


def test_ou_walk_follows_next_token_at_every_level():
    client = boto3.client("organizations", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("describe_organization", {"Organization": {"Id": "o-1"}})
        stub.add_response("list_accounts_for_parent", {"Accounts": [{"Id": "111111111111", "State": "ACTIVE"}], "NextToken": "a"},
                          {"ParentId": "ou-1"})
        stub.add_response("list_accounts_for_parent", {"Accounts": [{"Id": "222222222222", "State": "ACTIVE"}]},
                          {"ParentId": "ou-1", "NextToken": "a"})
        stub.add_response("list_organizational_units_for_parent", {"OrganizationalUnits": [], "NextToken": "o"},
                          {"ParentId": "ou-1"})
        stub.add_response("list_organizational_units_for_parent", {"OrganizationalUnits": [{"Id": "ou-2"}]},
                          {"ParentId": "ou-1", "NextToken": "o"})
        stub.add_response("list_accounts_for_parent", {"Accounts": [{"Id": "333333333333", "State": "ACTIVE"}]},
                          {"ParentId": "ou-2"})
        stub.add_response("list_organizational_units_for_parent", {"OrganizationalUnits": []}, {"ParentId": "ou-2"})
        raws = list_organization_accounts(client, ["ou-1"], "x")
    assert [r["Id"] for r in raws] == ["111111111111", "222222222222", "333333333333"]


@mock_aws
@pytest.mark.parametrize("duration, assumed", [(3600, 1), (900, 3)])
def test_session_is_assumed_again_only_near_expiry(duration, assumed):
    """botocore renews 15 minutes before expiry: a 3600 s session is assumed once for a
    burst of calls, a 900 s one (which config refuses) again on every call."""
    log = AssumeRoleLog()
    pool = SessionPool(log.session_factory()(), RoleSettings("CMDBReadRole", "ext-id", "sess", duration), "us-east-1")
    pool.open("111122223333")
    for _ in range(2):
        pool.client("111122223333", "ec2", "us-east-1").describe_vpcs()
    assert log.calls["111122223333"] == assumed


def test_central_credentials_from_credential_process(tmp_path, monkeypatch):
    """The central user's keys may come from credential_process (IAM Roles Anywhere's signing helper)."""
    helper = tmp_path / "signing-helper"
    helper.write_text('#!/bin/sh\necho \'{"Version": 1, "AccessKeyId": "AKIDFROMPROCESS", '
                      '"SecretAccessKey": "process-secret", "SessionToken": "process-token"}\'\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "aws-config"
    config.write_text(f"[profile cmdb-central]\ncredential_process = {helper}\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "cmdb-central")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    log = AssumeRoleLog()
    monkeypatch.setattr(targets.boto3, "Session", log.session_factory())
    from connector.sandbox.aws import AwsSandbox

    with AwsSandbox() as aws:  # a moto server: it leaves the environment's credentials alone
        monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
        pool = targets.open_session_pool(settings_for(tmp_path))
        assert pool.open("111122223333") == (OK, None)
    assert log.signers == ["AKIDFROMPROCESS"]


@mock_aws
def test_check_access_table_with_external_id_requirement():
    iam_trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:user/cmdb"},
                                                       "Action": "sts:AssumeRole",
                                                       "Condition": {"StringEquals": {"sts:ExternalId": "ext-id"}}}]}
    loose = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:user/cmdb"},
                                                    "Action": "sts:AssumeRole"}]}
    import json

    for account, trust in (("111111111111", iam_trust), ("222222222222", loose)):
        creds = boto3.client("sts", region_name="us-east-1").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/seed", RoleSessionName="seed")["Credentials"]
        boto3.client("iam", aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                     aws_session_token=creds["SessionToken"]).create_role(
            RoleName="CMDBReadRole", AssumeRolePolicyDocument=json.dumps(trust))
    log = AssumeRoleLog(denied={"333333333333", MANAGEMENT})
    pool = SessionPool(log.session_factory()(), RoleSettings("CMDBReadRole", "ext-id", "sess", 3600), "us-east-1")
    accounts = [Account("111111111111", "good"), Account("222222222222", "loose"), Account("333333333333", "missing"),
                Account(MANAGEMENT, "management"), Account("444444444444", "gone", SKIPPED, "account state is SUSPENDED")]
    rows = check_access(pool, accounts, "CMDBReadRole", MANAGEMENT)
    assert [(r.account_id, r.status, r.external_id_required) for r in rows] == [
        ("111111111111", OK, "yes"), ("222222222222", OK, "NO"), ("333333333333", DENIED, "-"),
        (MANAGEMENT, DENIED, "-"), ("444444444444", SKIPPED, "-")]
    table = render_table(rows)
    assert "StackSet instance deployed" in table and "ExternalId does not match" in table
    assert "deploy/cmdb-read-role.yaml there as a plain stack" in table
    assert "does not require an ExternalId" in table
    assert table.splitlines()[-1] == "5 account(s): 2 ok, 1 skipped, 2 failed"
    assert "ext-id" not in table


@mock_aws
def test_regions_all_uses_each_accounts_enabled_regions_and_a_failure_is_unknown(monkeypatch):
    import connector.aws.collect as collect

    enabled = {"111111111111": ["eu-west-1", "us-east-1"]}

    def fake_enabled(pool, account_id, probe_region):
        if account_id not in enabled:
            raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "DescribeRegions")
        return enabled[account_id]

    monkeypatch.setattr(collect, "enabled_regions", fake_enabled)
    pool = SessionPool(boto3.Session(), RoleSettings("CMDBReadRole", "ext-id", "sess", 3600), "us-east-1")
    for account in ("111111111111", "222222222222"):
        pool.open(account)
    inventory = collect_inventory(pool, [Account("111111111111", "a", raw={"Id": "111111111111"}),
                                         Account("222222222222", "b", raw={"Id": "222222222222"})],
                                  foundation_mappings().sources, ["all"], 4, 2)
    regions = {s.region for s in inventory.scopes if s.account_id == "111111111111" and s.source == "ec2:vpc"}
    assert regions == {"eu-west-1", "us-east-1"}
    failed = [s for s in inventory.scopes if s.account_id == "222222222222"]
    assert {s.status for s in failed} == {DENIED} and {s.region for s in failed} == {"*"}
    assert "cannot list enabled regions: UnauthorizedOperation" in failed[0].error
    assert not [r for r in inventory.records if r.account_id == "222222222222"]


def test_list_then_describe_detail_call_for_each_item():
    client = boto3.client("dynamodb", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_dynamodb_table"].source
    with Stubber(client) as stub:
        stub.add_response("list_tables", {"TableNames": ["aaa"], "LastEvaluatedTableName": "aaa"})
        stub.add_response("list_tables", {"TableNames": ["bbb"]}, {"ExclusiveStartTableName": "aaa"})
        for name in ("aaa", "bbb"):
            stub.add_response("describe_table", {"Table": {"TableName": name, "TableArn": f"arn:aws:dynamodb:us-east-1:1:table/{name}",
                                                          "ItemCount": 1}}, {"TableName": name})
        items = fetch_items(client, source)
    assert [(i["TableName"], i["ItemCount"]) for i in items] == [("aaa", 1), ("bbb", 1)]


def test_detail_result_under_a_key():
    client = boto3.client("s3", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_cloud_object_storage"].source
    with Stubber(client) as stub:
        stub.add_response("list_buckets", {"Buckets": [{"Name": "logs"}, {"Name": "eu-data"}]})
        stub.add_response("get_bucket_location", {}, {"Bucket": "logs"})
        stub.add_response("get_bucket_location", {"LocationConstraint": "eu-west-1"}, {"Bucket": "eu-data"})
        items = fetch_items(client, source)
    assert items == [{"Name": "logs", "Location": None}, {"Name": "eu-data", "Location": "eu-west-1"}]


# -- tags from a call per item (reconcile.tags) -------------------------------------

def _tags_of(name: str, items, region: str = "us-east-1"):
    from connector.mapping.transform import map_record
    from connector.models import Record

    mapping = load_mappings().mappings[name]
    return [map_record(mapping, Record("111122223333", region, mapping.source.name, i), tags=True).tags for i in items]


def test_tags_call_per_item_only_when_tags_are_on():
    client = boto3.client("lambda", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_cloud_function"].source
    arn = "arn:aws:lambda:us-east-1:111122223333:function:resize"
    listing = {"Functions": [{"FunctionName": "resize", "FunctionArn": arn}]}
    with Stubber(client) as stub:
        stub.add_response("list_functions", listing)
        stub.add_response("list_tags", {"Tags": {"env": "prod", "aws:cloudformation:stack-name": "app"}}, {"Resource": arn})
        items = fetch_items(client, source, tags=True)
        stub.assert_no_pending_responses()
    assert _tags_of("cmdb_ci_cloud_function", items) == [{"env": "prod", "aws:cloudformation:stack-name": "app"}]
    with Stubber(client) as stub:  # tags off: no call per item (the stub would refuse one)
        stub.add_response("list_functions", listing)
        items = fetch_items(client, source)
    assert _tags_of("cmdb_ci_cloud_function", items) == [None]  # not asked for: unknown, not empty


def test_s3_bucket_without_tags_has_none_and_a_refused_tags_call_fails_the_unit():
    client = boto3.client("s3", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_cloud_object_storage"].source
    with Stubber(client) as stub:
        stub.add_response("list_buckets", {"Buckets": [{"Name": "logs"}, {"Name": "data"}]})
        # each item's calls in turn: its detail call, then its tags call
        stub.add_response("get_bucket_location", {}, {"Bucket": "logs"})
        stub.add_client_error("get_bucket_tagging", "NoSuchTagSet", "The TagSet does not exist", 404, expected_params={"Bucket": "logs"})
        stub.add_response("get_bucket_location", {"LocationConstraint": "eu-west-1"}, {"Bucket": "data"})
        stub.add_response("get_bucket_tagging", {"TagSet": [{"Key": "team", "Value": "data"}]}, {"Bucket": "data"})
        items = fetch_items(client, source, tags=True)
    assert _tags_of("cmdb_ci_cloud_object_storage", items, "global") == [{}, {"team": "data"}]
    with Stubber(client) as stub, pytest.raises(ClientError):
        stub.add_response("list_buckets", {"Buckets": [{"Name": "logs"}]})
        stub.add_response("get_bucket_location", {}, {"Bucket": "logs"})
        stub.add_client_error("get_bucket_tagging", "AccessDenied", "Access Denied", 403)
        fetch_items(client, source, tags=True)  # unknown is not empty: the unit fails, no tag is dropped


def test_load_balancer_and_table_tags_from_their_calls():
    client = boto3.client("elbv2", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_cloud_load_balancer"].source
    arn = "arn:aws:elasticloadbalancing:us-east-1:111122223333:loadbalancer/app/web/1"
    with Stubber(client) as stub:
        stub.add_response("describe_load_balancers", {"LoadBalancers": [{"LoadBalancerArn": arn, "LoadBalancerName": "web"}]})
        stub.add_response("describe_tags", {"TagDescriptions": [{"ResourceArn": arn, "Tags": [{"Key": "env", "Value": "prod"}]}]},
                          {"ResourceArns": [arn]})
        items = fetch_items(client, source, tags=True)
    assert _tags_of("cmdb_ci_cloud_load_balancer", items) == [{"env": "prod"}]
    client = boto3.client("dynamodb", region_name="us-east-1")
    source = load_mappings().mappings["cmdb_ci_dynamodb_table"].source
    table = "arn:aws:dynamodb:us-east-1:111122223333:table/orders"
    with Stubber(client) as stub:
        stub.add_response("list_tables", {"TableNames": ["orders"]})
        stub.add_response("describe_table", {"Table": {"TableName": "orders", "TableArn": table}}, {"TableName": "orders"})
        stub.add_response("list_tags_of_resource", {"Tags": [{"Key": "owner", "Value": "shop"}]}, {"ResourceArn": table})
        items = fetch_items(client, source, tags=True)
    assert _tags_of("cmdb_ci_dynamodb_table", items) == [{"owner": "shop"}]
    assert "ResponseMetadata" not in items[0]["_cmdb_tags"]  # only the answer itself is kept in the inventory


def test_an_inventory_collected_without_tags_leaves_called_for_tags_unknown():
    # a Lambda item from a collection with tags off: no answer of list_tags beside it
    item = {"FunctionName": "resize", "FunctionArn": "arn:aws:lambda:us-east-1:111122223333:function:resize"}
    assert _tags_of("cmdb_ci_cloud_function", [item]) == [None]  # unknown, so plan leaves its rows alone
    assert _tags_of("cmdb_ci_cloud_function", [{**item, "_cmdb_tags": None}]) == [{}]  # the call said: none


# -- calls per item: several at once, within the account's and the run's bounds ----

class SlowFunctions:
    """A Lambda client stand-in: list_tags takes a while and counts the calls in flight."""

    def __init__(self, account: str, count: int, watch: "InFlight", refuse: str | None = None):
        self.arns = [f"arn:aws:lambda:us-east-1:{account}:function:f{i:02d}" for i in range(count)]
        self.account, self.watch, self.refuse = account, watch, refuse

    def can_paginate(self, _operation: str) -> bool:
        return False

    def list_functions(self):
        return {"Functions": [{"FunctionName": arn.rsplit(":", 1)[1], "FunctionArn": arn} for arn in self.arns]}

    def list_tags(self, Resource: str):
        with self.watch.call(self.account):
            if Resource == self.refuse:
                raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListTags")
            return {"Tags": {"arn": Resource}}


class InFlight:
    def __init__(self, seconds: float = 0.03):
        import threading

        self.seconds, self.lock = seconds, threading.Lock()
        self.now: Counter = Counter()
        self.peak: Counter = Counter()  # account -> most calls at once; "*" -> over all accounts
        self.finished: list[str] = []  # the account of each call, in the order they ended

    def call(self, account: str):
        import contextlib
        import time

        @contextlib.contextmanager
        def in_flight():
            with self.lock:
                self.now[account] += 1
                self.now["*"] += 1
                for key in (account, "*"):
                    self.peak[key] = max(self.peak[key], self.now[key])
            try:
                time.sleep(self.seconds)
                yield
            finally:
                with self.lock:
                    self.now[account] -= 1
                    self.now["*"] -= 1
                    self.finished.append(account)
        return in_flight()


class FakePool:
    default_region = "us-east-1"

    def __init__(self, clients: dict[str, SlowFunctions]):
        self.clients = clients

    def client(self, account_id: str, _service: str, _region: str):
        return self.clients[account_id]


def test_calls_per_item_run_several_at_once_within_the_account_and_run_bounds():
    from concurrent.futures import ThreadPoolExecutor

    from connector.aws.collect import Collector, Unit

    source = load_mappings().mappings["cmdb_ci_cloud_function"].source
    watch = InFlight()
    clients = {account: SlowFunctions(account, 24, watch) for account in ("111111111111", "222222222222")}
    collector = Collector(FakePool(clients), max_per_account=3, tags=True, max_workers=5)
    with ThreadPoolExecutor(max_workers=2) as units:
        done = list(units.map(collector.run_unit, [Unit(a, "us-east-1", source) for a in clients]))
    for (scope, records), (account, client) in zip(done, clients.items()):
        assert scope.status == OK
        # every item keeps its own answer, in the listing's order
        assert [r.resource["FunctionArn"] for r in records] == client.arns
        assert [r.resource["_cmdb_tags"]["Tags"]["arn"] for r in records] == client.arns
    assert 2 <= watch.peak["111111111111"] <= 3 and 2 <= watch.peak["222222222222"] <= 3  # at once, per account bound
    assert watch.peak["*"] <= 5  # the run's bound over both accounts


def test_a_refused_call_for_one_item_fails_its_unit_among_calls_made_at_once():
    from connector.aws.collect import Collector, Unit

    source = load_mappings().mappings["cmdb_ci_cloud_function"].source
    client = SlowFunctions("111111111111", 12, InFlight(0.01))
    client.refuse = client.arns[7]
    collector = Collector(FakePool({"111111111111": client}), max_per_account=4, tags=True, max_workers=4)
    scope, records = collector.run_unit(Unit("111111111111", "us-east-1", source))
    assert scope.status == DENIED and "AccessDeniedException on ListTags" in scope.error
    assert records == []  # unknown, not partly known: no item of the unit is kept


def test_one_accounts_many_items_never_hold_up_another_accounts_items():
    from concurrent.futures import ThreadPoolExecutor

    from connector.aws.collect import Collector, Unit

    source = load_mappings().mappings["cmdb_ci_cloud_function"].source
    watch = InFlight(0.02)
    big, small = SlowFunctions("111111111111", 30, watch), SlowFunctions("222222222222", 2, watch)
    collector = Collector(FakePool({"111111111111": big, "222222222222": small}), max_per_account=2, tags=True,
                          max_workers=5)
    with ThreadPoolExecutor(max_workers=2) as units:
        list(units.map(collector.run_unit, [Unit(a, "us-east-1", source) for a in ("111111111111", "222222222222")]))
    last_small = max(i for i, account in enumerate(watch.finished) if account == "222222222222")
    # the small account's calls ran beside the big one's first few, not after its queue of 30
    assert watch.finished[:last_small].count("111111111111") < 15


@mock_aws
def test_check_access_calls_names_each_listing_refused_in_each_account_and_region():
    """check-access --calls: each listing the mappings name, once per account and region (a global one once);
    what a service control policy refuses (simulated: RDS and Lambda in one account, everything in one
    region of it) is named, the rest allowed."""
    from botocore.exceptions import ClientError

    from connector.aws.access import check_calls, joined_calls, render_calls

    pool = SessionPool(boto3.Session(), RoleSettings("CMDBReadRole", "ext-id", "sess", 3600), "us-east-1")
    good, fenced = "111111111111", "222222222222"
    assert pool.open(good)[0] == OK and pool.open(fenced)[0] == OK

    def scp(model, context=None, **_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": f"explicit deny in a service control "
                                     f"policy: {model.name}"}}, model.name)

    def outside_the_regions_allowed(model, params, context=None, **_):
        if params.get("context", {}).get("client_region") == "ap-south-1":
            scp(model)

    session = pool.get(fenced).session
    for event in ("before-call.rds.DescribeDBInstances", "before-call.lambda.ListFunctions",
                  "before-call.ec2.DescribeVolumes"):  # the last one a join's: the instances' volume sizes
        session.register(event, scp)
    session.register("before-call", outside_the_regions_allowed)
    asked: list[dict] = []
    pool.get(good).session.register("before-parameter-build.ec2.DescribeVolumes",
                                    lambda params, **_: asked.append(dict(params)))
    sources = load_mappings().sources
    rows = check_calls(pool, [good, fenced], sources, ["eu-west-1", "ap-south-1"], max_workers=4)
    api = [s for s in sources.values() if s.kind == "api"]
    listings = {f"{s.service}:{s.operation}" for s in api}
    joins = {f"{s.service}:{j.operation}" for s in api for j in s.joins}
    assert joins == {"ec2:describe_instance_types", "ec2:describe_volumes"}
    assert joined_calls(sources) == {"ec2:describe_instance_types"}  # describe_volumes is a listing too
    # each call made: a listing, or a join's (describe_volumes both: as the volumes' listing, and by its filter)
    probes = {(f"{s.service}:{s.operation}", s.scope, "") for s in api} | {
        (f"{s.service}:{j.operation}", s.scope, "join") for s in api for j in s.joins}
    regional = {call for call, scope, _ in probes if scope != "global"}
    regional_probes = sum(scope != "global" for _, scope, _ in probes)
    assert {r.call for r in rows} == listings | joins
    # a regional call in each region, a global one once
    assert len(rows) == 2 * (len(probes) + regional_probes)
    assert {(r.call, r.region) for r in rows if r.account_id == good} == (
        {(c, region) for c in regional for region in ("eu-west-1", "ap-south-1")}
        | {(c, "us-east-1") for c in listings - regional})  # the global ones in the default region
    refused = {(r.call, r.region) for r in rows if r.status != OK}
    assert all(r.account_id == fenced and r.status == DENIED for r in rows if r.status != OK)
    assert refused == ({("rds:describe_db_instances", "eu-west-1"), ("lambda:list_functions", "eu-west-1"),
                        ("ec2:describe_volumes", "eu-west-1")} | {(c, "ap-south-1") for c in regional})
    # the join's call as a run makes it, by its filter: with a value that no volume has, the answer empty
    filtered = [a for a in asked if "Filters" in a]
    assert filtered == [{"Filters": [{"Name": "volume-id", "Values": ["cmdb-connector-check-access"]}]}] * 2
    assert len(asked) == 4  # and the volumes' listing, in each region
    text = render_calls(rows, joined_calls(sources))
    assert f"  {fenced} eu-west-1 rds:describe_db_instances: denied: " in text and "service control policy" in text
    assert f"  {fenced} eu-west-1 ec2:describe_volumes: denied: " in text
    bad = regional_probes + 4  # every regional call in ap-south-1; RDS, Lambda and both volume calls in eu-west-1
    assert text.splitlines()[-1] == (f"calls: {len(listings)} listing(s) and 1 joined call(s) in 2 account(s) and 3 "
                                     f"region(s): {len(rows) - bad} allowed, {bad} refused or failed (their scopes "
                                     "would not be collected, so nothing in them retired)")


@mock_aws
def test_check_access_calls_in_every_enabled_region_with_all_and_an_account_whose_regions_cannot_be_listed():
    from botocore.exceptions import ClientError

    from connector.aws.access import check_calls
    from connector.aws.collect import enabled_regions

    pool = SessionPool(boto3.Session(), RoleSettings("CMDBReadRole", "ext-id", "sess", 3600), "us-east-1")
    good, fenced = "111111111111", "222222222222"
    assert pool.open(good)[0] == OK and pool.open(fenced)[0] == OK

    def refused(model, **_):
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "not allowed"}}, model.name)

    pool.get(fenced).session.register("before-call.ec2.DescribeRegions", refused)
    sources = {name: s for name, s in load_mappings().sources.items() if name in ("ec2:vpc", "s3:bucket")}
    rows = check_calls(pool, [good, fenced], sources, ["all"], max_workers=4)
    enabled = set(enabled_regions(pool, good, "us-east-1"))  # as collect finds them
    assert len(enabled) > 10
    assert {r.region for r in rows if r.account_id == good and r.call == "ec2:describe_vpcs"} == enabled
    assert [r.call for r in rows if r.account_id == good].count("s3:list_buckets") == 1
    (only,) = [r for r in rows if r.account_id == fenced]
    assert (only.call, only.status) == ("ec2:describe_regions", DENIED) and "cannot list enabled regions" in only.reason
