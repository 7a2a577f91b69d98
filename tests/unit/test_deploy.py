"""The AWS side as a kit: the role template and the central user's policy, checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from connector.aws.collect import collect_inventory
from connector.aws.targets import open_account_sessions, open_session_pool, target_accounts
from connector.models import DENIED, OK
from connector.sandbox.aws import MANAGEMENT_ACCOUNT, AwsSandbox, RegionPlan, account_credentials, seed_organization
from connector.sandbox.demo import point_aws_at
from connector.settings import load_settings
from tests.conftest import foundation_mappings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TEMPLATE = DEPLOY / "cmdb-read-role.yaml"
POLICY = DEPLOY / "cmdb-assume-role-policy.json"


def template() -> dict:
    from cfnlint.decode import decode

    parsed, matches = decode(str(TEMPLATE))
    assert not matches
    return parsed


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_role_template_security_properties():
    doc = template()
    assert set(doc["Parameters"]) == {"TrustedAccountId", "TrustedUserName", "ExternalId", "AllowedSourceIps",
                                      "TrustedPrincipalType"}
    assert doc["Parameters"]["TrustedPrincipalType"]["AllowedValues"] == ["user", "role"]
    assert doc["Parameters"]["ExternalId"]["NoEcho"] is True
    roles = [r for r in doc["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert len(roles) == 1 and len(doc["Resources"]) == 1
    role = roles[0]["Properties"]
    assert role["RoleName"] == "CMDBReadRole"
    assert role["MaxSessionDuration"] == 3600
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRole"
    principal = statement["Principal"]["AWS"]
    assert principal == {"Fn::Sub": "arn:${AWS::Partition}:iam::${TrustedAccountId}:${TrustedPrincipalType}/${TrustedUserName}"}
    assert "*" not in json.dumps(statement["Principal"])
    condition = statement["Condition"]["Fn::If"]
    with_ip, without_ip = condition[1], condition[2]
    for branch in (with_ip, without_ip):  # ExternalId required in both branches
        assert branch["StringEquals"] == {"sts:ExternalId": {"Ref": "ExternalId"}}
    assert with_ip["IpAddress"] == {"aws:SourceIp": {"Ref": "AllowedSourceIps"}}
    assert role["ManagedPolicyArns"] == [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/ReadOnlyAccess"}]
    (inline,) = role["Policies"]
    actions = {a for s in inline["PolicyDocument"]["Statement"] for a in s["Action"]}
    assert actions == {"organizations:Describe*", "organizations:List*"}
    assert "Export" in doc["Outputs"]["RoleArn"]


def test_central_user_may_only_assume_the_role():
    policy = json.loads(POLICY.read_text())
    (statement,) = policy["Statement"]
    assert statement == {"Sid": "AssumeCMDBReadRoleOnly", "Effect": "Allow", "Action": "sts:AssumeRole",
                         "Resource": "arn:aws:iam::*:role/CMDBReadRole"}


@pytest.fixture
def deployed(tmp_path):
    """The template deployed with moto's CloudFormation into two member accounts; a third has no stack."""
    with AwsSandbox(enforce_trust=True) as aws:
        org = seed_organization(aws.moto_url, ["web", "data", "nostack"], ["us-east-1"], RegionPlan(vpcs=1, instances_per_subnet=0))
        for name in ("web", "data"):
            cfn = boto3.client("cloudformation", endpoint_url=aws.moto_url, region_name="us-east-1",
                               **account_credentials(aws.moto_url, org.accounts[name]))
            cfn.create_stack(StackName="cmdb-read-role", TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"],
                             Parameters=[{"ParameterKey": "TrustedAccountId", "ParameterValue": MANAGEMENT_ACCOUNT},
                                         {"ParameterKey": "TrustedUserName", "ParameterValue": "cmdb-connector"},
                                         {"ParameterKey": "ExternalId", "ParameterValue": "kit-external-id"}])
            outputs = cfn.describe_stacks(StackName="cmdb-read-role")["Stacks"][0]["Outputs"]
            assert outputs[0]["OutputValue"].endswith(f":{org.accounts[name]}:role/CMDBReadRole")
        point_aws_at(aws.url)
        yield aws, org


def collect(external_id: str, accounts: list[str]):
    settings = load_settings(None, {"aws": {"external_id": external_id, "regions": ["us-east-1"], "accounts": accounts},
                                    "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"}})
    pool = open_session_pool(settings)
    accounts = open_account_sessions(pool, target_accounts(settings, pool))
    return collect_inventory(pool, accounts, foundation_mappings().sources, ["us-east-1"], 4, 2)


def test_connector_assumes_the_deployed_role_and_collects_from_both_accounts(deployed):
    aws, org = deployed
    ids = [org.accounts[n] for n in ("web", "data", "nostack")]
    inventory = collect("kit-external-id", ids)
    status = {a.account_id: a.status for a in inventory.accounts}
    assert status == {ids[0]: OK, ids[1]: OK, ids[2]: DENIED}
    for account in ids[:2]:
        assert {s.status for s in inventory.scopes if s.account_id == account} == {OK}
        assert [r for r in inventory.records if r.account_id == account and r.source == "ec2:vpc"]
    # the wrong ExternalId is refused by the deployed trust policy
    wrong = collect("some-other-id", ids[:2])
    assert {a.status for a in wrong.accounts} == {DENIED}


def test_the_sandbox_deploys_the_role_the_template_makes(deployed):
    """The demo and `cmdb-connector sandbox` make CMDBReadRole in every account as the StackSet does (the
    template itself is not installed with the package): the same trust policy, checked on each AssumeRole."""
    from urllib.parse import unquote

    from connector.aws.access import check_access
    from connector.sandbox.aws import deploy_read_roles

    aws, org = deployed
    web, nostack = org.accounts["web"], org.accounts["nostack"]
    deploy_read_roles(aws.moto_url, [nostack], "kit-external-id")

    def role(account: str) -> dict:
        iam = boto3.client("iam", endpoint_url=aws.moto_url, region_name="us-east-1",
                           **account_credentials(aws.moto_url, account))
        made = iam.get_role(RoleName="CMDBReadRole")["Role"]
        document = made["AssumeRolePolicyDocument"]
        return {"trust": json.loads(unquote(document)) if isinstance(document, str) else document,
                "max_session": made["MaxSessionDuration"]}

    assert role(nostack) == role(web)
    assert {a.status for a in collect("kit-external-id", [nostack]).accounts} == {OK}
    assert {a.status for a in collect("some-other-id", [nostack]).accounts} == {DENIED}
    settings = load_settings(None, {
        "aws": {"external_id": "kit-external-id", "accounts": [nostack]},
        "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"}})
    pool = open_session_pool(settings)
    (row,) = check_access(pool, target_accounts(settings, pool), "CMDBReadRole", None)
    assert (row.status, row.external_id_required) == (OK, "yes")
