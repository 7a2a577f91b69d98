"""The Organization's structure in the CMDB, end to end over real HTTP: the Organization, its OUs and
which of them contains each account, kept true as accounts move and OUs go; never deleted on a guess."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import boto3
import pytest

from connector.sandbox.aws import FAKE_KEYS, AwsSandbox, RegionPlan, seed_organization
from connector.sandbox.servicenow import ServiceNowStandIn
from tests.e2e.test_run_e2e import CLI, EXTERNAL_ID, PASSWORD, cli_env, relation_keys, run_cli

pytestmark = pytest.mark.e2e

CONTAINS = "Contains::Contained by"
REGION = "us-east-1"


@pytest.fixture
def world(tmp_path):
    with AwsSandbox(external_id=EXTERNAL_ID) as aws, ServiceNowStandIn(users={"svc_cmdb": PASSWORD}) as sn:
        org = seed_organization(aws.moto_url, ["alpha", "bravo"], [REGION], RegionPlan(vpcs=0),
                                units={"alpha": "workloads/production", "bravo": "sandbox"})

        def config(accounts: list[str] = (), writer: str = "table", tags: bool = False):
            path = tmp_path / "config.toml"
            path.write_text(f'[aws]\nregions = ["{REGION}"]\naccounts = {json.dumps(list(accounts))}\n\n'
                            f'[servicenow]\ninstance_url = "{sn.url}"\nusername = "svc_cmdb"\nwriter = "{writer}"\n\n'
                            f'[reconcile]\ntags = {str(tags).lower()}\n\n[report]\noutput_dir = "reports"\n')
            return path

        yield aws, sn, org, config


def organizations(aws: AwsSandbox):
    return boto3.client("organizations", endpoint_url=aws.moto_url, region_name=REGION, **FAKE_KEYS)


def contains(sn: ServiceNowStandIn) -> set[tuple[str, str]]:
    """(parent, child) of every Contains relation from the Organization or an OU, by correlation_id."""
    return {(parent, child) for parent, kind, child in relation_keys(sn) if kind == CONTAINS and ":organizations::" in parent}


def structure(sn: ServiceNowStandIn) -> set[tuple[str, str]]:
    """``contains``, by the CIs' names."""
    names = {r["correlation_id"]: r["name"] for r in sn.store.rows("cmdb_ci")}
    return {(names[parent], names[child]) for parent, child in contains(sn)}


def live(sn: ServiceNowStandIn, table: str) -> list[str]:
    return sorted(r["name"] for r in sn.store.rows(table) if r["install_status"] != "7")


def writes(sn: ServiceNowStandIn) -> Counter:
    return Counter({k: v for k, v in sn.stats.items()
                    if k.split(" ")[0] in ("POST", "PATCH", "DELETE", "batch") and not k.endswith("/query")})


@pytest.mark.parametrize("writer", ["table", "ire"])
def test_the_organization_its_ous_and_their_accounts_and_a_rerun_writes_nothing(world, writer):
    aws, sn, org, config = world
    code, report, output = run_cli(aws.url, config(writer=writer), "run")
    assert code == 0, output
    (organization,) = sn.store.rows("cmdb_ci_cloud_org")
    oid = organizations(aws).describe_organization()["Organization"]["Id"]
    assert (organization["name"], organization["object_id"], organization["root_id"][:2]) == (oid, oid, "r-")
    assert live(sn, "cmdb_ci_aws_org_unit") == ["production", "sandbox", "workloads"]
    production = next(r for r in sn.store.rows("cmdb_ci_aws_org_unit") if r["name"] == "production")
    assert production["org_unit_parent_id"] == org.units["workloads"] and production["aws_org_id"] == oid
    assert structure(sn) == {(oid, "workloads"), (oid, "sandbox"), ("workloads", "production"),
                             ("production", "alpha"), ("sandbox", "bravo"), (oid, "master")}  # moto names the management account so
    sn.stats.clear()
    assert run_cli(aws.url, config(writer=writer), "run")[0] == 0
    assert writes(sn) == Counter()


def test_an_account_that_moves_and_an_ou_that_goes_are_followed(world):
    aws, sn, org, config = world
    assert run_cli(aws.url, config(), "run")[0] == 0
    client = organizations(aws)
    client.move_account(AccountId=org.accounts["bravo"], SourceParentId=org.units["sandbox"],
                        DestinationParentId=org.units["workloads"])
    client.delete_organizational_unit(OrganizationalUnitId=org.units["sandbox"])
    code, report, output = run_cli(aws.url, config(), "run", "--force")  # 1 of 3 OUs: over the guard's fraction
    assert code == 0, output
    assert live(sn, "cmdb_ci_aws_org_unit") == ["production", "workloads"]
    (retired,) = [c for c in report["changes"] if c["action"] == "retire"]
    assert retired["table"] == "cmdb_ci_aws_org_unit"
    assert ("workloads", "bravo") in structure(sn) and ("sandbox", "bravo") not in structure(sn)
    sn.stats.clear()
    assert run_cli(aws.url, config(), "run")[0] == 0
    assert writes(sn) == Counter()


def test_accounts_listed_in_the_config_leave_the_organization_and_its_relations_as_they_are(world):
    """aws.accounts: the Organization is not read. Its CIs are not retired, and no account's relation to an OU
    is deleted: where an account is is unknown, not nowhere."""
    aws, sn, org, config = world
    assert run_cli(aws.url, config(), "run")[0] == 0
    before = contains(sn)
    code, report, output = run_cli(aws.url, config([org.accounts["alpha"], org.accounts["bravo"]]), "run")
    assert code == 0, output
    assert report["changes"] == []  # no update (names, Organization), no retire, no relation deleted
    assert contains(sn) == before and len(before) == 6
    # nor is an account's name or Organization: aws.accounts does not give them
    names = {r["account_id"]: (r["name"], r["organization_id"]) for r in sn.store.rows("cmdb_ci_cloud_service_account")}
    oid = organizations(aws).describe_organization()["Organization"]["Id"]
    assert names[org.accounts["alpha"]] == ("alpha", oid) and names[org.accounts["bravo"]] == ("bravo", oid)
    assert live(sn, "cmdb_ci_aws_org_unit") == ["production", "sandbox", "workloads"]
    # the management account, not listed, is named with its CIs; the Organization's and OUs' CIs are not its
    (untargeted,) = report["untargeted_accounts"]
    assert untargeted["account_id"] == org.management_account and untargeted["cis"]["cmdb_ci_cloud_service_account"] == 1
    assert not {"cmdb_ci_cloud_org", "cmdb_ci_aws_org_unit"} & set(untargeted["cis"])


def tags_of(sn: ServiceNowStandIn, name: str) -> dict[str, str]:
    (ci,) = [r for r in sn.store.rows("cmdb_ci") if r["name"] == name]
    return {r["key"]: r["value"] for r in sn.store.rows("cmdb_key_value") if r["configuration_item"] == ci["sys_id"]}


def test_the_tags_of_the_accounts_and_ous_with_reconcile_tags(world):
    """Read through Organizations (ListTagsForResource), one call per account and OU; with aws.accounts the
    Organization is not read, and the accounts' tag rows are left as they are, not deleted."""
    aws, sn, org, config = world
    client = organizations(aws)
    client.tag_resource(ResourceId=org.accounts["alpha"], Tags=[{"Key": "cost-center", "Value": "cc-42"}])
    client.tag_resource(ResourceId=org.units["workloads"], Tags=[{"Key": "owner", "Value": "platform-team"}])
    code, _report, output = run_cli(aws.url, config(tags=True), "run")
    assert code == 0, output
    assert tags_of(sn, "alpha") == {"cost-center": "cc-42"}
    assert tags_of(sn, "workloads") == {"owner": "platform-team"}
    assert tags_of(sn, "bravo") == {} and tags_of(sn, "sandbox") == {}
    client.tag_resource(ResourceId=org.accounts["alpha"], Tags=[{"Key": "cost-center", "Value": "cc-43"}])
    assert run_cli(aws.url, config(tags=True), "run")[0] == 0
    assert tags_of(sn, "alpha") == {"cost-center": "cc-43"}
    sn.stats.clear()
    assert run_cli(aws.url, config(tags=True), "run")[0] == 0
    assert writes(sn) == Counter()
    code, report, output = run_cli(aws.url, config([org.accounts["alpha"]], tags=True), "run")
    assert code == 0, output
    assert not [c for c in report["changes"] if c["table"] == "cmdb_key_value"]
    (alpha,) = [r for r in sn.store.rows("cmdb_ci_cloud_service_account") if r["account_id"] == org.accounts["alpha"]]
    assert {r["key"]: r["value"] for r in sn.store.rows("cmdb_key_value")
            if r["configuration_item"] == alpha["sys_id"]} == {"cost-center": "cc-43"}


def test_a_closed_account_is_non_operational_and_its_resources_are_left_as_they_are(world):
    aws, sn, org, config = world
    assert run_cli(aws.url, config(), "run")[0] == 0
    bravo = org.accounts["bravo"]
    theirs = {r["sys_id"]: dict(r) for r in sn.store.rows("cmdb_ci")
              if f":{bravo}:" in r["correlation_id"] and r["sys_class_name"] != "cmdb_ci_cloud_service_account"}
    assert theirs  # its datacenter, default VPC, zones...
    organizations(aws).close_account(AccountId=bravo)
    code, report, output = run_cli(aws.url, config(), "run")
    assert code == 0, output
    (account,) = [a for a in report["accounts"] if a["account_id"] == bravo]
    assert account["status"] == "skipped" and "SUSPENDED" in account["error"]
    (ci,) = [r for r in sn.store.rows("cmdb_ci_cloud_service_account") if r["account_id"] == bravo]
    assert (ci["operational_status"], ci["install_status"], ci["name"]) == ("2", "1", "bravo")
    assert {sys_id: dict(sn.store.get("cmdb_ci", sys_id)) for sys_id in theirs} == theirs  # not retired, not written
    assert ("sandbox", "bravo") in structure(sn)
    sn.stats.clear()
    assert run_cli(aws.url, config(), "run")[0] == 0
    assert writes(sn) == Counter()


def test_an_account_that_leaves_the_organization_is_named_and_retired_only_when_asked(world):
    """Its CIs are not collected any more: kept as they are (unknown is not empty), and named in the report;
    `run --retire-account` retires them, the operator's word, and is refused for an account still in it."""
    aws, sn, org, config = world
    assert run_cli(aws.url, config(), "run")[0] == 0
    bravo = org.accounts["bravo"]
    theirs = {r["sys_id"]: dict(r) for r in sn.store.rows("cmdb_ci") if f":{bravo}:" in r["correlation_id"]}
    per_table = Counter(r["sys_class_name"] for r in theirs.values())
    assert per_table["cmdb_ci_cloud_service_account"] == 1 and len(per_table) > 2  # its own CI, datacenter, ...
    organizations(aws).remove_account_from_organization(AccountId=bravo)

    code, report, output = run_cli(aws.url, config(), "plan")
    assert code == 0, output
    assert report["untargeted_accounts"] == [{"account_id": bravo, "cis": dict(sorted(per_table.items()))}]
    assert f"{bravo} ({len(theirs)})" in output and "--retire-account" in output  # in the log, too
    assert not [c for c in report["changes"] if c["action"] == "retire" and c["identity"].count(bravo)]
    code, report, output = run_cli(aws.url, config(), "run")
    assert code == 0, output
    assert {sys_id: dict(sn.store.get("cmdb_ci", sys_id)) for sys_id in theirs} == theirs  # left as they were

    # an account still in the Organization is refused, before anything is collected or written
    sn.stats.clear()
    proc = subprocess.run([*CLI, "--config", str(config()), "run", "--retire-account", org.accounts["alpha"]],
                          capture_output=True, text=True, env=cli_env(aws.url), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"--retire-account {org.accounts['alpha']}: the account is a target of this run" in proc.stderr
    assert "Traceback" not in proc.stderr and writes(sn) == Counter()
    proc = subprocess.run([*CLI, "--config", str(config()), "plan", "--retire-account", "12345"],
                          capture_output=True, text=True, env=cli_env(aws.url), timeout=300)
    assert proc.returncode == 2 and "'12345': an AWS account id is 12 digits" in proc.stderr

    # the gone account's CIs are most of their classes: the guard holds them, then --force
    code, report, output = run_cli(aws.url, config(), "run", "--retire-account", bravo)
    assert code == 0, output
    assert {sys_id: dict(sn.store.get("cmdb_ci", sys_id)) for sys_id in theirs} == theirs
    assert any("would retire" in guard for guard in report["guards"])
    code, report, output = run_cli(aws.url, config(), "run", "--retire-account", bravo, "--force")
    assert code == 0, output
    retired = {c["sys_id"] for c in report["changes"] if c["action"] == "retire"}
    assert retired == set(theirs)
    assert all((r["install_status"], r["operational_status"]) == ("7", "6")
               for r in (sn.store.get("cmdb_ci", sys_id) for sys_id in theirs))
    assert report["untargeted_accounts"] == []
    sn.stats.clear()
    for again in ((), ("--retire-account", bravo)):  # converged: nothing more to write, nothing left to name
        code, report, output = run_cli(aws.url, config(), "run", *again)
        assert (code, report["untargeted_accounts"]) == (0, []), output
    assert writes(sn) == Counter()
