from __future__ import annotations

from pathlib import Path

import pytest

from connector.errors import MappingError
from connector.mapping.functions import snow_string
from connector.mapping.load import load_mappings
from connector.mapping.transform import map_inventory, map_record
from connector.models import Inventory, Record, RelationRef

ACCOUNT = "111122223333"
REGION = "eu-west-1"

# Raw items shaped like the real API output.
LIST_ACCOUNTS_ITEM = {
    "Id": ACCOUNT, "Arn": f"arn:aws:organizations::999988887777:account/o-abc123/{ACCOUNT}",
    "Email": "prod@example.com", "Name": "prod", "Status": "ACTIVE", "State": "ACTIVE",
    "JoinedMethod": "CREATED", "JoinedTimestamp": "2024-01-02T03:04:05+00:00",
    "Organization": {"Id": "o-abc123", "MasterAccountId": "999988887777"},
}
DESCRIBE_VPCS_ITEM = {
    "CidrBlock": "10.0.0.0/16", "DhcpOptionsId": "dopt-1", "State": "available", "VpcId": "vpc-0a1b2c",
    "OwnerId": ACCOUNT, "InstanceTenancy": "default", "IsDefault": False,
    "Tags": [{"Key": "Name", "Value": "prod-vpc"}],
}
DESCRIBE_SUBNETS_ITEM = {
    "AvailabilityZone": "eu-west-1a", "AvailabilityZoneId": "euw1-az1", "AvailableIpAddressCount": 251,
    "CidrBlock": "10.0.1.0/24", "State": "available", "SubnetId": "subnet-0d4e5f", "VpcId": "vpc-0a1b2c",
    "OwnerId": ACCOUNT, "SubnetArn": f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-0d4e5f", "Tags": [],
}
DESCRIBE_INSTANCES_ITEM = {
    "InstanceId": "i-0123456789abcdef0", "InstanceType": "m5.large", "ImageId": "ami-1",
    "State": {"Code": 16, "Name": "running"}, "PrivateIpAddress": "10.0.1.15",
    "SubnetId": "subnet-0d4e5f", "VpcId": "vpc-0a1b2c", "LaunchTime": "2024-05-06T07:08:09+00:00",
    "Placement": {"AvailabilityZone": "eu-west-1a", "Tenancy": "default"},
    "Tags": [{"Key": "Name", "Value": "web-1"}, {"Key": "env", "Value": "prod"}],
}

DC = f"arn:aws:ec2:{REGION}:{ACCOUNT}:region/{REGION}"
GOLDEN = [
    (
        "cmdb_ci_cloud_service_account", "organizations:account", "global", LIST_ACCOUNTS_ITEM,
        {"name": "prod", "object_id": ACCOUNT, "account_id": ACCOUNT,
         "correlation_id": f"arn:aws:iam::{ACCOUNT}:root", "is_master_account": "false",
         "organization_id": "o-abc123"},
        (),
    ),
    (
        "cmdb_ci_aws_datacenter", "ec2:region", REGION, {"RegionName": REGION},
        {"name": REGION, "object_id": REGION, "region": REGION, "correlation_id": DC},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_cloud_service_account", f"arn:aws:iam::{ACCOUNT}:root"),),
    ),
    (
        "cmdb_ci_network", "ec2:vpc", REGION, DESCRIBE_VPCS_ITEM,
        {"name": "prod-vpc", "object_id": "vpc-0a1b2c", "cidr": "10.0.0.0/16",
         "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0a1b2c"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_cloud_subnet", "ec2:subnet", REGION, DESCRIBE_SUBNETS_ITEM,
        {"name": "subnet-0d4e5f", "object_id": "subnet-0d4e5f", "cidr": "10.0.1.0/24",
         "available_ip_count": "251", "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-0d4e5f"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),
         RelationRef("Contains::Contained by", "cmdb_ci_network",
                     f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0a1b2c", role="child")),
    ),
    (
        "cmdb_ci_vm_instance", "ec2:instance", REGION, DESCRIBE_INSTANCES_ITEM,
        {"name": "web-1", "object_id": "i-0123456789abcdef0", "vm_inst_id": "i-0123456789abcdef0",
         "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0",
         "state": "on", "ip_address": "10.0.1.15", "short_description": "m5.large"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
]


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


@pytest.mark.parametrize("table, source, region, item, fields, relations", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_mapping(mappings, table, source, region, item, fields, relations):
    ci = map_record(mappings.mappings[table], Record(ACCOUNT, region, source, item))
    assert ci.table == table
    assert ci.fields == fields
    assert ci.identity == fields["correlation_id"]
    assert ci.relations == relations
    assert ci.scope == (ACCOUNT, region, source)


def test_builtin_mappings_cover_the_foundation_classes(mappings):
    assert set(mappings.mappings) == {
        "cmdb_ci_cloud_service_account", "cmdb_ci_aws_datacenter", "cmdb_ci_network",
        "cmdb_ci_cloud_subnet", "cmdb_ci_vm_instance",
    }


def test_management_account_is_flagged(mappings):
    item = {**LIST_ACCOUNTS_ITEM, "Id": "999988887777"}
    ci = map_record(mappings.mappings["cmdb_ci_cloud_service_account"], Record("999988887777", "global", "organizations:account", item))
    assert ci.fields["is_master_account"] == "true"


def test_instance_state_map_and_terminated_filtered(mappings):
    source = mappings.mappings["cmdb_ci_vm_instance"].source
    page = {"Reservations": [{"Instances": [
        {**DESCRIBE_INSTANCES_ITEM, "InstanceId": "i-1", "State": {"Name": "stopped"}},
        {**DESCRIBE_INSTANCES_ITEM, "InstanceId": "i-2", "State": {"Name": "terminated"}},
        {**DESCRIBE_INSTANCES_ITEM, "InstanceId": "i-3", "State": {"Name": "shutting-down"}},
    ]}]}
    items = source.items(page)
    assert [i["InstanceId"] for i in items] == ["i-1", "i-3"]
    mapping = mappings.mappings["cmdb_ci_vm_instance"]
    states = [map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", i)).fields["state"] for i in items]
    assert states == ["off", "off"]


def test_absent_value_stays_absent(mappings):
    item = {k: v for k, v in DESCRIBE_INSTANCES_ITEM.items() if k != "PrivateIpAddress"}
    ci = map_record(mappings.mappings["cmdb_ci_vm_instance"], Record(ACCOUNT, REGION, "ec2:instance", item))
    assert ci.fields["ip_address"] is None


def test_item_without_identity_is_a_problem_of_its_scope(mappings):
    inventory = Inventory(records=[
        Record(ACCOUNT, REGION, "ec2:vpc", {"CidrBlock": "10.9.0.0/16"}),
        Record(ACCOUNT, REGION, "ec2:vpc", DESCRIBE_VPCS_ITEM),
    ])
    result = map_inventory(inventory, mappings)
    assert [ci.fields["object_id"] for ci in result.cis] == ["vpc-0a1b2c"]
    assert len(result.problems) == 1
    assert result.problems[0].scope == (ACCOUNT, REGION, "ec2:vpc")
    assert "cmdb_ci_network.toml: correlation_id is empty" in result.problems[0].message


@pytest.mark.parametrize("value, expected", [
    (None, None), (True, "true"), (False, "false"), (8, "8"), (8.0, "8"), (2.5, "2.5"), ("x", "x"),
])
def test_snow_string(value, expected):
    assert snow_string(value) == expected


VALID = """
[source]
name = "ec2:vpc"
service = "ec2"
operation = "describe_vpcs"
items = "Vpcs"
id = "VpcId"

[fields]
name = "VpcId"
correlation_id = { template = "arn:aws:ec2:{$region}:{$account_id}:vpc/{VpcId}" }
"""

INVALID_CASES = [
    ("syntax", VALID + "oops = [", "cmdb_ci_network.toml: invalid TOML: "),
    ("unknown key", VALID.replace("[fields]", "colour = 1\n[fields]"), "cmdb_ci_network.toml: source.colour: unknown key"),
    ("bad jmespath", VALID.replace('name = "VpcId"', 'name = "Tags[?Key=="'),
     "cmdb_ci_network.toml: fields.name: JMESPath does not compile"),
    ("unknown transform", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", transform = ["shout"] }'),
     "cmdb_ci_network.toml: fields.name: unknown transform 'shout'"),
    ("unknown variable", VALID.replace("{$region}", "{$zone}"),
     "cmdb_ci_network.toml: fields.correlation_id: unknown variable $zone"),
    ("two value sources", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", value = "x" }'),
     "cmdb_ci_network.toml: fields.name: give exactly one of path, template, tag or value (got path, value)"),
    ("missing identity", VALID.replace("correlation_id = ", "object_id = "),
     "cmdb_ci_network.toml: (top level): the identity field 'correlation_id' (target.identity) has no entry in [fields]"),
    ("relation to unknown class", VALID + '\n[[relations]]\ntype = "Hosted on::Hosts"\nto = "cmdb_ci_nowhere"\nidentity = "VpcId"\n',
     "cmdb_ci_network.toml: relations[0].to: no mapping file defines class 'cmdb_ci_nowhere'"),
    ("bad relation type", VALID + '\n[[relations]]\ntype = "Hosted on"\nto = "cmdb_ci_network"\nidentity = "VpcId"\n',
     "cmdb_ci_network.toml: relations.0.type: String should match pattern"),
    ("missing source id", VALID.replace('id = "VpcId"\n', ""), "cmdb_ci_network.toml: source.id: required key is missing"),
    ("api without operation", VALID.replace('operation = "describe_vpcs"\n', ""),
     "cmdb_ci_network.toml: source: kind = 'api' needs operation"),
]


@pytest.mark.parametrize("name, text, expected", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_invalid_mapping_file_error(tmp_path, name, text, expected):
    (tmp_path / "cmdb_ci_network.toml").write_text(text)
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert all(str(tmp_path) in p for p in info.value.problems)


def test_valid_custom_folder_loads(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID)
    assert list(load_mappings(tmp_path).mappings) == ["cmdb_ci_network"]


def test_same_source_defined_twice_differently(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID)
    (tmp_path / "cmdb_ci_cloud_subnet.toml").write_text(VALID.replace('items = "Vpcs"', 'items = "Other"'))
    with pytest.raises(MappingError, match="'ec2:vpc' is also defined, differently"):
        load_mappings(tmp_path)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(MappingError, match="no mapping files"):
        load_mappings(tmp_path)
    with pytest.raises(MappingError, match="mappings folder not found"):
        load_mappings(tmp_path / "nope")


def test_builtin_mappings_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(load_mappings().mappings) == 5
    assert Path(load_mappings().mappings["cmdb_ci_network"].file).name == "cmdb_ci_network.toml"
