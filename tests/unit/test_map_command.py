"""`cmdb-connector map`: what the mapping files make of a saved inventory, offline, for whoever edits them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from connector.cli import main
from connector.inventory import write_inventory
from connector.mapping.load import builtin_mappings_dir, load_mappings
from connector.mapping.preview import preview, preview_lines
from connector.mapping.transform import map_inventory
from connector.models import Record
from connector.sandbox.synthetic import synthetic_inventory


@pytest.fixture
def inventory_file(tmp_path) -> Path:
    inventory = synthetic_inventory(accounts=2, regions=("us-east-1",), vpcs=1, subnets=2, instances=3)
    # a source no mapping file reads (its file removed, say)
    inventory.records.append(Record("100000000000", "us-east-1", "ec2:snapshot", {"SnapshotId": "snap-1"}))
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    return path


def edited_mappings(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """The built-in mapping files, with ``edits``: file name -> (text, replacement)."""
    folder = tmp_path / "mappings"
    shutil.copytree(builtin_mappings_dir(), folder)
    for name, (old, new) in edits.items():
        text = (folder / name).read_text()
        assert old in text
        (folder / name).write_text(text.replace(old, new))
    return folder


def test_a_clean_inventory_gives_each_class_its_counts_and_nothing_to_look_at(tmp_path, inventory_file, capsys):
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(builtin_mappings_dir()),
                 "--class", "cmdb_ci_network", "--class", "cmdb_ci_cloud_subnet", "--tags"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"mappings: {builtin_mappings_dir()} (18 files), tags on; inventory: {inventory_file} "
                             "(23 resources, 10 scopes)")
    assert "cmdb_ci_network: 2 CI(s), 2 relation(s), 2 with tags (cmdb_ci_network.toml)" in out
    assert "cmdb_ci_cloud_subnet: 4 CI(s), 8 relation(s) (cmdb_ci_cloud_subnet.toml)" in out
    assert not any(line.startswith("cmdb_ci_vm_instance") for line in out)  # not asked for
    # the synthetic subnets have no AvailabilityZone: their relation to it is named as left out
    assert ("  Contains::Contained by -> cmdb_ci_availability_zone: no target identity for 4 CI(s) (left without "
            "it: a path in its identity template that matches nothing?)") in out
    assert "source ec2:snapshot: 1 resource(s) in the inventory that no mapping file reads" in out


def test_a_path_that_matches_nothing_a_wrong_target_and_an_empty_identity_are_named(tmp_path, inventory_file, capsys):
    folder = edited_mappings(tmp_path, {
        "cmdb_ci_vm_instance.toml": ('ip_address = "PrivateIpAddress"', 'ip_address = "PrivateIpAdress"'),
        "cmdb_ci_cloud_subnet.toml": (":vpc/{VpcId}", ":vpcs/{VpcId}"),
        "cmdb_ci_network.toml": ('correlation_id = { template = "arn:{$partition}:ec2:{$region}:{$account_id}:vpc/{VpcId}" }',
                                 'correlation_id = { path = "VpcArn" }'),
    })
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(folder)]) == 1  # items not mapped
    out = capsys.readouterr().out.splitlines()
    assert "  empty in every CI: ip_address (a path or tag that matches nothing?)" in out
    assert ("  Contains::Contained by -> cmdb_ci_network: 4 target(s) not among this inventory's CIs, e.g. "
            "arn:aws:ec2:us-east-1:100000000000:subnet/subnet-000000000000 -> arn:aws:ec2:us-east-1:100000000000:"
            "vpcs/vpc-00000000 (written only if the CMDB holds it already: check the identity template)") in out
    assert "cmdb_ci_network: 0 CI(s), 0 relation(s) (cmdb_ci_network.toml)" in out
    assert "  not mapped: 2 item(s), e.g. cmdb_ci_network.toml: correlation_id is empty for item 'vpc-00000000'" in out


def test_fields_empty_in_some_cis_are_counted(tmp_path):
    inventory = synthetic_inventory(accounts=1, regions=("us-east-1",), vpcs=1, subnets=1, instances=4)
    instances = [r for r in inventory.records if r.source == "ec2:instance"]
    del instances[0].resource["PrivateIpAddress"]
    mappings = load_mappings()
    sources = Counter(record.source for record in inventory.records)
    lines = preview_lines(preview(sources, mappings, map_inventory(inventory, mappings), {"cmdb_ci_vm_instance"}))
    assert lines[0] == "cmdb_ci_vm_instance: 4 CI(s), 4 relation(s) (cmdb_ci_vm_instance.toml)"
    assert "  empty in some CIs: ip_address 1/4" in lines


def test_output_writes_every_ci_as_it_would_be_written(tmp_path, inventory_file, capsys):
    target = tmp_path / "out" / "cis.jsonl"
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(builtin_mappings_dir()),
                 "--class", "cmdb_ci_vm_instance", "--output", str(target)]) == 0
    assert f"CIs: {target} (12)" in capsys.readouterr().out
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 12 and {row["class"] for row in rows} == {"cmdb_ci_vm_instance"}
    first = rows[0]
    assert first["identity"] == "arn:aws:ec2:us-east-1:100000000000:instance/i-000000000000000000"
    assert (first["account_id"], first["region"], first["source"]) == ("100000000000", "us-east-1", "ec2:instance")
    assert first["fields"]["state"] == "on" and first["fields"]["ip_address"] == "10.0.0.4"
    assert first["relations"] == [{"type": "Hosted on::Hosts", "class": "cmdb_ci_aws_datacenter",
                                   "identity": "arn:aws:ec2:us-east-1:100000000000:region/us-east-1", "role": "parent"}]
    assert "tags" not in first  # tags off: not managed, not shown


def test_output_to_standard_output_keeps_the_summary_on_standard_error(inventory_file, capsys):
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(builtin_mappings_dir()),
                 "--class", "cmdb_ci_network", "--tags", "--output", "-"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["tags"] for row in rows] == [{"Name": "vpc-0"}, {"Name": "vpc-0"}]
    assert "cmdb_ci_network: 2 CI(s)" in captured.err


def test_usage_mistakes_are_named(tmp_path, inventory_file, monkeypatch, capsys):
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(builtin_mappings_dir()),
                 "--class", "cmdb_ci_vm_instanc"]) == 2
    assert ("--class cmdb_ci_vm_instanc: no mapping file defines this class (did you mean 'cmdb_ci_vm_instance'"
            in capsys.readouterr().err)
    assert main(["map", "--inventory", str(tmp_path / "none.jsonl"), "--mappings", str(builtin_mappings_dir())]) == 2
    assert "none.jsonl: cannot read the inventory" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CMDB_CONFIG", raising=False)
    assert main(["map", "--inventory", str(inventory_file)]) == 2
    assert "Or pass --mappings DIR: map needs only the mapping files." in capsys.readouterr().err


def test_the_config_gives_the_mapping_folder_and_tags(tmp_path, inventory_file, monkeypatch, capsys):
    folder = edited_mappings(tmp_path, {})
    (folder / "cmdb_ci_nic.toml").unlink()
    config = tmp_path / "config.toml"
    config.write_text(f'[servicenow]\ninstance_url = "http://127.0.0.1:9"\nusername = "u"\n'
                      f'[reconcile]\ntags = true\nmappings_dir = "{folder}"\n')
    monkeypatch.setenv("CMDB_AWS__EXTERNAL_ID", "xx-yy")
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", "p")
    assert main(["map", "--config", str(config), "--inventory", str(inventory_file), "--class", "cmdb_ci_network"]) == 0
    out = capsys.readouterr().out
    assert f"mappings: {folder} (17 files), tags on" in out
    assert "2 with tags" in out


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`map --output - | head`: no traceback, no 'Broken pipe' message, once the reader has gone."""
    inventory = synthetic_inventory(accounts=4, regions=("us-east-1",), vpcs=2, subnets=2, instances=100)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    command = [sys.executable, "-m", "connector.cli", "map", "--inventory", str(path),
               "--mappings", str(builtin_mappings_dir()), "--output", "-"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(100).startswith(b'{"class": ')
    process.stdout.close()  # as head does, long before the 1,600 CIs are written
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err == b""


def test_a_field_one_file_of_a_class_maps_is_not_counted_empty_in_the_cis_of_its_other_file(tmp_path):
    """cmdb_ci_cloud_load_balancer is fed by two files (ELBv2 and classic ELB): a field that only the classic file
    maps is no empty field of the ELBv2 load balancers."""
    folder = edited_mappings(tmp_path, {"cmdb_ci_cloud_load_balancer.classic.toml": (
        'type = { value = "classic" }', 'type = { value = "classic" }\ncomments = { value = "from the classic API" }')})
    mappings = load_mappings(folder)
    inventory = synthetic_inventory(accounts=1, regions=("us-east-1",), vpcs=0, subnets=0, instances=0)
    inventory.records += [
        Record("100000000000", "us-east-1", "elb:load_balancer", {"LoadBalancerName": "old", "DNSName": "old.elb"}),
        Record("100000000000", "us-east-1", "elbv2:load_balancer", {
            "LoadBalancerName": "new", "DNSName": "new.elb", "Type": "application",
            "LoadBalancerArn": "arn:aws:elasticloadbalancing:us-east-1:100000000000:loadbalancer/app/new/1"})]
    sources = Counter(record.source for record in inventory.records)
    lines = preview_lines(preview(sources, mappings, map_inventory(inventory, mappings),
                                  {"cmdb_ci_cloud_load_balancer"}))
    assert lines[0].startswith("cmdb_ci_cloud_load_balancer: 2 CI(s)")
    assert not any("comments" in line for line in lines), lines


def test_an_account_of_aws_accounts_shows_its_create_only_values_and_no_empty_name(tmp_path, capsys):
    """aws.accounts gives an account without its name: the preview shows the name a new CI would get, apart,
    and does not call the field empty."""
    from connector.models import Account, Inventory, Record, Scope

    inventory = Inventory(accounts=[Account("111122223333", "111122223333")],
                          scopes=[Scope("111122223333", "global", "organizations:account")],
                          records=[Record("111122223333", "global", "organizations:account", {"Id": "111122223333"})])
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    out_file = tmp_path / "cis.jsonl"
    assert main(["map", "--inventory", str(path), "--mappings", str(builtin_mappings_dir()),
                 "--class", "cmdb_ci_cloud_service_account", "--output", str(out_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:-1] == [  # the last line names the --output file
        "cmdb_ci_cloud_service_account: 1 CI(s), 0 relation(s) (cmdb_ci_cloud_service_account.toml)",
        "  not known to the items (known_when), for a new CI only: is_master_account 1/1, name 1/1, "
        "operational_status 1/1, organization_id 1/1",
        "  Contains::Contained by -> cmdb_ci_aws_org_unit: not known to the items of 1 CI(s) (known_when): those in the "
        "CMDB are kept",
        "  Contains::Contained by -> cmdb_ci_cloud_org: not known to the items of 1 CI(s) (known_when): those in the "
        "CMDB are kept"]
    (row,) = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert row["create_only"] == {"name": "111122223333", "is_master_account": "false", "organization_id": "",
                                  "operational_status": ""}
    assert "name" not in row["fields"]


def test_relations_that_exclude_each_other_are_counted_not_called_broken(tmp_path, capsys):
    """An account is in an OU or at the root, never both: the relation it has not is "none for N of M", the
    warning of a template that matches nothing kept for a relation no CI got."""
    from connector.models import Account, Inventory, Record, Scope

    org = {"Id": "o-1", "Arn": "arn:aws:organizations::111111111111:organization/o-1", "MasterAccountId": "111111111111"}
    ou = {"Id": "ou-1", "Type": "ORGANIZATIONAL_UNIT", "Arn": "arn:aws:organizations::111111111111:ou/o-1/ou-1"}
    root = {"Id": "r-1", "Type": "ROOT", "Arn": "arn:aws:organizations::111111111111:root/o-1/r-1"}
    items = [{"Id": "111111111111", "Name": "a", "State": "ACTIVE", "Organization": org, "Parent": root},
             {"Id": "222222222222", "Name": "b", "State": "ACTIVE", "Organization": org, "Parent": ou},
             {"Id": "333333333333", "Name": "c", "State": "ACTIVE", "Organization": org, "Parent": ou}]
    inventory = Inventory(accounts=[Account(i["Id"], i["Name"]) for i in items],
                          scopes=[Scope(i["Id"], "global", "organizations:account") for i in items],
                          records=[Record(i["Id"], "global", "organizations:account", i) for i in items])
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    assert main(["map", "--inventory", str(path), "--mappings", str(builtin_mappings_dir()),
                 "--class", "cmdb_ci_cloud_service_account"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  Contains::Contained by -> cmdb_ci_aws_org_unit: none for 1 of 3 CI(s)" in out
    assert "  Contains::Contained by -> cmdb_ci_cloud_org: none for 2 of 3 CI(s)" in out
    assert not any("known_when" in line or "matches nothing" in line for line in out)


def test_a_looked_up_field_says_where_and_how_many_values_and_shows_them_as_mapped(tmp_path, inventory_file, capsys):
    folder = edited_mappings(tmp_path, {"cmdb_ci_vm_instance.toml": (
        'ip_address = "PrivateIpAddress"',
        'ip_address = "PrivateIpAddress"\nowned_by = { path = "Tags[?Key==\'Name\'].Value | [0]", lookup = "sys_user.user_name" }')})
    output = tmp_path / "cis.jsonl"
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(folder), "--class", "cmdb_ci_vm_instance",
                 "--output", str(output)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("  looked up when run (the sys_id of the one record a value names): owned_by in sys_user.user_name "
            "(3 distinct value(s))") in out
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert {row["fields"]["owned_by"] for row in rows} == {"app-0", "app-1", "app-2"}  # as mapped: not looked up offline


def test_a_create_only_field_is_said_so_and_not_called_unknown(tmp_path, inventory_file, capsys):
    folder = edited_mappings(tmp_path, {"cmdb_ci_vm_instance.toml": (
        'short_description = "InstanceType"', 'short_description = { path = "InstanceType", create_only = true }')})
    output = tmp_path / "cis.jsonl"
    assert main(["map", "--inventory", str(inventory_file), "--mappings", str(folder), "--class", "cmdb_ci_vm_instance",
                 "--output", str(output)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  written on a create only (create_only), then left to the CMDB: short_description" in out
    assert not [line for line in out if "known_when" in line]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(row["create_only"] == {"short_description": "t3.micro"} and "short_description" not in row["fields"]
               for row in rows)


def test_validate_names_the_looked_up_and_the_create_only_fields(tmp_path, capsys):
    folder = edited_mappings(tmp_path, {"cmdb_ci_vm_instance.toml": (
        'short_description = "InstanceType"',
        'short_description = { path = "InstanceType", create_only = true }\n'
        'owned_by = { tag = "Owner", lookup = { table = "sys_user", field = "email", where = "active=true" } }')})
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      f'username = "u"\npassword = "p"\n[reconcile]\nmappings_dir = "{folder}"\n')
    config.chmod(0o600)
    assert main(["validate", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "reference fields looked up when run: cmdb_ci_vm_instance.owned_by in sys_user.email (active=true)" in out
    assert "written on a create only (create_only): cmdb_ci_vm_instance.short_description" in out
    assert ("joined to a call for many items at once ([source.join]): cmdb_ci_vm_instance from "
            "describe_instance_types (asked once per region) and describe_volumes") in out
    assert "retire: a CI gone from AWS is retired by the first run that misses it (reconcile.retire_after_hours = 0)" in out
    config.write_text(config.read_text() + "retire_after_hours = 36\n")
    assert main(["validate", "--config", str(config)]) == 0
    assert ("retire: a CI gone from AWS is retired once gone 36 hour(s) (reconcile.retire_after_hours)"
            in capsys.readouterr().out.splitlines())
    config.write_text(config.read_text() + "retire = false\n")
    assert main(["validate", "--config", str(config)]) == 0
    assert "retire: off (reconcile.retire = false)" in capsys.readouterr().out.splitlines()


def test_validate_warns_of_a_relation_type_a_base_system_lacks_and_of_a_class_without_name(tmp_path, capsys):
    """A misspelled type would leave the class's relations unmanaged on every run (a run's warning); an
    instance's own type is taken all the same: a warning, exit 0. The built-in files name base types only."""
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      'username = "u"\npassword = "p"\n')
    config.chmod(0o600)
    assert main(["validate", "--config", str(config)]) == 0
    assert "relation type" not in capsys.readouterr().out
    folder = edited_mappings(tmp_path, {"cmdb_ci_network.toml": ('type = "Hosted on::Hosts"',
                                                                 'type = "Hosted on::Host"')})
    config.write_text(config.read_text() + f'[reconcile]\nmappings_dir = "{folder}"\n')
    assert main(["validate", "--config", str(config)]) == 0
    assert ("warning: relation type 'Hosted on::Host' (cmdb_ci_network.toml) is not one of a base system's (did you "
            "mean 'Hosted on::Hosts'?): misspelled, or the instance's own (check-access tells whether it has it)"
            in capsys.readouterr().out.splitlines())
    nameless = edited_mappings(tmp_path / "nameless", {"cmdb_ci_nic.toml": (
        """name = { path = "(TagSet[?Key=='Name'].Value | [0]) || NetworkInterfaceId" }\n""", "")})
    config.write_text(config.read_text().replace(str(folder), str(nameless)))
    assert main(["validate", "--config", str(config)]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")] == [
        "warning: cmdb_ci_nic.toml maps no name: its CIs would be listed without one in the CMDB"]
