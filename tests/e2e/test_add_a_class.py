"""A CMDB admin adds a class by following mappings/README.md, step by step, with no Python."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from connector.sandbox.aws import AwsSandbox, RegionPlan, account_credentials, seed_organization
from connector.sandbox.servicenow import ServiceNowStandIn

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "mappings" / "README.md"
CLI = [sys.executable, "-m", "connector.cli"]


def walkthrough_file() -> str:
    """The TOML block that follows the walk-through marker, as an admin would copy it."""
    text = README.read_text()
    after = text.split("<!-- walkthrough:cmdb_ci_key_pair.toml -->", 1)[1]
    block = re.search(r"```toml\n(.*?)```", after, re.S).group(1)
    return "\n".join(line.removeprefix("   ") for line in block.splitlines()) + "\n"


def test_adding_a_class_as_the_readme_says(tmp_path):
    with AwsSandbox(external_id="walkthrough-ext") as aws, ServiceNowStandIn(users={"svc": "pw-walk"}) as sn:
        org = seed_organization(aws.moto_url, ["apps"], ["us-east-1"], RegionPlan(vpcs=0))
        account = org.accounts["apps"]
        ec2 = boto3.client("ec2", endpoint_url=aws.moto_url, region_name="us-east-1", **account_credentials(aws.moto_url, account))
        key_id = ec2.create_key_pair(KeyName="deploy")["KeyPairId"]
        env = {**os.environ, "AWS_ENDPOINT_URL": aws.url, "AWS_ACCESS_KEY_ID": "AKIDWALK", "AWS_SECRET_ACCESS_KEY": "walk",
               "CMDB_AWS__EXTERNAL_ID": "walkthrough-ext", "CMDB_SERVICENOW__PASSWORD": "pw-walk"}

        def cli(*args):
            return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

        # 1. copy the built-in files
        assert cli("init-mappings", "my-mappings").returncode == 0
        # 3. the new file, exactly as the README shows it
        (tmp_path / "my-mappings" / "cmdb_ci_key_pair.toml").write_text(walkthrough_file())
        # 4. the config points at the folder
        (tmp_path / "config.toml").write_text(
            f'[aws]\nregions = ["us-east-1"]\n\n[servicenow]\ninstance_url = "{sn.url}"\nusername = "svc"\n\n'
            '[reconcile]\nmappings_dir = "my-mappings"\n')
        # 5. validate
        checked = cli("validate")
        assert checked.returncode == 0, checked.stderr
        assert "cmdb_ci_key_pair" in checked.stdout and "18 classes" in checked.stdout
        # 6. collect once, then map the saved inventory, offline
        assert cli("collect", "--output", "inventory.jsonl").returncode == 0
        assert sn.writes() == 0
        mapped = cli("map", "--inventory", "inventory.jsonl", "--class", "cmdb_ci_key_pair")
        assert mapped.returncode == 0, mapped.stderr
        assert "cmdb_ci_key_pair: 1 CI(s), 1 relation(s) (cmdb_ci_key_pair.toml)" in mapped.stdout
        assert "empty in every CI" not in mapped.stdout and "not among" not in mapped.stdout
        (tmp_path / "my-mappings" / "cmdb_ci_key_pair.toml").write_text(
            walkthrough_file().replace('"KeyFingerprint"', '"KeyFingerPrint"'))  # the README's example of a typo
        typo = cli("map", "--inventory", "inventory.jsonl", "--class", "cmdb_ci_key_pair")
        assert "  empty in every CI: fingerprint (a path or tag that matches nothing?)" in typo.stdout
        (tmp_path / "my-mappings" / "cmdb_ci_key_pair.toml").write_text(walkthrough_file())
        # 7. plan, then run
        planned = cli("plan")
        assert planned.returncode == 0, planned.stderr
        assert sn.writes() == 0
        ran = cli("run")
        assert ran.returncode == 0, ran.stderr
        (pair,) = sn.store.rows("cmdb_ci_key_pair")
        assert (pair["name"], pair["object_id"], pair["key_type"]) == ("deploy", key_id, "rsa")
        assert pair["correlation_id"] == f"arn:aws:ec2:us-east-1:{account}:key-pair/deploy"
        assert pair["fingerprint"]
        dc = next(r for r in sn.store.rows("cmdb_ci_aws_datacenter") if f":{account}:" in r["correlation_id"])
        types = {r["sys_id"]: r["name"] for r in sn.store.rows("cmdb_rel_type")}
        assert any(r["parent"] == pair["sys_id"] and r["child"] == dc["sys_id"] and types[r["type"]] == "Hosted on::Hosts"
                   for r in sn.store.rows("cmdb_rel_ci"))
        # ... and one deleted in AWS is retired by the next run
        ec2.delete_key_pair(KeyName="deploy")
        again = cli("run", "--force")  # one of one key pairs: past the blast-radius guard on purpose
        assert again.returncode == 0, again.stderr
        assert sn.store.rows("cmdb_ci_key_pair")[0]["install_status"] == "7"


def test_a_typo_in_the_new_file_is_named_and_nothing_is_written(tmp_path):
    with ServiceNowStandIn(users={"svc": "pw-walk"}) as sn:
        env = {**os.environ, "CMDB_AWS__EXTERNAL_ID": "walkthrough-ext", "CMDB_SERVICENOW__PASSWORD": "pw-walk"}
        subprocess.run([*CLI, "init-mappings", "my-mappings"], cwd=tmp_path, env=env, check=True, capture_output=True)
        broken = walkthrough_file().replace('name = "KeyName"', 'name = { path = "KeyName", transform = ["uppercase"] }')
        assert broken != walkthrough_file()
        (tmp_path / "my-mappings" / "cmdb_ci_key_pair.toml").write_text(broken)
        (tmp_path / "config.toml").write_text(
            f'[aws]\nregions = ["us-east-1"]\n\n[servicenow]\ninstance_url = "{sn.url}"\nusername = "svc"\n\n'
            '[reconcile]\nmappings_dir = "my-mappings"\n')
        proc = subprocess.run([*CLI, "run"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 2
        assert "cmdb_ci_key_pair.toml" in proc.stderr and "unknown transform 'uppercase'" in proc.stderr
        assert "Traceback" not in proc.stderr and sn.writes() == 0
