"""End to end, across real HTTP: the CLI as a subprocess, a moto server behind the
STS front for AWS, and the ServiceNow stand-in.

The Organization has three accounts: the management account, "alpha", and
"bravo" whose CMDBReadRole refuses AssumeRole (as a missing role would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from connector.mapping.load import load_mappings
from connector.sandbox.aws import AwsSandbox, RegionPlan, account_credentials, seed_organization, terminate_instance
from connector.sandbox.servicenow import ServiceNowStandIn

pytestmark = pytest.mark.e2e

EXTERNAL_ID = "e2e-external-id-7f3a"
PASSWORD = "e2e-Passw0rd-9c1d"
REGIONS = ["us-east-1", "eu-west-1"]
DS = "AWS CMDB Connector"
CLI = [sys.executable, "-m", "connector.cli"]


@pytest.fixture
def world(tmp_path):
    with AwsSandbox(external_id=EXTERNAL_ID) as aws, ServiceNowStandIn(users={"svc_cmdb": PASSWORD}) as sn:
        org = seed_organization(aws.moto_url, ["alpha", "bravo"], REGIONS, RegionPlan(vpcs=1, subnets_per_vpc=2, instances_per_subnet=2))
        aws.deny(org.accounts["bravo"])
        config = tmp_path / "config.toml"
        config.write_text(
            f'[aws]\nregions = {json.dumps(REGIONS)}\n\n'
            f'[servicenow]\ninstance_url = "{sn.url}"\nusername = "svc_cmdb"\n\n'
            '[report]\noutput_dir = "reports"\n'
        )
        yield aws, sn, org, config


def cli_env(endpoint: str) -> dict[str, str]:
    """The environment of a CLI run against the sandbox: its endpoint, the central keys, the secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CMDB_"))}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="AKIDE2ECENTRAL",
        AWS_SECRET_ACCESS_KEY="e2e-central-secret",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        CMDB_AWS__EXTERNAL_ID=EXTERNAL_ID,
        CMDB_SERVICENOW__PASSWORD=PASSWORD,
    )
    return env


def run_cli(endpoint: str, config: Path, *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run([*CLI, "--config", str(config), *args], capture_output=True, text=True,
                          env=cli_env(endpoint), timeout=300)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    for secret in (EXTERNAL_ID, PASSWORD, "e2e-central-secret"):
        assert secret not in output
    report_path = next(line.split("report: ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("report: "))
    text = Path(report_path).read_text()
    written = [Path(report_path).with_suffix(s).read_text() for s in (".html", ".csv")]
    written.append((Path(report_path).parent / "cmdb_connector.prom").read_text())
    for secret in (EXTERNAL_ID, PASSWORD, "e2e-central-secret"):
        assert secret not in text and not any(secret in w for w in written)
    return proc.returncode, json.loads(text), output


def cis(sn: ServiceNowStandIn, table: str = "cmdb_ci") -> list[dict]:
    return [dict(r) for r in sn.store.rows(table)]


def of_account(rows: list[dict], account: str) -> list[dict]:
    """The CIs of an account's resources (the Organization and its OUs, in the management account's
    scope, are tested in test_organization.py)."""
    return [r for r in rows if f":{account}:" in r["correlation_id"] and ":organizations::" not in r["correlation_id"]]


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["correlation_id"]: r for r in rows}


def relation_keys(sn: ServiceNowStandIn) -> set[tuple[str, str, str]]:
    types = {r["sys_id"]: r["name"] for r in sn.store.rows("cmdb_rel_type")}
    keys = {r["sys_id"]: r["correlation_id"] for r in sn.store.rows("cmdb_ci")}
    return {(keys[r["parent"]], types[r["type"]], keys[r["child"]]) for r in sn.store.rows("cmdb_rel_ci")}


def assert_account_in_cmdb(sn, org, account: str, name: str) -> None:
    rows = of_account(cis(sn), account)
    tables = sorted({r["sys_class_name"] for r in rows})
    # what moto makes in every account and region (default VPC, security groups, zones,
    # an ENI and a root volume per instance), as real AWS does
    assert tables == ["cmdb_ci_availability_zone", "cmdb_ci_aws_datacenter", "cmdb_ci_cloud_service_account",
                      "cmdb_ci_cloud_subnet", "cmdb_ci_compute_security_group", "cmdb_ci_network", "cmdb_ci_nic",
                      "cmdb_ci_storage_volume", "cmdb_ci_vm_instance"]
    assert all(r["discovery_source"] == DS and r["install_status"] == "1" and r["operational_status"] == "1" for r in rows)
    keyed = by_key(rows)
    acct = keyed[f"arn:aws:iam::{account}:root"]
    assert (acct["sys_class_name"], acct["account_id"], acct["object_id"], acct["name"]) == (
        "cmdb_ci_cloud_service_account", account, account, name)
    assert acct["is_master_account"] == ("true" if account == org.management_account else "false")
    rels = relation_keys(sn)
    for region in REGIONS:
        dc_key = f"arn:aws:ec2:{region}:{account}:region/{region}"
        assert (keyed[dc_key]["region"], keyed[dc_key]["object_id"]) == (region, region)
        assert (dc_key, "Hosted on::Hosts", f"arn:aws:iam::{account}:root") in rels
        vms = [r for r in rows if r["sys_class_name"] == "cmdb_ci_vm_instance" and f":{region}:" in r["correlation_id"]]
        assert sorted(r["object_id"] for r in vms) == sorted(org.instances[(account, region)])
        for vm in vms:
            assert vm["state"] == "on" and vm["ip_address"] and vm["vm_inst_id"] == vm["object_id"]
            # a t3.micro's vCPUs and memory, from moto's describe_instance_types ([source.join])
            assert (vm["cpus"], vm["memory"]) == ("2", "1024")
            assert (vm["disks"], vm["nics"]) == ("1", "1")  # moto's root volume and primary interface
            # the size of its volumes (describe_volumes, the second [[source.join]]), as the volume CIs tell it
            volumes = [c for p, t, c in rels if p == vm["correlation_id"] and ":volume/" in c]
            assert len(volumes) == 1 and vm["disks_size"] == keyed[volumes[0]]["size"] != ""
            assert vm["correlation_id"] == f"arn:aws:ec2:{region}:{account}:instance/{vm['object_id']}"
            assert (vm["correlation_id"], "Hosted on::Hosts", dc_key) in rels
            zone = f"arn:aws:ec2:{region}:{account}:availability-zone/"
            assert any(p == vm["correlation_id"] and t == "Located in::Houses" and c.startswith(zone) for p, t, c in rels)
        label = "management" if account == org.management_account else name
        vpc = next(r for r in rows if r["sys_class_name"] == "cmdb_ci_network" and r["name"] == f"{label}-vpc-0"
                   and f":{region}:" in r["correlation_id"])
        assert vpc["cidr"] == "10.0.0.0/16"
        assert (vpc["correlation_id"], "Hosted on::Hosts", dc_key) in rels
        subnets = [r for r in rows if r["sys_class_name"] == "cmdb_ci_cloud_subnet" and r["name"].startswith(f"{label}-subnet-0-")
                   and f":{region}:" in r["correlation_id"]]
        assert sorted(s["cidr"] for s in subnets) == ["10.0.0.0/24", "10.0.1.0/24"]
        for subnet in subnets:
            assert (vpc["correlation_id"], "Contains::Contained by", subnet["correlation_id"]) in rels


def test_run_reconciles_the_organization_and_keeps_the_denied_account_untouched(world):
    aws, sn, org, config = world
    alpha, bravo, mgmt = org.accounts["alpha"], org.accounts["bravo"], org.management_account

    # 1. First run: two good accounts land in the CMDB; the denied one is reported, nothing written for it.
    code, report, output = run_cli(aws.url, config, "run")
    assert code == 3, output
    status = {a["account_id"]: a for a in report["accounts"]}
    assert status[bravo]["status"] == "denied" and "AccessDenied" in status[bravo]["error"]
    assert status[alpha]["status"] == "ok" and status[mgmt]["status"] == "ok"
    assert report["exit_code"] == 3 and report["mode"] == "run"
    assert_account_in_cmdb(sn, org, mgmt, "master")
    assert_account_in_cmdb(sn, org, alpha, "alpha")
    assert of_account(cis(sn), bravo) == []
    assert aws.assume_role_calls[bravo] == 1 and aws.assume_role_calls[alpha] == 1
    created = sum(t["created"] for t in report["tables"].values())
    assert created == len(cis(sn)) and report["relations"]["created"] == len(sn.store.rows("cmdb_rel_ci"))
    assert f"run {report['run_id']} run: exit 3" in output  # the one-line summary
    vms = report["tables"]["cmdb_ci_vm_instance"]["created"]
    assert "changed:\n" in output and f"\n  cmdb_ci_vm_instance: {vms} created\n" in output  # per class, on stdout
    # where the time went, stage by stage
    assert set(report["timings"]) == {"collect", "map", "read", "plan", "apply"}
    assert all(isinstance(s, float) and s >= 0 for s in report["timings"].values())
    assert set(report["cpu_timings"]) == set(report["timings"]) and report["cpu_timings"]["map"] > 0

    # 2. Second run, nothing changed in AWS: zero writes.
    writes = sn.writes()
    code, report, output = run_cli(aws.url, config, "run")
    assert code == 3, output
    assert sn.writes() == writes
    assert report["changes"] == []
    assert sum(t["unchanged"] for t in report["tables"].values()) == created
    assert "changed:" not in output  # no list of changes when there are none

    # 3. bravo's role comes back: its CIs are created.
    aws.allow(bravo)
    code, report, output = run_cli(aws.url, config, "run")
    assert code == 0, output
    assert_account_in_cmdb(sn, org, bravo, "bravo")

    # 4. bravo is denied again; one instance is terminated in alpha and one in bravo.
    aws.deny(bravo)
    gone_alpha = org.instances[(alpha, "us-east-1")][0]
    gone_bravo = org.instances[(bravo, "eu-west-1")][0]
    terminate_instance(aws.moto_url, alpha, "us-east-1", gone_alpha)
    terminate_instance(aws.moto_url, bravo, "eu-west-1", gone_bravo)
    bravo_before = sorted(of_account(cis(sn), bravo), key=lambda r: r["sys_id"])

    code, report, output = run_cli(aws.url, config, "run")
    assert code == 3, output
    retired = by_key(cis(sn))[f"arn:aws:ec2:us-east-1:{alpha}:instance/{gone_alpha}"]
    assert (retired["install_status"], retired["operational_status"]) == ("7", "6")
    changes = [(c["action"], c["table"], c["identity"]) for c in report["changes"]]
    assert ("retire", "cmdb_ci_vm_instance", f"arn:aws:ec2:us-east-1:{alpha}:instance/{gone_alpha}") in changes
    # retired: the instance, and with it whatever AWS removed along (its ENI, its root volume), nothing else
    assert {a for a, _t, _i in changes} <= {"retire", "delete"}
    assert {t for a, t, _i in changes if a == "retire"} <= {"cmdb_ci_vm_instance", "cmdb_ci_nic", "cmdb_ci_storage_volume"}
    assert all(f":{alpha}:" in i for _a, t, i in changes if t != "cmdb_rel_ci")
    assert report["tables"]["cmdb_ci_vm_instance"]["retired"] == 1
    # unknown is not empty: bravo's records are exactly as they were, its terminated instance included
    assert sorted(of_account(cis(sn), bravo), key=lambda r: r["sys_id"]) == bravo_before
    assert by_key(cis(sn))[f"arn:aws:ec2:eu-west-1:{bravo}:instance/{gone_bravo}"]["install_status"] == "1"


def test_plan_writes_nothing_and_predicts_the_run(world):
    aws, sn, org, config = world
    code, planned, output = run_cli(aws.url, config, "plan")
    assert code == 3, output
    assert sn.writes() == 0 and cis(sn) == []
    assert planned["mode"] == "plan" and all(c["status"] == "planned" for c in planned["changes"])
    assert "apply" not in planned["timings"] and "plan" in planned["timings"]
    code, ran, output = run_cli(aws.url, config, "run")
    assert code == 3
    assert planned["tables"] == ran["tables"] and planned["relations"] == ran["relations"]
    assert sorted((c["action"], c["table"], c["identity"]) for c in planned["changes"]) == sorted(
        (c["action"], c["table"], c["identity"]) for c in ran["changes"])


def test_tags_from_aws_mirror_in_cmdb_key_value(world):
    aws, sn, org, config = world
    config.write_text(config.read_text() + "\n[reconcile]\ntags = true\n")
    code, planned, output = run_cli(aws.url, config, "plan")
    code, report, output = run_cli(aws.url, config, "run")
    assert code == 3, output
    keys = {r["sys_id"]: r["correlation_id"] for r in sn.store.rows("cmdb_ci")}
    tags = {(keys[r["configuration_item"]], r["key"]): r["value"] for r in sn.store.rows("cmdb_key_value")}
    assert len(tags) == len(sn.store.rows("cmdb_key_value")) == report["key_values"]["created"] > 0
    alpha = org.accounts["alpha"]
    for region in REGIONS:
        for instance in org.instances[(alpha, region)]:  # the Name tag each instance was launched with
            assert tags[(f"arn:aws:ec2:{region}:{alpha}:instance/{instance}", "Name")].startswith("alpha-app-")
    assert all(f":{org.accounts['bravo']}:" not in arn for arn, _key in tags)  # denied: nothing read, nothing written
    kv = sorted((c["action"], c["identity"]) for c in report["changes"] if c["table"] == "cmdb_key_value")
    assert kv == sorted((c["action"], c["identity"]) for c in planned["changes"] if c["table"] == "cmdb_key_value")
    writes = sn.writes()
    code, again, output = run_cli(aws.url, config, "run")
    assert again["changes"] == [] and sn.writes() == writes
    assert again["key_values"]["unchanged"] == len(tags)


def test_tags_of_every_tagged_class_reach_cmdb_key_value(tmp_path):
    """The simulated Organization tags one of each service; each API gives its tags its own way."""
    from connector.run import run_pipeline
    from connector.sandbox.demo import sandboxes
    from connector.settings import load_settings

    with sandboxes(members=["alpha"]) as boxes:
        management = boxes.org.management_account
        boto3.client("s3", endpoint_url=boxes.aws.moto_url, region_name="us-east-1",
                     **account_credentials(boxes.aws.moto_url, management)).delete_bucket_tagging(
            Bucket="management-artifacts-us-east-1")  # S3 now answers NoSuchTagSet for it
        settings = load_settings(None, {**boxes.settings_data(tmp_path / "reports"), "reconcile": {"tags": True}})
        outcome = run_pipeline(settings)
        assert outcome.exit_code == 0, outcome.report["errors"]
        sn = boxes.servicenow
        ci = {r["sys_id"]: r for r in sn.store.rows("cmdb_ci")}
        team = {(ci[r["configuration_item"]]["sys_class_name"], ci[r["configuration_item"]]["name"])
                for r in sn.store.rows("cmdb_key_value") if r["key"] == "team" and r["value"] == "alpha"}
        assert team == {
            ("cmdb_ci_cloud_object_storage", "alpha-artifacts-us-east-1"),  # get_bucket_tagging, per bucket
            ("cmdb_ci_dynamodb_table", "alpha-orders"),                     # list_tags_of_resource, per table
            ("cmdb_ci_cloud_database", "alpha-db"),                         # TagList in the listing
            ("cmdb_ci_cloud_load_balancer", "alpha-alb"),                   # elbv2 describe_tags
            ("cmdb_ci_cloud_load_balancer", "alpha-classic"),               # elb describe_tags
            ("cmdb_ci_cloud_function", "alpha-worker"),                     # list_tags, an object
            ("cmdb_ci_kubernetes_cluster", "alpha-k8s"),                    # tags in describe_cluster
        }
        bucket = next(r for r in ci.values() if r["name"] == "management-artifacts-us-east-1")
        assert not [r for r in sn.store.rows("cmdb_key_value") if r["configuration_item"] == bucket["sys_id"]]
        writes = sn.writes()
        again = run_pipeline(settings)
        assert again.exit_code == 0 and again.report["changes"] == [] and sn.writes() == writes


def test_wrong_external_id_is_denied_everywhere(world, tmp_path):
    aws, sn, org, config = world
    aws.set_external_id("some-other-id")
    code, report, output = run_cli(aws.url, config, "run")
    assert code == 1  # nothing collected at all: failed, not partial
    assert {a["status"] for a in report["accounts"]} == {"denied"}
    assert report["errors"] == ["nothing was collected: no scope of any targeted account was read in full (see the "
                                "accounts and scopes), so no CI was written or retired"]
    assert cis(sn) == []
    inventory = tmp_path / "inventory.jsonl"
    proc = subprocess.run([*CLI, "--config", str(config), "collect", "--output", str(inventory)],
                          capture_output=True, text=True, env={**os.environ, "AWS_ENDPOINT_URL": aws.url,
                          "CMDB_AWS__EXTERNAL_ID": EXTERNAL_ID, "CMDB_SERVICENOW__PASSWORD": PASSWORD})
    assert proc.returncode == 1 and "failed: nothing was collected" in proc.stderr, proc.stderr
    assert inventory.exists()  # written all the same: its accounts say why


def test_demo_command_works_from_any_folder(tmp_path):
    script = Path(sys.executable).parent / "cmdb-connector"
    command = [str(script)] if script.exists() else CLI
    proc = subprocess.run([*command, "demo"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report_line = [line for line in proc.stdout.splitlines() if line.startswith("report: ")]
    report = json.loads(Path(report_line[0].split(": ", 1)[1]).read_text())
    assert Path(report_line[0].split(": ", 1)[1]).parent == tmp_path / "reports"
    assert report["exit_code"] == 0 and len(report["accounts"]) == 4
    assert report["tables"]["cmdb_ci_vm_instance"]["created"] > 0
    assert "  AWS Organization: 4 accounts in 4 OUs, regions us-east-1 and eu-west-1\n" in proc.stdout
    assert report["tables"]["cmdb_ci_aws_org_unit"]["created"] == 4 and report["tables"]["cmdb_ci_cloud_org"]["created"] == 1
    assert "created" in proc.stdout and "Traceback" not in proc.stderr
    created = report["tables"]["cmdb_ci_vm_instance"]["created"]
    assert "changed:\n" in proc.stdout and f"\n  cmdb_ci_vm_instance: {created} created\n" in proc.stdout
    html = [line for line in proc.stdout.splitlines() if line.startswith("html: ")]
    assert Path(html[0].split(": ", 1)[1]).read_text().startswith("<!DOCTYPE html>")
    # Again, in the same folder: a new stand-in, so the same creates are no writes that did not stick.
    again = subprocess.run([*command, "demo"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "warning(s)" not in again.stdout, again.stdout + again.stderr


def test_collected_inventory_reconciles_like_live_aws(world, tmp_path):
    aws, sn, org, config = world
    inventory = tmp_path / "inventory.jsonl"
    proc = subprocess.run([*CLI, "--config", str(config), "collect", "--output", str(inventory)],
                          capture_output=True, text=True, env={**os.environ, "AWS_ENDPOINT_URL": aws.url,
                          "CMDB_AWS__EXTERNAL_ID": EXTERNAL_ID, "CMDB_SERVICENOW__PASSWORD": PASSWORD})
    assert proc.returncode == 3, proc.stderr
    lines = [json.loads(line) for line in inventory.read_text().splitlines()]
    scopes = [line for line in lines if line["kind"] == "scope"]
    assert {s["status"] for s in scopes} == {"ok"}
    assert any(line["kind"] == "resource" and line["source"] == "ec2:instance" for line in lines)
    assert EXTERNAL_ID not in inventory.read_text()
    # reconcile from the file, with AWS out of reach
    endpoint = aws.url
    aws.stop()
    code, report, output = run_cli(endpoint, config, "run", "--inventory", str(inventory))
    assert code == 3, output  # the denied account is in the inventory as denied
    denied = [a for a in report["accounts"] if a["status"] == "denied"]
    assert [a["account_id"] for a in denied] == [org.accounts["bravo"]]
    assert_account_in_cmdb(sn, org, org.accounts["alpha"], "alpha")
    assert of_account(cis(sn), org.accounts["bravo"]) == []


def test_servicenow_unreachable_fails_with_exit_1_and_a_report(world):
    aws, sn, org, config = world
    sn.stop()
    config.write_text(config.read_text().replace('username = "svc_cmdb"', 'username = "svc_cmdb"\nmax_attempts = 2'))
    code, report, output = run_cli(aws.url, config, "run")
    assert code == 1
    assert report["exit_code"] == 1 and any("cannot reach ServiceNow" in e for e in report["errors"])
    assert "cannot reach ServiceNow" in output and "Traceback" not in output


def test_bad_mapping_folder_exits_2_naming_file_and_key(world, tmp_path):
    aws, sn, org, config = world
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "cmdb_ci_network.toml").write_text('[source]\nname = "ec2:vpc"\nid = "VpcId"\n[fields]\ncorrelation_id = "VpcId"\nnme = "Tags[?"\n')
    config.write_text(config.read_text() + f'\n[reconcile]\nmappings_dir = "{folder}"\n')
    for command in ("validate", "run"):
        proc = subprocess.run([*CLI, "--config", str(config), command], capture_output=True, text=True,
                              env={**os.environ, "CMDB_AWS__EXTERNAL_ID": EXTERNAL_ID, "CMDB_SERVICENOW__PASSWORD": PASSWORD})
        assert proc.returncode == 2
        assert f"{folder}/cmdb_ci_network.toml: source: kind = 'api' needs service, operation, items" in proc.stderr
        assert f"{folder}/cmdb_ci_network.toml: fields.nme: JMESPath does not compile" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert sn.writes() == 0


def test_sandbox_command_serves_until_interrupted(tmp_path):
    import signal

    import requests

    script = Path(sys.executable).parent / "cmdb-connector"
    command = [str(script)] if script.exists() else CLI
    proc = subprocess.Popen([*command, "sandbox", "--db", str(tmp_path / "cmdb.sqlite")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        exports = {}
        for line in proc.stdout:
            if line.strip().startswith("export "):
                for part in line.strip()[len("export "):].split():
                    name, _, value = part.partition("=")
                    exports[name] = value.strip("'")
            if line.startswith("Accounts:"):
                break
        url = exports["CMDB_SERVICENOW__INSTANCE_URL"]
        assert url.startswith("http://127.0.0.1:")
        auth = (exports["CMDB_SERVICENOW__USERNAME"], exports["CMDB_SERVICENOW__PASSWORD"])
        assert requests.get(f"{url}/api/now/table/cmdb_rel_type", auth=auth).status_code == 200
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err
    assert (tmp_path / "cmdb.sqlite").exists()


def test_check_access_prints_the_table_and_exits_3_for_a_denied_account(world):
    aws, sn, org, config = world
    env = {**os.environ, "AWS_ENDPOINT_URL": aws.url, "AWS_ACCESS_KEY_ID": "AKIDE2ECENTRAL",
           "AWS_SECRET_ACCESS_KEY": "e2e-central-secret", "CMDB_AWS__EXTERNAL_ID": EXTERNAL_ID,
           "CMDB_SERVICENOW__PASSWORD": PASSWORD}
    proc = subprocess.run([*CLI, "--config", str(config), "check-access"], capture_output=True, text=True, env=env)
    assert proc.returncode == 3, proc.stderr
    aws_part, servicenow_part = proc.stdout.split("\n\n")
    lines = aws_part.splitlines()
    assert lines[0].split() == ["ACCOUNT", "NAME", "STATUS", "EXTERNAL_ID", "REASON"]
    bravo = next(line for line in lines if line.startswith(org.accounts["bravo"]))
    assert " denied " in bravo and "AccessDenied" in bravo
    assert any(line.startswith(org.accounts["alpha"]) and " ok " in line for line in lines)
    assert "hint: the role is missing" in proc.stdout
    assert lines[-2] == "3 account(s): 2 ok, 0 skipped, 1 failed"
    assert lines[-1] == "organization: 0 OU(s) read, and the parent of 3 account(s)"
    # then the ServiceNow side: every table a run reads, read by the connector's user
    assert servicenow_part.startswith(f"servicenow: {sn.url} as svc_cmdb (basic)\n")
    assert ", 0 failed. Writes are not tried" in servicenow_part
    assert EXTERNAL_ID not in proc.stdout + proc.stderr
    assert sn.writes() == 0
    # --calls: each listing the mappings name, once in each account whose role was assumed and each region
    # (a global one once), over moto's HTTP
    proc = subprocess.run([*CLI, "--config", str(config), "check-access", "--aws-only", "--calls"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 3, proc.stderr  # bravo is still denied; its calls are not made
    api = [s for s in load_mappings().sources.values() if s.kind == "api"]
    listings = {(s.service, s.operation) for s in api}
    # the instances' types and volumes (describe_volumes is also the volumes' listing: made both ways)
    joins = {(s.service, j.operation) for s in api for j in s.joins}
    made = len({(s.service, s.operation) for s in api if s.scope == "global"}) + len(REGIONS) * (
        len({(s.service, s.operation) for s in api if s.scope != "global"}) + len(joins))
    regions = len(set(REGIONS) | {"us-east-1"})  # the default region, for the global listings
    assert proc.stdout.splitlines()[-1] == (f"calls: {len(listings)} listing(s) and {len(joins - listings)} joined "
                                            f"call(s) in 2 account(s) and {regions} region(s): {2 * made} allowed, 0 "
                                            "refused or failed")


def test_shards_split_the_organization_without_overlap(world):
    aws, sn, org, config = world
    aws.allow(org.accounts["bravo"])
    seen = []
    for shard in ("1/2", "2/2"):
        code, report, output = run_cli(aws.url, config, "run", "--shard", shard)
        assert code == 0, output
        seen.extend(a["account_id"] for a in report["accounts"])
    assert sorted(seen) == sorted(org.accounts.values())
    for account, name in ((org.management_account, "master"), (org.accounts["alpha"], "alpha"), (org.accounts["bravo"], "bravo")):
        assert_account_in_cmdb(sn, org, account, name)
    # a rerun of one shard changes nothing, and retires nothing of the other shard's accounts
    writes = sn.writes()
    code, report, _ = run_cli(aws.url, config, "run", "--shard", "1/2")
    assert code == 0 and report["changes"] == [] and sn.writes() == writes


def test_a_run_of_one_account_leaves_the_others_as_they_are(world):
    """run --account: that account alone is collected and reconciled; an instance gone from another is not
    retired by it (that account was not collected), and a run of every account then retires it."""
    aws, sn, org, config = world
    aws.allow(org.accounts["bravo"])
    alpha, bravo = org.accounts["alpha"], org.accounts["bravo"]
    code, _report, output = run_cli(aws.url, config, "run")
    assert code == 0, output
    gone_alpha, gone_bravo = org.instances[(alpha, "us-east-1")][0], org.instances[(bravo, "eu-west-1")][0]
    terminate_instance(aws.moto_url, alpha, "us-east-1", gone_alpha)
    terminate_instance(aws.moto_url, bravo, "eu-west-1", gone_bravo)
    bravo_before = sorted(of_account(cis(sn), bravo), key=lambda r: r["sys_id"])

    code, report, output = run_cli(aws.url, config, "run", "--account", alpha)
    assert code == 0, output
    assert [a["account_id"] for a in report["accounts"]] == [alpha]
    assert {s["account_id"] for s in report["scopes"]} == {alpha}
    assert report["tables"]["cmdb_ci_vm_instance"]["retired"] == 1
    assert all(f":{alpha}:" in c["identity"] for c in report["changes"] if c["table"] != "cmdb_rel_ci")
    assert by_key(cis(sn))[f"arn:aws:ec2:us-east-1:{alpha}:instance/{gone_alpha}"]["install_status"] == "7"
    assert sorted(of_account(cis(sn), bravo), key=lambda r: r["sys_id"]) == bravo_before  # untouched
    assert report["untargeted_accounts"] == []  # bravo is targeted, by another run: not named as left behind

    code, report, output = run_cli(aws.url, config, "run")
    assert code == 0, output
    assert by_key(cis(sn))[f"arn:aws:ec2:eu-west-1:{bravo}:instance/{gone_bravo}"]["install_status"] == "7"
    retired = [c["identity"] for c in report["changes"] if c["action"] == "retire" and c["table"] == "cmdb_ci_vm_instance"]
    assert retired == [f"arn:aws:ec2:eu-west-1:{bravo}:instance/{gone_bravo}"]

    proc = subprocess.run([*CLI, "--config", str(config), "plan", "--account", "999999999999"],
                          capture_output=True, text=True, env=cli_env(aws.url), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--account 999999999999: not an account the configuration targets" in proc.stderr
