"""Shared fixtures. Nothing here reaches a real AWS account or ServiceNow instance."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

SAFE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDTESTCENTRAL",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch):
    """Fake AWS credentials, no endpoint override, no CMDB_* leaking in; restored after."""
    for name in list(os.environ):
        if name.startswith("CMDB_") or name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
    for name, value in SAFE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def standin():
    from connector.sandbox.servicenow import ServiceNowStandIn

    with ServiceNowStandIn(users={"admin": "s3cret-pw"}) as server:
        yield server


FOUNDATION = ("cmdb_ci_cloud_service_account", "cmdb_ci_aws_datacenter", "cmdb_ci_network",
              "cmdb_ci_cloud_subnet", "cmdb_ci_vm_instance")


def foundation_mappings():
    """The built-in mappings of the account, region, VPC, subnet and instance classes:
    enough to exercise collection at scale without calling every AWS service."""
    from connector.mapping.load import MappingSet, load_mappings

    everything = load_mappings()
    return MappingSet({name: m for name, m in everything.mappings.items() if name in FOUNDATION})
