"""A simulated AWS Organization: a moto server behind a small STS front.

moto does not check trust policies: assuming a missing role succeeds. The
front refuses ``AssumeRole`` the way a real account would, for accounts whose
role is "missing" (``deny``) and for a wrong ExternalId, and counts the
calls. Everything else is passed through to moto unchanged. Both listen on
127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

MANAGEMENT_ACCOUNT = "123456789012"
FAKE_KEYS = {"aws_access_key_id": "AKIDSANDBOXCENTRAL", "aws_secret_access_key": "sandbox-secret"}
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}

DENIED_XML = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>AccessDenied</Code><Message>User: arn:aws:iam::{caller}:user/cmdb-connector is not authorized "
    "to perform: sts:AssumeRole on resource: {role}</Message></Error>"
    "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)


class AwsSandbox:
    def __init__(self, denied_accounts: tuple[str, ...] = (), external_id: str | None = None):
        self.denied: set[str] = set(denied_accounts)
        self.external_id = external_id
        self.assume_role_calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._moto = None
        self._proxy: ThreadingHTTPServer | None = None
        self._moto_address: tuple[str, int] | None = None

    def start(self) -> "AwsSandbox":
        os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        from moto.server import ThreadedMotoServer  # moto is only needed for the sandbox

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        self._moto_address = self._moto.get_host_and_port()
        # moto's state is per process: start from an empty AWS every time.
        reset = http.client.HTTPConnection(*self._moto_address, timeout=30)
        reset.request("POST", "/moto-api/reset")
        reset.getresponse().read()
        reset.close()
        handler = type("Front", (_Front,), {"sandbox": self})
        self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._proxy.daemon_threads = True
        threading.Thread(target=self._proxy.serve_forever, kwargs={"poll_interval": 0.05},
                         name="aws-sandbox", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            self._proxy = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> "AwsSandbox":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint the connector uses (through the STS front)."""
        assert self._proxy is not None, "not started"
        host, port = self._proxy.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def moto_url(self) -> str:
        """moto itself, for seeding and inspecting without the front's rules."""
        assert self._moto_address is not None, "not started"
        return f"http://{self._moto_address[0]}:{self._moto_address[1]}"

    def deny(self, account_id: str) -> None:
        with self._lock:
            self.denied.add(account_id)

    def allow(self, account_id: str) -> None:
        with self._lock:
            self.denied.discard(account_id)

    def refusal(self, form: dict[str, list[str]]) -> str | None:
        role = (form.get("RoleArn") or [""])[0]
        account = role.split(":")[4] if role.count(":") >= 5 else ""
        with self._lock:
            self.assume_role_calls[account] += 1
            if account in self.denied:
                return role
        if self.external_id is not None and (form.get("ExternalId") or [""])[0] != self.external_id:
            return role
        return None


class _Front(BaseHTTPRequestHandler):
    sandbox: AwsSandbox
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.command == "POST" and b"Action=AssumeRole" in body:
            refused = self.sandbox.refusal(parse_qs(body.decode()))
            if refused is not None:
                payload = DENIED_XML.format(caller=MANAGEMENT_ACCOUNT, role=refused).encode()
                self.send_response(403)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
        host, port = self.sandbox._moto_address  # type: ignore[misc]
        upstream = http.client.HTTPConnection(host, port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _relay


# -- a simulated Organization ------------------------------------------------

@dataclass
class RegionPlan:
    vpcs: int = 1
    subnets_per_vpc: int = 2
    instances_per_subnet: int = 1


@dataclass
class SeededOrg:
    management_account: str
    accounts: dict[str, str] = field(default_factory=dict)  # name -> account id
    # (account, region) -> instance ids
    instances: dict[tuple[str, str], list[str]] = field(default_factory=dict)


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
) -> SeededOrg:
    """An Organization with the management account and one member per name."""
    plan = plan or RegionPlan()
    org = _client("organizations", endpoint, "us-east-1")
    org.create_organization(FeatureSet="ALL")
    seeded = SeededOrg(management_account=MANAGEMENT_ACCOUNT)
    seeded.accounts["management"] = MANAGEMENT_ACCOUNT
    for name in member_names:
        status = org.create_account(Email=f"{name}@example.com", AccountName=name)["CreateAccountStatus"]
        seeded.accounts[name] = status["AccountId"]
    for name, account_id in seeded.accounts.items():
        creds = account_credentials(endpoint, account_id)
        for region in regions:
            seeded.instances[(account_id, region)] = _seed_region(endpoint, creds, region, name, plan)
    return seeded


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
