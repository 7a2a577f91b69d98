"""A simulated AWS Organization: moto, with an STS front, on 127.0.0.1.

moto does not check trust policies: assuming a missing role succeeds. The
front, a WSGI middleware in the same server as moto, refuses ``AssumeRole`` of
the connector's role the way a real account would, for accounts whose role is
"missing" (``deny``) and for a wrong ExternalId. It counts the calls, and can
add a fixed latency to every call, as the network to a real AWS endpoint
would. The server runs in a thread, or in a process of its own
(``separate_process``) so that moto's work does not share the connector's
interpreter lock; the front is then configured over HTTP.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

MANAGEMENT_ACCOUNT = "123456789012"
FAKE_KEYS = {"aws_access_key_id": "AKIDSANDBOXCENTRAL", "aws_secret_access_key": "sandbox-secret"}
GUARDED_ROLE = "CMDBReadRole"
ADMIN = "/__sandbox__/"

DENIED_XML = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>AccessDenied</Code><Message>User: arn:aws:iam::{caller}:user/cmdb-connector is not authorized "
    "to perform: sts:AssumeRole on resource: {role}</Message></Error>"
    "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)


@dataclass
class FrontState:
    denied: set[str] = field(default_factory=set)
    external_id: str | None = None
    latency: float = 0.0
    # Check the role as IAM would: it must exist, and its trust policy's
    # sts:ExternalId condition (if any) must match.
    enforce_trust: bool = False
    calls: Counter = field(default_factory=Counter)
    assume_role_calls: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, settings: dict[str, Any]) -> None:
        with self.lock:
            if "denied" in settings:
                self.denied = set(settings["denied"])
            if "external_id" in settings:
                self.external_id = settings["external_id"]
            if "latency" in settings:
                self.latency = float(settings["latency"])
            if "enforce_trust" in settings:
                self.enforce_trust = bool(settings["enforce_trust"])
            if settings.get("clear_calls"):
                self.calls.clear()
                self.assume_role_calls.clear()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"denied": sorted(self.denied), "latency": self.latency,
                    "calls": dict(self.calls), "assume_role_calls": dict(self.assume_role_calls)}

    def refusal(self, form: dict[str, list[str]]) -> str | None:
        """The role ARN refused, or None. Only the connector's role is guarded."""
        role = (form.get("RoleArn") or [""])[0]
        if not role.endswith(f":role/{GUARDED_ROLE}"):
            return None
        account = role.split(":")[4] if role.count(":") >= 5 else ""
        with self.lock:
            self.assume_role_calls[account] += 1
            if account in self.denied:
                return role
            if self.external_id is not None and (form.get("ExternalId") or [""])[0] != self.external_id:
                return role
            enforce = self.enforce_trust
        if enforce and not _trusts(account, (form.get("ExternalId") or [""])[0]):
            return role
        return None


def _trusts(account: str, external_id: str) -> bool:
    """Does the account's CMDBReadRole exist, and accept this ExternalId? (moto's IAM state)"""
    from moto.core import DEFAULT_ACCOUNT_ID  # noqa: F401 - moto is loaded in this process
    from moto.iam.models import iam_backends

    try:
        role = iam_backends[account]["global"].get_role(GUARDED_ROLE)
    except Exception:  # noqa: BLE001 - a missing role is a refusal
        return False
    document = role.assume_role_policy_document
    policy = json.loads(document) if isinstance(document, str) else document
    statements = policy.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        wanted = (statement.get("Condition") or {}).get("StringEquals", {}).get("sts:ExternalId")
        if wanted is None or wanted == external_id:
            return True
    return False


def _action(body: bytes) -> str:
    """The Action of a query-protocol call (EC2, STS), or "other"."""
    for part in body.split(b"&"):
        if part.startswith(b"Action="):
            return part[len(b"Action="):].decode(errors="replace")
    return "other"


class StsFront:
    """WSGI middleware in front of moto's app."""

    def __init__(self, app: Callable, state: FrontState):
        self.app = app
        self.state = state

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(ADMIN):
            return self._admin(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        call = environ.get("HTTP_X_AMZ_TARGET") or _action(body)
        with self.state.lock:
            self.state.calls[call] += 1
            latency = self.state.latency
        if latency:
            time.sleep(latency)
        if environ.get("REQUEST_METHOD") == "POST" and b"Action=AssumeRole" in body:
            refused = self.state.refusal(parse_qs(body.decode()))
            if refused is not None:
                payload = DENIED_XML.format(caller=MANAGEMENT_ACCOUNT, role=refused).encode()
                start_response("403 Forbidden", [("Content-Type", "text/xml"), ("Content-Length", str(len(payload)))])
                return [payload]
        return self.app(environ, start_response)

    def _admin(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            self.state.configure(json.loads(environ["wsgi.input"].read(length) or b"{}"))
        payload = json.dumps(self.state.snapshot()).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def make_aws_server(host: str, port: int, state: FrontState):
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    try:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server
    except ImportError:
        from ..errors import UsageError

        raise UsageError("the simulated AWS needs moto: python -m pip install 'cmdb-connector[demo]'") from None

    app = StsFront(DomainDispatcherApplication(create_backend_app), state)
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AwsSandbox:
    """``with AwsSandbox(...) as aws:`` -> ``aws.url`` is the AWS endpoint to use."""

    def __init__(self, denied_accounts: tuple[str, ...] = (), external_id: str | None = None,
                 latency: float = 0.0, separate_process: bool = False, enforce_trust: bool = False):
        self.separate_process = separate_process
        self._initial = {"denied": sorted(denied_accounts), "external_id": external_id, "latency": latency,
                         "enforce_trust": enforce_trust}
        self._state: FrontState | None = None
        self._server = None
        self._process: subprocess.Popen | None = None
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "AwsSandbox":
        if self.separate_process:
            self._port = free_port()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "connector.sandbox.aws", "--port", str(self._port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self._wait_until_up()
        else:
            self._state = FrontState()
            self._server = make_aws_server("127.0.0.1", 0, self._state)
            self._port = self._server.server_address[1]
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                             name="aws-sandbox", daemon=True).start()
        # moto's state is per process: start from an empty AWS every time.
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30).read()
        self._configure(self._initial)
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self._admin()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the AWS sandbox did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def __enter__(self) -> "AwsSandbox":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._port is not None, "not started"
        return f"http://127.0.0.1:{self._port}"

    # Seeding goes through the same server: the front only guards CMDBReadRole.
    moto_url = url

    # -- the front's settings and counters ----------------------------------------------
    def _admin(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if settings is None else json.dumps(settings).encode()
        request = urllib.request.Request(f"{self.url}{ADMIN}state", data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def _configure(self, settings: dict[str, Any]) -> None:
        if self._state is not None:
            self._state.configure(settings)
        else:
            self._admin(settings)

    def _snapshot(self) -> dict[str, Any]:
        return self._state.snapshot() if self._state is not None else self._admin()

    def deny(self, account_id: str) -> None:
        self._configure({"denied": sorted(set(self._snapshot()["denied"]) | {account_id})})

    def allow(self, account_id: str) -> None:
        self._configure({"denied": sorted(set(self._snapshot()["denied"]) - {account_id})})

    def set_external_id(self, external_id: str | None) -> None:
        self._configure({"external_id": external_id})

    def set_latency(self, seconds: float) -> None:
        self._configure({"latency": seconds})

    def clear_calls(self) -> None:
        self._configure({"clear_calls": True})

    @property
    def calls(self) -> Counter:
        return Counter(self._snapshot()["calls"])

    @property
    def assume_role_calls(self) -> Counter:
        return Counter(self._snapshot()["assume_role_calls"])


def main(argv: list[str] | None = None) -> None:
    """``python -m connector.sandbox.aws --port N``: serve until killed."""
    parser = argparse.ArgumentParser(description="moto with the STS front, on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    make_aws_server("127.0.0.1", args.port, FrontState()).serve_forever()


# -- a simulated Organization ------------------------------------------------

@dataclass
class RegionPlan:
    vpcs: int = 1
    subnets_per_vpc: int = 2
    instances_per_subnet: int = 1
    # one of each managed service (S3, DynamoDB, RDS, ELBv2, classic ELB, Lambda, EKS)
    services: bool = False


@dataclass
class SeededOrg:
    management_account: str
    accounts: dict[str, str] = field(default_factory=dict)  # name -> account id
    # (account, region) -> instance ids
    instances: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # OU path ("workloads/prod") -> OU id


def _client(service: str, endpoint: str, region: str, credentials: dict[str, str] | None = None):
    import boto3

    keys = credentials or FAKE_KEYS
    return boto3.client(service, endpoint_url=endpoint, region_name=region, **keys)


def account_credentials(endpoint: str, account_id: str) -> dict[str, str]:
    """Credentials that land moto's calls in ``account_id``."""
    sts = _client("sts", endpoint, "us-east-1")
    creds = sts.assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole", RoleSessionName="sandbox-seed"
    )["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def seed_organization(
    endpoint: str,
    member_names: list[str],
    regions: list[str],
    plan: RegionPlan | None = None,
    units: dict[str, str] | None = None,
) -> SeededOrg:
    """An Organization with the management account and one member per name; ``units`` puts members
    in OUs: member name -> OU path ("workloads/prod": the OU prod in the OU workloads), made as needed."""
    plan = plan or RegionPlan()
    org = _client("organizations", endpoint, "us-east-1")
    org.create_organization(FeatureSet="ALL")
    seeded = SeededOrg(management_account=MANAGEMENT_ACCOUNT)
    seeded.accounts["management"] = MANAGEMENT_ACCOUNT
    for name in member_names:
        status = org.create_account(Email=f"{name}@example.com", AccountName=name)["CreateAccountStatus"]
        seeded.accounts[name] = status["AccountId"]
    root = org.list_roots()["Roots"][0]["Id"]
    for name, path in (units or {}).items():
        parent = root
        for depth, unit in enumerate(path.split("/"), 1):
            key = "/".join(path.split("/")[:depth])
            if key not in seeded.units:
                seeded.units[key] = org.create_organizational_unit(ParentId=parent, Name=unit)["OrganizationalUnit"]["Id"]
            parent = seeded.units[key]
        org.move_account(AccountId=seeded.accounts[name], SourceParentId=root, DestinationParentId=parent)
    for name, account_id in seeded.accounts.items():
        creds = account_credentials(endpoint, account_id)
        for region in regions:
            seeded.instances[(account_id, region)] = _seed_region(endpoint, creds, region, name, plan)
        if plan.services:
            _seed_services(endpoint, creds, regions[0], name)
    return seeded


def deploy_read_roles(endpoint: str, accounts: Iterable[str], external_id: str, user: str = "cmdb-connector") -> None:
    """``CMDBReadRole`` in each account, as deploy/cmdb-read-role.yaml makes it through its StackSet: only the
    management account's ``user`` may assume it, only with ``external_id`` (the template's ReadOnlyAccess
    is left out: moto neither has AWS's managed policies nor enforces any). With
    ``AwsSandbox(enforce_trust=True)``, AssumeRole then checks the role's trust policy as IAM does, and
    ``check-access`` finds that it requires an ExternalId."""
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "ConnectorCentralUserOnly", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{MANAGEMENT_ACCOUNT}:user/{user}"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}]})
    for account_id in accounts:
        iam = _client("iam", endpoint, "us-east-1", account_credentials(endpoint, account_id))
        iam.create_role(RoleName=GUARDED_ROLE, AssumeRolePolicyDocument=trust, MaxSessionDuration=3600,
                        Description="Read-only inventory access for cmdb-connector")


def _seed_services(endpoint: str, creds: dict[str, str], region: str, label: str) -> None:
    """One of each managed service the catalogue maps, in the account's first region."""
    import io
    import zipfile

    ec2 = _client("ec2", endpoint, region, creds)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]][:2]
    tags = [{"Key": "team", "Value": label}]  # every service is tagged, each in its own API's way
    s3 = _client("s3", endpoint, region, creds)
    s3.create_bucket(
        Bucket=f"{label}-artifacts-{region}",
        **({} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}))
    s3.put_bucket_tagging(Bucket=f"{label}-artifacts-{region}", Tagging={"TagSet": tags})
    _client("dynamodb", endpoint, region, creds).create_table(
        TableName=f"{label}-orders", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST", Tags=tags)
    _client("rds", endpoint, region, creds).create_db_instance(
        DBInstanceIdentifier=f"{label}-db", DBInstanceClass="db.t3.micro", Engine="postgres",
        MasterUsername="cmdb", MasterUserPassword="sandbox-only-pw", AllocatedStorage=20, Tags=tags)
    _client("elbv2", endpoint, region, creds).create_load_balancer(Name=f"{label}-alb", Subnets=subnets, Tags=tags)
    _client("elb", endpoint, region, creds).create_load_balancer(
        LoadBalancerName=f"{label}-classic", AvailabilityZones=[f"{region}a"],
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}], Tags=tags)
    role = _client("iam", endpoint, region, creds).create_role(
        RoleName=f"{label}-lambda", AssumeRolePolicyDocument='{"Version": "2012-10-17", "Statement": []}')["Role"]["Arn"]
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    _client("lambda", endpoint, region, creds).create_function(
        FunctionName=f"{label}-worker", Runtime="python3.12", Role=role, Handler="handler.handle",
        Code={"ZipFile": package.getvalue()}, Tags={"team": label})
    _client("eks", endpoint, region, creds).create_cluster(
        name=f"{label}-k8s", roleArn=role, resourcesVpcConfig={"subnetIds": subnets}, tags={"team": label})


def _seed_region(endpoint: str, creds: dict[str, str], region: str, label: str, plan: RegionPlan) -> list[str]:
    ec2 = _client("ec2", endpoint, region, creds)
    instances: list[str] = []
    for v in range(plan.vpcs):
        vpc = ec2.create_vpc(CidrBlock=f"10.{v}.0.0/16", TagSpecifications=[
            {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": f"{label}-vpc-{v}"}]}])["Vpc"]
        for s in range(plan.subnets_per_vpc):
            subnet = ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock=f"10.{v}.{s}.0/24", TagSpecifications=[
                {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": f"{label}-subnet-{v}-{s}"}]}])["Subnet"]
            if plan.instances_per_subnet:
                run = ec2.run_instances(
                    ImageId="ami-12345678", MinCount=plan.instances_per_subnet, MaxCount=plan.instances_per_subnet,
                    InstanceType="t3.micro", SubnetId=subnet["SubnetId"],
                    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"{label}-app-{v}-{s}"}]}],
                )
                instances.extend(i["InstanceId"] for i in run["Instances"])
    return instances


def terminate_instance(endpoint: str, account_id: str, region: str, instance_id: str) -> None:
    ec2 = _client("ec2", endpoint, region, account_credentials(endpoint, account_id))
    ec2.terminate_instances(InstanceIds=[instance_id])


if __name__ == "__main__":
    main()
