"""The embedded default: a simulated Organization, a local ServiceNow, one full run.

Nothing here reaches a real AWS account or a real ServiceNow instance: both
stand-ins listen on 127.0.0.1, and the process's AWS variables are pointed at
the simulated Organization before any client is made.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .aws import FAKE_KEYS, AwsSandbox, RegionPlan, SeededOrg, deploy_read_roles, seed_organization
from .servicenow import ServiceNowStandIn

DEMO_MEMBERS = ["prod", "dev", "shared-services"]
DEMO_UNITS = {"prod": "workloads/production", "dev": "workloads/development", "shared-services": "infrastructure"}
DEMO_REGIONS = ["us-east-1", "eu-west-1"]
DEMO_USER = "cmdb-connector"


@dataclass
class Sandboxes:
    aws: AwsSandbox
    servicenow: ServiceNowStandIn
    org: SeededOrg
    external_id: str
    password: str

    def settings_data(self, output_dir: Path) -> dict:
        return {
            "aws": {"external_id": self.external_id, "regions": DEMO_REGIONS},
            "servicenow": {
                "instance_url": self.servicenow.url,
                "username": DEMO_USER,
                "password": self.password,
            },
            "report": {"output_dir": str(output_dir)},
        }


def point_aws_at(endpoint: str) -> None:
    """Make this process's boto3 use the sandbox and nothing else."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=FAKE_KEYS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=FAKE_KEYS["aws_secret_access_key"],
        AWS_DEFAULT_REGION=DEMO_REGIONS[0],
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )


@contextmanager
def sandboxes(members: list[str] | None = None, regions: list[str] | None = None,
              db_path: Path | None = None) -> Iterator[Sandboxes]:
    external_id = "demo-" + secrets.token_hex(8)
    password = secrets.token_urlsafe(12)
    # the roles as the StackSet deploys them, their trust policies checked on each AssumeRole
    with AwsSandbox(enforce_trust=True) as aws, \
            ServiceNowStandIn(users={DEMO_USER: password}, db_path=db_path) as sn:
        org = seed_organization(aws.moto_url, members or DEMO_MEMBERS, regions or DEMO_REGIONS, RegionPlan(services=True),
                                units=DEMO_UNITS if members is None else None)
        deploy_read_roles(aws.moto_url, org.accounts.values(), external_id)
        point_aws_at(aws.url)
        yield Sandboxes(aws, sn, org, external_id, password)
