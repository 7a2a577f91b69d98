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

# Raw items shaped like the real API output (with what the accounts stage adds: Organization, Parent).
ORG_ARN = "arn:aws:organizations::999988887777:organization/o-abc123"
ROOT = {"Id": "r-ab12", "Type": "ROOT", "Arn": "arn:aws:organizations::999988887777:root/o-abc123/r-ab12"}
WORKLOADS_OU = {"Id": "ou-ab12-0000aaaa", "Type": "ORGANIZATIONAL_UNIT",
                "Arn": "arn:aws:organizations::999988887777:ou/o-abc123/ou-ab12-0000aaaa"}
PRODUCTION_OU_ARN = "arn:aws:organizations::999988887777:ou/o-abc123/ou-ab12-1111bbbb"
LIST_ACCOUNTS_ITEM = {
    "Id": ACCOUNT, "Arn": f"arn:aws:organizations::999988887777:account/o-abc123/{ACCOUNT}",
    "Email": "prod@example.com", "Name": "prod", "Status": "ACTIVE", "State": "ACTIVE",
    "JoinedMethod": "CREATED", "JoinedTimestamp": "2024-01-02T03:04:05+00:00",
    "Organization": {"Id": "o-abc123", "Arn": ORG_ARN, "MasterAccountId": "999988887777"},
    "Parent": {"Id": "ou-ab12-1111bbbb", "Type": "ORGANIZATIONAL_UNIT", "Arn": PRODUCTION_OU_ARN},
}
DESCRIBE_ORGANIZATION_ITEM = {
    "Id": "o-abc123", "Arn": ORG_ARN, "FeatureSet": "ALL",
    "MasterAccountArn": "arn:aws:organizations::999988887777:account/o-abc123/999988887777",
    "MasterAccountId": "999988887777", "MasterAccountEmail": "aws-root@example.com",
    "AvailablePolicyTypes": [{"Type": "SERVICE_CONTROL_POLICY", "Status": "ENABLED"}],
    "Roots": [{"Id": ROOT["Id"], "Arn": ROOT["Arn"], "Name": "Root", "PolicyTypes": []}],
}
ORGANIZATIONAL_UNIT_ITEM = {
    "Id": "ou-ab12-1111bbbb", "Arn": PRODUCTION_OU_ARN, "Name": "production", "Parent": WORKLOADS_OU,
    "RootId": "r-ab12", "Organization": {"Id": "o-abc123", "Arn": ORG_ARN, "MasterAccountId": "999988887777"},
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
    "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 2},
    "InstanceTypeSpecs": {"DefaultVCpus": 2, "SizeInMiB": 8192},  # [source.join]: describe_instance_types
    "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-1", "Status": "attached"}},
                            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": "vol-2", "Status": "attached"}}],
    "NetworkInterfaces": [{"NetworkInterfaceId": "eni-1", "SubnetId": "subnet-0d4e5f"}],
}

DC = f"arn:aws:ec2:{REGION}:{ACCOUNT}:region/{REGION}"
AZ = f"arn:aws:ec2:{REGION}:{ACCOUNT}:availability-zone/eu-west-1a"
GOLDEN = [
    (
        "cmdb_ci_cloud_service_account", "organizations:account", "global", LIST_ACCOUNTS_ITEM,
        {"name": "prod", "object_id": ACCOUNT, "account_id": ACCOUNT,
         "correlation_id": f"arn:aws:iam::{ACCOUNT}:root", "is_master_account": "false",
         "organization_id": "o-abc123", "operational_status": "1"},
        (RelationRef("Contains::Contained by", "cmdb_ci_aws_org_unit", PRODUCTION_OU_ARN, role="child"),),
    ),
    (
        "cmdb_ci_cloud_org", "organizations:organization", "global", DESCRIBE_ORGANIZATION_ITEM,
        {"name": "o-abc123", "object_id": "o-abc123", "correlation_id": ORG_ARN,
         "master_email": "aws-root@example.com", "root_id": "r-ab12"},
        (),
    ),
    (
        "cmdb_ci_aws_org_unit", "organizations:organizational_unit", "global", ORGANIZATIONAL_UNIT_ITEM,
        {"name": "production", "object_id": "ou-ab12-1111bbbb", "correlation_id": PRODUCTION_OU_ARN,
         "aws_org_id": "o-abc123", "org_unit_parent_id": "ou-ab12-0000aaaa", "root_id": "r-ab12"},
        (RelationRef("Contains::Contained by", "cmdb_ci_aws_org_unit", WORKLOADS_OU["Arn"], role="child"),),
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
                     f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0a1b2c", role="child"),
         RelationRef("Contains::Contained by", "cmdb_ci_availability_zone", AZ, role="child")),
    ),
    (
        "cmdb_ci_vm_instance", "ec2:instance", REGION, DESCRIBE_INSTANCES_ITEM,
        {"name": "web-1", "object_id": "i-0123456789abcdef0", "vm_inst_id": "i-0123456789abcdef0",
         "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0",
         "state": "on", "ip_address": "10.0.1.15", "short_description": "m5.large", "cpus": "2", "memory": "8192",
         "disks": "2", "nics": "1"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),
         RelationRef("Located in::Houses", "cmdb_ci_availability_zone", AZ)),
    ),
    (
        "cmdb_ci_availability_zone", "ec2:availability_zone", REGION,
        {"State": "available", "OptInStatus": "opt-in-not-required", "RegionName": REGION, "ZoneName": "eu-west-1a",
         "ZoneId": "euw1-az1", "ZoneType": "availability-zone", "GroupName": "eu-west-1", "Messages": []},
        {"name": "eu-west-1a", "object_id": "eu-west-1a", "zone_id": "euw1-az1", "correlation_id": AZ},
        (RelationRef("Contains::Contained by", "cmdb_ci_aws_datacenter", DC, role="child"),),
    ),
    (
        "cmdb_ci_compute_security_group", "ec2:security_group", REGION,
        {"Description": "web tier", "GroupName": "web", "IpPermissions": [], "OwnerId": ACCOUNT,
         "GroupId": "sg-0f00", "IpPermissionsEgress": [], "VpcId": "vpc-0a1b2c", "Tags": []},
        {"name": "web", "object_id": "sg-0f00", "description": "web tier",
         "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-0f00"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),
         RelationRef("Contains::Contained by", "cmdb_ci_network", f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0a1b2c", role="child")),
    ),
    (
        "cmdb_ci_storage_volume", "ec2:volume", REGION,
        {"Attachments": [{"AttachTime": "2024-05-06T07:08:09+00:00", "Device": "/dev/xvda", "InstanceId": "i-0123456789abcdef0",
                          "State": "attached", "VolumeId": "vol-0aa", "DeleteOnTermination": True}],
         "AvailabilityZone": "eu-west-1a", "CreateTime": "2024-05-06T07:08:09+00:00", "Encrypted": True, "Size": 100,
         "SnapshotId": "", "State": "in-use", "VolumeId": "vol-0aa", "Iops": 3000, "VolumeType": "gp3",
         "Tags": [{"Key": "Name", "Value": "web-1-root"}]},
        {"name": "web-1-root", "object_id": "vol-0aa", "size": "100", "size_bytes": "107374182400", "storage_type": "gp3",
         "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/vol-0aa"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),
         RelationRef("Contains::Contained by", "cmdb_ci_vm_instance",
                     f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0", role="child")),
    ),
    (
        "cmdb_ci_nic", "ec2:network_interface", REGION,
        {"Attachment": {"AttachmentId": "eni-attach-1", "DeviceIndex": 0, "InstanceId": "i-0123456789abcdef0", "Status": "attached"},
         "AvailabilityZone": "eu-west-1a", "Description": "Primary network interface", "InterfaceType": "interface",
         "MacAddress": "02:3c:1d:aa:bb:cc", "NetworkInterfaceId": "eni-0bb", "OwnerId": ACCOUNT,
         "PrivateIpAddress": "10.0.1.15", "SubnetId": "subnet-0d4e5f", "VpcId": "vpc-0a1b2c", "TagSet": []},
        {"name": "eni-0bb", "object_id": "eni-0bb", "ip_address": "10.0.1.15", "mac_address": "02:3c:1d:aa:bb:cc",
         "short_description": "Primary network interface",
         "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNT}:network-interface/eni-0bb"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_cloud_load_balancer", "elbv2:load_balancer", REGION,
        {"LoadBalancerArn": f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/web/50dc6c495c0c9188",
         "DNSName": "web-1234567890.eu-west-1.elb.amazonaws.com", "CanonicalHostedZoneId": "Z32O12XQLNTSW2",
         "CreatedTime": "2024-01-02T03:04:05+00:00", "LoadBalancerName": "web", "Scheme": "internet-facing",
         "VpcId": "vpc-0a1b2c", "State": {"Code": "active"}, "Type": "application", "AvailabilityZones": []},
        {"name": "web", "object_id": "web", "dns_name": "web-1234567890.eu-west-1.elb.amazonaws.com", "type": "application",
         "correlation_id": f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/web/50dc6c495c0c9188"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_cloud_load_balancer.classic", "elb:load_balancer", REGION,
        {"LoadBalancerName": "legacy", "DNSName": "legacy-1234.eu-west-1.elb.amazonaws.com", "ListenerDescriptions": [],
         "AvailabilityZones": ["eu-west-1a"], "Subnets": [], "VPCId": "vpc-0a1b2c", "Instances": [{"InstanceId": "i-1"}],
         "CreatedTime": "2020-01-02T03:04:05+00:00", "Scheme": "internet-facing"},
        {"name": "legacy", "object_id": "legacy", "dns_name": "legacy-1234.eu-west-1.elb.amazonaws.com", "type": "classic",
         "correlation_id": f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/legacy"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_cloud_database", "rds:db_instance", REGION,
        {"DBInstanceIdentifier": "orders", "DBInstanceClass": "db.r6g.large", "Engine": "postgres", "DBInstanceStatus": "available",
         "MasterUsername": "admin", "Endpoint": {"Address": "orders.abc.eu-west-1.rds.amazonaws.com", "Port": 5432},
         "AllocatedStorage": 100, "AvailabilityZone": "eu-west-1a", "EngineVersion": "16.3",
         "DBInstanceArn": f"arn:aws:rds:{REGION}:{ACCOUNT}:db:orders"},
        {"name": "orders", "object_id": "orders", "type": "postgres", "version": "16.3", "tcp_port": "5432",
         "short_description": "db.r6g.large", "correlation_id": f"arn:aws:rds:{REGION}:{ACCOUNT}:db:orders"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_cloud_object_storage", "s3:bucket", "global",
        {"Name": "prod-artifacts", "CreationDate": "2023-03-04T05:06:07+00:00", "Location": REGION},
        {"name": "prod-artifacts", "object_id": "prod-artifacts", "location_constraint": REGION,
         "correlation_id": f"arn:aws:s3::{ACCOUNT}:prod-artifacts"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_cloud_function", "lambda:function", REGION,
        {"FunctionName": "resize", "FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:resize", "Runtime": "python3.12",
         "Role": f"arn:aws:iam::{ACCOUNT}:role/resize", "Handler": "app.handler", "CodeSize": 5120, "Timeout": 30,
         "MemorySize": 256, "LastModified": "2024-05-06T07:08:09.000+0000", "Version": "$LATEST", "PackageType": "Zip"},
        {"name": "resize", "object_id": "resize", "language": "python3.12", "code_size": "5120", "handler": "app.handler",
         "correlation_id": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:resize"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_dynamodb_table", "dynamodb:table", REGION,
        {"TableName": "orders", "TableStatus": "ACTIVE", "CreationDateTime": "2024-01-02T03:04:05+00:00",
         "TableSizeBytes": 2048, "ItemCount": 12, "TableArn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders",
         "TableId": "7f1c", "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}]},
        {"name": "orders", "object_id": "orders", "table_size": "2048", "item_count": "12",
         "correlation_id": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
    (
        "cmdb_ci_kubernetes_cluster", "eks:cluster", REGION,
        {"name": "platform", "arn": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/platform", "createdAt": "2024-01-02T03:04:05+00:00",
         "version": "1.30", "endpoint": "https://ABC.gr7.eu-west-1.eks.amazonaws.com", "roleArn": f"arn:aws:iam::{ACCOUNT}:role/eks",
         "resourcesVpcConfig": {"subnetIds": ["subnet-0d4e5f"], "vpcId": "vpc-0a1b2c"}, "status": "ACTIVE"},
        {"name": "platform", "object_id": "platform", "version": "1.30",
         "short_description": "https://ABC.gr7.eu-west-1.eks.amazonaws.com",
         "correlation_id": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/platform"},
        (RelationRef("Hosted on::Hosts", "cmdb_ci_aws_datacenter", DC),),
    ),
]


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


@pytest.mark.parametrize("name, source, region, item, fields, relations", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_mapping(mappings, name, source, region, item, fields, relations):
    ci = map_record(mappings.mappings[name], Record(ACCOUNT, region, source, item))
    assert ci.table == name.split(".")[0]
    assert ci.fields == fields
    assert ci.identity == fields["correlation_id"]
    assert ci.relations == relations
    assert ci.scope == (ACCOUNT, region, source)


def test_every_builtin_mapping_has_a_golden_test(mappings):
    assert sorted(mappings.mappings) == sorted(g[0] for g in GOLDEN)


def test_builtin_mappings_cover_the_catalogue(mappings):
    assert list(mappings.tables) == sorted([
        "cmdb_ci_cloud_service_account", "cmdb_ci_aws_datacenter", "cmdb_ci_availability_zone", "cmdb_ci_network",
        "cmdb_ci_cloud_subnet", "cmdb_ci_vm_instance", "cmdb_ci_compute_security_group", "cmdb_ci_storage_volume",
        "cmdb_ci_nic", "cmdb_ci_cloud_load_balancer", "cmdb_ci_cloud_database", "cmdb_ci_cloud_object_storage",
        "cmdb_ci_cloud_function", "cmdb_ci_dynamodb_table", "cmdb_ci_kubernetes_cluster",
        "cmdb_ci_cloud_org", "cmdb_ci_aws_org_unit",
    ])
    assert sorted(m.source.name for m in mappings.tables["cmdb_ci_cloud_load_balancer"]) == [
        "elb:load_balancer", "elbv2:load_balancer"]


def test_management_account_is_flagged(mappings):
    item = {**LIST_ACCOUNTS_ITEM, "Id": "999988887777"}
    ci = map_record(mappings.mappings["cmdb_ci_cloud_service_account"], Record("999988887777", "global", "organizations:account", item))
    assert ci.fields["is_master_account"] == "true"


def test_a_suspended_or_closing_account_is_non_operational(mappings):
    mapping = mappings.mappings["cmdb_ci_cloud_service_account"]
    states = {state: map_record(mapping, Record(ACCOUNT, "global", "organizations:account",
                                                {**LIST_ACCOUNTS_ITEM, "State": state})).fields["operational_status"]
              for state in ("ACTIVE", "SUSPENDED", "PENDING_CLOSURE")}
    assert states == {"ACTIVE": "1", "SUSPENDED": "2", "PENDING_CLOSURE": "2"}
    older = {k: v for k, v in LIST_ACCOUNTS_ITEM.items() if k != "State"}  # Status only, as older answers
    assert map_record(mapping, Record(ACCOUNT, "global", "organizations:account", older)).fields["operational_status"] == "1"


def test_an_account_or_an_ou_at_the_root_is_contained_by_the_organization(mappings):
    account = map_record(mappings.mappings["cmdb_ci_cloud_service_account"],
                         Record(ACCOUNT, "global", "organizations:account", {**LIST_ACCOUNTS_ITEM, "Parent": ROOT}))
    unit = map_record(mappings.mappings["cmdb_ci_aws_org_unit"], Record(
        "999988887777", "global", "organizations:organizational_unit", {**ORGANIZATIONAL_UNIT_ITEM, "Parent": ROOT}))
    for ci in (account, unit):
        assert ci.relations == (RelationRef("Contains::Contained by", "cmdb_ci_cloud_org", ORG_ARN, role="child"),)
        assert ci.unknown_relations == frozenset()
    assert unit.fields["org_unit_parent_id"] == "r-ab12"


def test_an_account_whose_place_was_not_read_has_those_relations_unknown_not_absent(mappings):
    """aws.accounts lists it: no Parent. Its relations to the Organization and OUs are unknown (the
    CMDB's are kept), while an account with a Parent has the others known absent."""
    item = {"Id": ACCOUNT}  # as the accounts stage makes it of aws.accounts
    ci = map_record(mappings.mappings["cmdb_ci_cloud_service_account"], Record(ACCOUNT, "global", "organizations:account", item))
    assert ci.relations == ()
    # what the item does not know is for a create only: a CI's name and Organization are left as they are
    assert ci.fields == {"object_id": ACCOUNT, "account_id": ACCOUNT, "correlation_id": f"arn:aws:iam::{ACCOUNT}:root"}
    assert ci.create_only == {"name": ACCOUNT, "is_master_account": "false", "organization_id": None,
                              "operational_status": None}
    assert ci.unknown_relations == {("Contains::Contained by", "cmdb_ci_aws_org_unit"),
                                    ("Contains::Contained by", "cmdb_ci_cloud_org")}
    known = map_record(mappings.mappings["cmdb_ci_cloud_service_account"],
                       Record(ACCOUNT, "global", "organizations:account", LIST_ACCOUNTS_ITEM))
    assert known.unknown_relations == frozenset() and known.create_only == {}


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


@pytest.mark.parametrize("extra, part", [
    ('cidr = "length(NoSuchList)"\n', "[fields] cidr"),
    ('cidr = { path = "CidrBlock", known_when = "length(NoSuchList)" }\n', "[fields] cidr known_when"),
    ('[[relations]]\ntype = "Hosted on::Hosts"\nto = "cmdb_ci_network"\nidentity = "length(NoSuchList)"\n',
     "[[relations]] Hosted on::Hosts -> cmdb_ci_network identity"),
])
def test_a_path_that_fails_on_an_item_names_its_field_or_relation_and_the_item(tmp_path, extra, part):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID + extra)
    inventory = Inventory(records=[Record(ACCOUNT, REGION, "ec2:vpc", {"VpcId": "vpc-1", "CidrBlock": "10.0.0.0/16"})])
    result = map_inventory(inventory, load_mappings(tmp_path))
    assert result.cis == []
    (problem,) = result.problems
    assert problem.scope == (ACCOUNT, REGION, "ec2:vpc")  # its scope's CIs are then neither retired nor emptied
    assert problem.message == (f"cmdb_ci_network.toml: {part}: In function length(), invalid type for value: None, "
                               "expected one of: ['string', 'array', 'object'], received: \"null\" (item 'vpc-1')")



# a misspelled path, a create-only field, a field its items may not know
UNFILLED = """[fields]
cidr = "CidrBlok"
description = { path = "Description", create_only = true }
state = { path = "State", known_when = "Known" }
"""


def _vpcs(count: int, start: int = 0) -> list[Record]:
    return [Record(ACCOUNT, REGION, "ec2:vpc", {"VpcId": f"vpc-{n}", "CidrBlock": "10.0.0.0/16"})
            for n in range(start, start + count)]


def test_a_field_empty_for_every_item_of_a_file_is_a_warning_of_the_run(tmp_path):
    from connector.mapping.transform import EMPTY_FIELD_MIN_ITEMS, Mapper

    (tmp_path / "cmdb_ci_network.toml").write_text(VALID.replace("[fields]\n", UNFILLED))
    mappings = load_mappings(tmp_path)
    mapper = Mapper(mappings)
    for batch in (_vpcs(EMPTY_FIELD_MIN_ITEMS - 1), _vpcs(1, EMPTY_FIELD_MIN_ITEMS - 1)):  # over the batches
        mapper.add(batch)
    result = mapper.result()
    assert len(result.cis) == EMPTY_FIELD_MIN_ITEMS
    # the misspelled path, the create-only field no item fills, the field no item knows; not the name
    assert result.warnings == [
        f"cmdb_ci_network.{name}: empty for every one of the {EMPTY_FIELD_MIN_ITEMS} resources cmdb_ci_network.toml "
        "mapped: a path or tag that matches nothing (a typo, a key AWS renamed)? `cmdb-connector map --inventory "
        "FILE` shows what each field gets from a saved inventory" for name in ("cidr", "description", "state")]

    # one item that fills a field is enough to say nothing of it; a create-only or unknown value counts
    mapper = Mapper(mappings)
    mapper.add(_vpcs(EMPTY_FIELD_MIN_ITEMS) + [Record(ACCOUNT, REGION, "ec2:vpc", {
        "VpcId": "vpc-x", "CidrBlok": "10.1.0.0/16", "Description": "web", "State": "available"})])
    assert mapper.result().warnings == []
    # too few resources to tell a typo from fields simply unset (one seen twice counts once); and not for the
    # map command (its preview says it)
    mapper = Mapper(mappings)
    mapper.add(_vpcs(EMPTY_FIELD_MIN_ITEMS - 1) + _vpcs(1))
    assert mapper.result().warnings == []
    mapper = Mapper(mappings, unfilled=False)
    mapper.add(_vpcs(EMPTY_FIELD_MIN_ITEMS))
    assert mapper.result().warnings == []


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
    ("unknown key", VALID.replace("[fields]", "colour = 1\n[fields]"),
     "cmdb_ci_network.toml: source.colour: unknown key "
     "(the keys here: detail, id, items, join, kind, name, operation, params, scope, service)"),
    # a misspelled key names the nearest of those its own table takes
    ("misspelled key", VALID.replace("[fields]", "itmes = 1\n[fields]"),
     "cmdb_ci_network.toml: source.itmes: unknown key (did you mean 'items'?)"),
    ("misspelled field key", VALID.replace('name = "VpcId"', 'name = { paht = "VpcId" }'),
     "cmdb_ci_network.toml: fields.name.paht: unknown key (did you mean 'path'?)"),
    ("misspelled table", VALID + '\n[tag]\npath = "Tags"\n', "cmdb_ci_network.toml: tag: unknown key (did you mean "
     "'tags'?)"),
    ("misspelled relation key", VALID + '\n[[relations]]\ntype = "A::B"\nto = "cmdb_ci_network"\nidentity = "VpcId"\n'
     'knonw_when = "VpcId"\n',
     "cmdb_ci_network.toml: relations[0].knonw_when: unknown key (did you mean 'known_when'?)"),
    ("bad jmespath", VALID.replace('name = "VpcId"', 'name = "Tags[?Key=="'),
     "cmdb_ci_network.toml: fields.name: JMESPath does not compile: incomplete expression: 'Tags[?Key==' ends too soon"),
    ("bad jmespath token", VALID.replace('name = "VpcId"', 'name = "VpcId ~ Name"'),
     "cmdb_ci_network.toml: fields.name: JMESPath does not compile: Unknown token ~ at character 7 of 'VpcId ~ Name'"),
    ("unknown transform", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", transform = ["shout"] }'),
     "cmdb_ci_network.toml: fields.name: unknown transform 'shout'"),
    ("truncate without a length", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", transform = ["truncate:x"] }'),
     "cmdb_ci_network.toml: fields.name: truncate needs a length in characters, e.g. truncate:255; not 'x'"),
    ("unknown variable", VALID.replace("{$region}", "{$zone}"),
     "cmdb_ci_network.toml: fields.correlation_id: unknown variable $zone"),
    ("two value sources", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", value = "x" }'),
     "cmdb_ci_network.toml: fields.name: give exactly one of path, template, tag or value (got path, value)"),
    ("missing identity", VALID.replace("correlation_id = ", "object_id = "),
     "cmdb_ci_network.toml: (top level): the identity field 'correlation_id' (target.identity) has no entry in [fields]"),
    ("bad known_when", VALID + '\n[[relations]]\ntype = "Hosted on::Hosts"\nto = "cmdb_ci_network"\nidentity = "VpcId"\n'
     'known_when = "Parent[?"\n',
     "cmdb_ci_network.toml: relations[0].known_when: JMESPath does not compile: incomplete expression: 'Parent[?' ends too soon"),
    ("known_when on the identity", VALID.replace(
        'correlation_id = { template = "arn:aws:ec2:{$region}:{$account_id}:vpc/{VpcId}" }',
        'correlation_id = { template = "arn:aws:ec2:{$region}:{$account_id}:vpc/{VpcId}", known_when = "VpcId" }'),
     "cmdb_ci_network.toml: (top level): the identity field 'correlation_id' takes no known_when: a CI is known by it"),
    ("relation to unknown class", VALID + '\n[[relations]]\ntype = "Hosted on::Hosts"\nto = "cmdb_ci_nowhere"\nidentity = "VpcId"\n',
     "cmdb_ci_network.toml: relations[0].to: no mapping file defines class 'cmdb_ci_nowhere'"),
    ("relation to a misspelled class", VALID + '\n[[relations]]\ntype = "Hosted on::Hosts"\nto = "cmdb_ci_netwrok"\n'
     'identity = "VpcId"\n',
     "cmdb_ci_network.toml: relations[0].to: no mapping file defines class 'cmdb_ci_netwrok' (did you mean "
     "'cmdb_ci_network'?)"),
    ("bad relation type", VALID + '\n[[relations]]\ntype = "Hosted on"\nto = "cmdb_ci_network"\nidentity = "VpcId"\n',
     "cmdb_ci_network.toml: relations[0].type: String should match pattern"),
    ("missing source id", VALID.replace('id = "VpcId"\n', ""), "cmdb_ci_network.toml: source.id: required key is missing"),
    ("api without operation", VALID.replace('operation = "describe_vpcs"\n', ""),
     "cmdb_ci_network.toml: source: kind = 'api' needs operation"),
    ("bad detail expression", VALID.replace("[fields]", '[source.detail]\noperation = "x"\nparams = { A = "B[" }\n[fields]'),
     "cmdb_ci_network.toml: source.detail: JMESPath does not compile: incomplete expression: 'B[' ends too soon"),
    ("detail unknown key", VALID.replace("[fields]", '[source.detail]\noperation = "x"\nparams = {}\nmerge = 1\n[fields]'),
     "cmdb_ci_network.toml: source.detail.merge: unknown key"),
]


INVALID_CASES += [
    ("tags unknown key", VALID + '\n[tags]\npath = "Tags"\nformat = "list"\n', "cmdb_ci_network.toml: tags.format: unknown key"),
    ("tags bad jmespath", VALID + '\n[tags]\npath = "Tags[?"\n', "cmdb_ci_network.toml: tags: JMESPath does not compile"),
    ("tags without path", VALID + '\n[tags]\nkey = "Key"\n', "cmdb_ci_network.toml: tags.path: required key is missing"),
    ("tags params without a call", VALID + '\n[tags]\npath = "Tags"\nparams = { Resource = "VpcId" }\n',
     "cmdb_ci_network.toml: tags: params and none_when go with operation"),
    ("tags call bad jmespath", VALID + '\n[tags]\npath = "Tags"\noperation = "x"\nparams = { A = "B[" }\n',
     "cmdb_ci_network.toml: tags: JMESPath does not compile"),
]


OWNER = 'owned_by = { tag = "Owner", lookup = "sys_user.email" }\n'
INVALID_CASES += [
    ("lookup without a field", VALID.replace("[fields]\n", '[fields]\nowned_by = { tag = "Owner", lookup = "sys_user" }\n'),
     "cmdb_ci_network.toml: fields.owned_by.lookup: 'sys_user': write the table and its field, as \"sys_user.email\""),
    ("lookup unknown key", VALID.replace("[fields]\n", '[fields]\nowned_by = { tag = "Owner", lookup = { table = '
                                         '"sys_user", field = "email", order = "name" } }\n'),
     "cmdb_ci_network.toml: fields.owned_by.lookup.order: unknown key (the keys here: field, table, where)"),
    ("lookup where with NQ", VALID.replace("[fields]\n", '[fields]\nowned_by = { tag = "Owner", lookup = { table = '
                                           '"sys_user", field = "email", where = "active=true^NQactive=false" } }\n'),
     "cmdb_ci_network.toml: fields.owned_by.lookup: where: one encoded query that narrows the lookup"),
    ("lookup where without a field", VALID.replace("[fields]\n", '[fields]\nowned_by = { tag = "Owner", lookup = { '
                                                  'table = "sys_user", field = "email", where = "Active=true" } }\n'),
     "cmdb_ci_network.toml: fields.owned_by.lookup: where: 'Active=true' does not begin with a field name"),
    ("create_only with known_when", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", create_only = true, '
                                                  'known_when = "VpcId" }'),
     "cmdb_ci_network.toml: fields.name: create_only writes the field on a create only"),
    ("create_only identity", VALID.replace('vpc/{VpcId}" }', 'vpc/{VpcId}", create_only = true }'),
     "cmdb_ci_network.toml: (top level): the identity field 'correlation_id' is not create_only"),
    ("lookup on the identity", VALID.replace('vpc/{VpcId}" }', 'vpc/{VpcId}", lookup = "sys_user.email" }'),
     "cmdb_ci_network.toml: (top level): the identity field 'correlation_id' takes no lookup"),
]


def test_a_lookup_is_compiled_and_one_class_looks_a_field_up_one_way(tmp_path):
    from connector.models import Lookup

    (tmp_path / "cmdb_ci_network.toml").write_text(VALID.replace("[fields]\n", "[fields]\n" + OWNER))
    assert load_mappings(tmp_path).lookups == {"cmdb_ci_network": {"owned_by": Lookup("sys_user", "email")}}
    other = VALID.replace('name = "ec2:vpc"', 'name = "ec2:other"').replace("[fields]\n", "[fields]\n" + OWNER.replace(
        '"sys_user.email"', '{ table = "sys_user", field = "email", where = "active=true" }'))
    (tmp_path / "cmdb_ci_network.other.toml").write_text(other)
    with pytest.raises(MappingError, match=r"cmdb_ci_network.toml: fields.owned_by: its lookup differs from "
                                           r"cmdb_ci_network.other.toml's"):
        load_mappings(tmp_path)


JOIN = ('[source.join]\noperation = "describe_dhcp_options"\nparam = "DhcpOptionsIds"\non = "DhcpOptionsId"\n'
        'items = "DhcpOptions"\nmatch = "DhcpOptionsId"\nkey = "Dhcp"\n')
INVALID_CASES += [
    ("join without key", VALID.replace("[fields]", JOIN.replace('key = "Dhcp"\n', "") + "[fields]"),
     "cmdb_ci_network.toml: source.join.key: required key is missing"),
    ("join bad jmespath", VALID.replace("[fields]", JOIN.replace('on = "DhcpOptionsId"', 'on = "Dhcp["') + "[fields]"),
     "cmdb_ci_network.toml: source.join: JMESPath does not compile"),
    ("join values also in params", VALID.replace("[fields]", JOIN + 'params = { DhcpOptionsIds = [] }\n[fields]'),
     "cmdb_ci_network.toml: source.join: params.DhcpOptionsIds: the values go in 'DhcpOptionsIds' (param)"),
    ("join with param and filter", VALID.replace("[fields]", JOIN + 'filter = "dhcp-options-id"\n[fields]'),
     "cmdb_ci_network.toml: source.join: give param (the call's parameter that takes the values) or filter"),
    ("join with neither param nor filter", VALID.replace("[fields]", JOIN.replace('param = "DhcpOptionsIds"\n', "")
                                                         + "[fields]"),
     "cmdb_ci_network.toml: source.join: give param (the call's parameter that takes the values) or filter"),
    ("join filter with Filters not a list", VALID.replace("[fields]", JOIN.replace(
        'param = "DhcpOptionsIds"', 'filter = "dhcp-options-id"\nparams = { Filters = "x" }') + "[fields]"),
     "cmdb_ci_network.toml: source.join: params.Filters: a list of filters"),
    ("two joins, one key", VALID.replace("[fields]", (JOIN + JOIN).replace("[source.join]", "[[source.join]]")
                                         + "[fields]"),
     "cmdb_ci_network.toml: source: join: two joins keep their answers under one key (['Dhcp', 'Dhcp'])"),
    ("second join without key", VALID.replace("[fields]", (JOIN + JOIN.replace('key = "Dhcp"\n', ""))
                                              .replace("[source.join]", "[[source.join]]") + "[fields]"),
     "cmdb_ci_network.toml: source.join[1].key: required key is missing"),
    ("join filter over EC2's filter values", VALID.replace("[fields]", JOIN.replace(
        'param = "DhcpOptionsIds"', 'filter = "dhcp-options-id"\nper_call = 201') + "[fields]"),
     "cmdb_ci_network.toml: source.join: per_call: 201 values a call: EC2 takes at most 200 filter values in one "
     "call, all filters together (FilterLimitExceeded, which would fail the unit); per_call = 200 at most"),
    ("join filter over EC2's filter values with those of params", VALID.replace("[fields]", JOIN.replace(
        'param = "DhcpOptionsIds"', 'filter = "dhcp-options-id"\nper_call = 200\n'
        'params = { Filters = [{ Name = "state", Values = ["a", "b"] }] }') + "[fields]"),
     "cmdb_ci_network.toml: source.join: per_call: 200 values a call, and 2 in params.Filters: EC2 takes at most "
     "200 filter values in one call, all filters together (FilterLimitExceeded, which would fail the unit); "
     "per_call = 198 at most"),
    ("join per_call zero", VALID.replace("[fields]", JOIN + "per_call = 0\n[fields]"),
     "cmdb_ci_network.toml: source.join.per_call: Input should be greater than or equal to 1"),
    ("join on a region", VALID.replace('service = "ec2"\noperation = "describe_vpcs"\nitems = "Vpcs"\n',
                                       'kind = "region"\n').replace("[fields]", JOIN + "[fields]"),
     "cmdb_ci_network.toml: source: join: only for kind = 'api'"),
]


# Values of the wrong kind, told in the file's words (pydantic names each member of a union it tried, and
# its own model's class); an empty tag or template, which would leave the field empty on every CI.
INVALID_CASES += [
    ("default a list", VALID.replace('name = "VpcId"', 'name = { path = "VpcId", default = [] }'),
     "cmdb_ci_network.toml: fields.name.default: a text, a number or true/false, not a list"),
    ("value a table", VALID.replace('name = "VpcId"', "name = { value = { a = 1 } }"),
     "cmdb_ci_network.toml: fields.name.value: a text, a number or true/false, not a table"),
    ("field a number", VALID.replace('name = "VpcId"', "name = 5"),
     'cmdb_ci_network.toml: fields.name: a JMESPath in quotes, or a table such as { path = "..." }, not a whole '
     "number"),
    ("empty tag", VALID.replace('name = "VpcId"', 'name = { tag = "" }'),
     'cmdb_ci_network.toml: fields.name: tag: empty, so that the field would never have a value: name the AWS '
     'tag, as tag = "Owner"'),
    ("empty template", VALID.replace('name = "VpcId"', 'name = { template = " " }'),
     "cmdb_ci_network.toml: fields.name: template: empty, so that the field would never have a value"),
]


# A lifecycle that cannot tell a retired CI from a live one: each run would write the same retires or revives.
INVALID_CASES += [
    ("lifecycle retire empty", VALID + "\n[lifecycle]\nretire = {}\n",
     "cmdb_ci_network.toml: lifecycle: retire: empty, so that no CI would ever read as retired"),
    ("lifecycle revive as retire", VALID + '\n[lifecycle]\nrevive = { install_status = "7", operational_status = "6" }\n',
     "cmdb_ci_network.toml: lifecycle: revive: gives none of retire's fields (install_status, operational_status) "
     "another value, so that a revived CI would still read as retired (revived again on every run)"),
    ("lifecycle revive of other fields", VALID + '\n[lifecycle]\nretire = { u_state = "gone" }\n',
     "cmdb_ci_network.toml: lifecycle: revive: gives none of retire's fields (u_state) another value"),
]


# A brace a template does not pair would be text in every CI's identity (a new identity: every CI made again).
INVALID_CASES += [
    ("template brace not closed", VALID.replace("{$region}:", "{$region:"),
     "cmdb_ci_network.toml: fields.correlation_id: '{' at character 13 of 'arn:aws:ec2:{$region:{$account_id}:vpc/{VpcId}' "
     "is not closed by '}' before another brace (write '{{' for a literal one)"),
    ("template brace not opened", VALID.replace(":{$account_id}", ":$account_id}"),
     "cmdb_ci_network.toml: fields.correlation_id: '}' without its '{' at character 34 of "
     "'arn:aws:ec2:{$region}:$account_id}:vpc/{VpcId}' (write '}}' for a literal one)"),
    ("template brace at the end", VALID.replace("{VpcId}", "{VpcId"),
     "cmdb_ci_network.toml: fields.correlation_id: '{' at character 41 of"),
    ("template empty placeholder", VALID.replace("vpc/{VpcId}", "vpc/{ }"),
     "cmdb_ci_network.toml: fields.correlation_id: empty placeholder at character 41 of"),
]


@pytest.mark.parametrize("name, text, expected", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_invalid_mapping_file_error(tmp_path, name, text, expected):
    (tmp_path / "cmdb_ci_network.toml").write_text(text)
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert all(str(tmp_path) in p for p in info.value.problems)


def test_a_broken_file_is_named_once_not_again_by_the_relations_to_its_class(tmp_path):
    """A subnet's relation to cmdb_ci_network, whose own file does not compile: one problem, in that
    file, not a second one saying that no file defines the class."""
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID.replace('name = "VpcId"', 'name = "Tags[?"'))
    subnet = (VALID.replace('name = "ec2:vpc"', 'name = "ec2:subnet"').replace("vpc/{VpcId}", "subnet/{VpcId}")
              + '\n[[relations]]\ntype = "Contains::Contained by"\nto = "cmdb_ci_network"\nrole = "child"\n'
              'identity = "VpcId"\n')
    (tmp_path / "cmdb_ci_cloud_subnet.toml").write_text(subnet)
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert [p.split(": ", 2)[:2] for p in info.value.problems] == [[str(tmp_path / "cmdb_ci_network.toml"), "fields.name"]]
    (tmp_path / "cmdb_ci_network.toml").unlink()  # no file for the class at all: that is the problem
    with pytest.raises(MappingError, match=r"cmdb_ci_cloud_subnet.toml: relations\[0\].to: no mapping file defines class "
                                           r"'cmdb_ci_network'"):
        load_mappings(tmp_path)


def test_valid_custom_folder_loads(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID)
    assert list(load_mappings(tmp_path).mappings) == ["cmdb_ci_network"]


def test_variants_of_one_class_must_share_identity(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID)
    other = VALID.replace('name = "ec2:vpc"', 'name = "ec2:other"').replace(
        "[fields]", '[target]\nidentity = "object_id"\n[fields]').replace('name = "VpcId"', 'object_id = "VpcId"')
    (tmp_path / "cmdb_ci_network.other.toml").write_text(other)
    with pytest.raises(MappingError, match=r"cmdb_ci_network.toml: target.identity: differs from cmdb_ci_network.other.toml"):
        load_mappings(tmp_path)


def test_two_classes_with_the_same_identity_are_refused(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID)
    (tmp_path / "cmdb_ci_cloud_subnet.toml").write_text(VALID)  # copied, and the identity left as it was
    with pytest.raises(MappingError, match=r"fields.correlation_id: built exactly as in cmdb_ci_cloud_subnet.toml; "
                                           r"two classes would claim the same identities"):
        load_mappings(tmp_path)


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
    assert len(load_mappings().mappings) == 18
    assert Path(load_mappings().mappings["cmdb_ci_network"].file).name == "cmdb_ci_network.toml"


FAST_CASES = [
    "(Tags[?Key=='Name'].Value | [0]) || InstanceId", "Location || 'us-east-1'", "Attachments[0].InstanceId",
    "Endpoint.Port", "Name || Id", "Tags[?Key=='env'].Value | [0]", "a.b.c", "a[0]", "a[-1]", "@",
    "x || y || z", "Tags[?Key=='Name'].Value | [1]", "Id == Organization.MasterAccountId",
    "CpuOptions && [CpuOptions.CoreCount, CpuOptions.ThreadsPerCore] || [InstanceTypeSpecs.DefaultVCpus]",
    "x && y", "x && y && z", "[x, y]", "Endpoint.[Port, Address]", "[a.b, x] || z",
    "length(BlockDeviceMappings || `[]`)", "BlockDeviceMappings != `null`", "`null` == Tags", "Name == 'web'",
    "Name != 'web'", "Location == `\"eu-west-1\"`", "length(Name)", "length(a)", "x == `false`", "z != `0`",
    "sum(VolumeSizes || `[]`)", "sum(a)", "sum(Tags)",
]
FAST_ITEMS = [
    {}, {"Tags": []}, {"Tags": None}, {"Tags": "oops"}, {"Tags": [{"Key": "Name", "Value": None}, {"Key": "Name", "Value": "b"}]},
    {"Tags": [{"Key": "Name", "Value": ""}], "InstanceId": "i-1"}, {"Tags": [{"Key": "env", "Value": "prod"}, "junk"]},
    {"Location": None}, {"Location": "eu-west-1"}, {"Location": ""}, {"Attachments": []}, {"Attachments": [{"InstanceId": "i-2"}]},
    {"Attachments": {"0": "x"}}, {"Endpoint": {"Port": 5432}}, {"Endpoint": None}, {"Name": "", "Id": "1"},
    {"Name": [], "Id": {}}, {"a": {"b": {"c": 0}}}, {"a": [1, 2]}, {"a": "str"}, {"x": False, "y": {}, "z": 0},
    {"Id": "1", "Organization": {"MasterAccountId": "1"}},
    {"CpuOptions": {"CoreCount": 2, "ThreadsPerCore": 1}, "InstanceTypeSpecs": {"DefaultVCpus": 4}},
    {"CpuOptions": {}, "InstanceTypeSpecs": {"DefaultVCpus": 4}}, {"CpuOptions": None, "InstanceTypeSpecs": {}},
    {"InstanceTypeSpecs": {"DefaultVCpus": 4}}, {"x": 0, "y": "", "z": 1}, {"x": "a", "y": [1], "z": None},
    {"Endpoint": {"Port": 1, "Address": "h"}}, {"Endpoint": "text"}, {"a": {"b": None}, "x": None, "z": 3},
    {"BlockDeviceMappings": []}, {"BlockDeviceMappings": [{"DeviceName": "/dev/xvda"}]}, {"BlockDeviceMappings": None},
    {"BlockDeviceMappings": "x"}, {"Name": "web"}, {"Name": 5}, {"Name": True}, {"x": 0, "z": False},
    {"VolumeSizes": [8, 50]}, {"VolumeSizes": []}, {"VolumeSizes": None}, {"VolumeSizes": [True]},
    {"VolumeSizes": ["8"]}, {"VolumeSizes": [1.5, 2]}, {"VolumeSizes": "x"}, {"VolumeSizes": [8, None]},
]


@pytest.mark.parametrize("expression", FAST_CASES)
def test_fast_paths_agree_with_jmespath(expression):
    import jmespath

    from connector.mapping.expressions import compile_path

    compiled = compile_path(expression)
    for item in FAST_ITEMS:
        try:
            expected = jmespath.search(expression, item)
        except jmespath.exceptions.JMESPathTypeError as exc:  # length() of a number, say: the same error
            with pytest.raises(jmespath.exceptions.JMESPathTypeError) as raised:
                compiled(item)
            assert str(raised.value) == str(exc), (expression, item)
            continue
        found = compiled(item)
        assert found == expected and type(found) is type(expected), (expression, item)


# -- tags ------------------------------------------------------------------------

TAG_CASES = [
    # mapping, source, the item's tags as the API gives them (merged into that class's golden item), expected
    ("cmdb_ci_vm_instance", "ec2:instance", {"Tags": [{"Key": "Name", "Value": "web-1"}, {"Key": "env", "Value": "prod"}]},
     {"Name": "web-1", "env": "prod"}),
    ("cmdb_ci_nic", "ec2:network_interface", {"TagSet": [{"Key": "team", "Value": "net"}]}, {"team": "net"}),
    ("cmdb_ci_cloud_database", "rds:db_instance", {"TagList": [{"Key": "cost-center", "Value": "42"}, {"Key": "empty"}]},
     {"cost-center": "42", "empty": ""}),
    ("cmdb_ci_kubernetes_cluster", "eks:cluster", {"tags": {"env": "prod", "owner": "platform"}},
     {"env": "prod", "owner": "platform"}),
    ("cmdb_ci_vm_instance", "ec2:instance", {"Tags": None}, {}),  # no tags at all: EC2 leaves the key out
]


@pytest.mark.parametrize("name, source, tags, expected", TAG_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TAG_CASES)])
def test_tags_from_each_shape(mappings, name, source, tags, expected):
    golden = next(g for g in GOLDEN if g[0] == name)
    item = {**golden[3], **tags}
    ci = map_record(mappings.mappings[name], Record(ACCOUNT, golden[2], source, item), tags=True)
    assert ci.tags == expected
    assert ci.identity == golden[4]["correlation_id"]
    assert map_record(mappings.mappings[name], Record(ACCOUNT, golden[2], source, item)).tags is None  # off by default


def test_classes_without_tags_in_aws_map_none(mappings):
    golden = next(g for g in GOLDEN if g[0] == "cmdb_ci_availability_zone")
    ci = map_record(mappings.mappings["cmdb_ci_availability_zone"], Record(ACCOUNT, golden[2], golden[1], golden[3]), tags=True)
    assert ci.tags is None  # its mapping has no [tags]: its CIs' key-values are never touched


def test_excluded_tag_keys_are_left_out(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID + '\n[tags]\npath = "Tags"\nexclude = ["aws:*", "Secret"]\n')
    mapping = load_mappings(tmp_path).mappings["cmdb_ci_network"]
    item = {"VpcId": "vpc-1", "Tags": [{"Key": "aws:cloudformation:stack-name", "Value": "net"}, {"Key": "Secret", "Value": "x"},
                                       {"Key": "secret", "Value": "y"}, {"Key": "env", "Value": "prod"}]}
    ci = map_record(mapping, Record(ACCOUNT, REGION, "ec2:vpc", item), tags=True)
    assert ci.tags == {"secret": "y", "env": "prod"}  # patterns match case-sensitively, as tag keys are


def test_truncate_cuts_a_text_to_the_length_a_field_keeps():
    from connector.mapping.expressions import compile_field
    from connector.mapping.schema import FieldSpec

    name = compile_field(FieldSpec(path="Name", transform=["strip", "truncate:5"]))
    assert name({"Name": "  web-server-01 "}, {}) == "web-s"
    assert name({"Name": "web"}, {}) == "web"  # shorter: as it is
    assert name({}, {}) is None  # absent stays absent
    assert compile_field(FieldSpec(path="Size", transform=["truncate:1"]))({"Size": 80}, {}) == "80"  # text only


def test_a_file_named_as_no_table_can_be_is_named_and_a_hidden_file_is_not_read(tmp_path):
    """The file name is the class: Cmdb_CI_Network would be a table the instance does not have (its CIs never
    written, run after run). An editor's lock file (emacs' .#name.toml) or a hidden copy is no mapping."""
    (tmp_path / "Cmdb_CI_Network.toml").write_text(VALID)
    (tmp_path / "cmdb ci network.old.toml").write_text(VALID)
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert info.value.problems == [
        f"{tmp_path / 'Cmdb_CI_Network.toml'}: the file name: 'Cmdb_CI_Network' is not a ServiceNow table name "
        "(lower-case letters, digits and _, as cmdb_ci_vm_instance): name the file cmdb_ci_network.toml",
        f"{tmp_path / 'cmdb ci network.old.toml'}: the file name: 'cmdb ci network' is not a ServiceNow table "
        "name (lower-case letters, digits and _, as cmdb_ci_vm_instance): name the file cmdb_ci_network.old.toml"]
    for path in tmp_path.iterdir():
        path.unlink()
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID)
    (tmp_path / ".#cmdb_ci_network.toml").symlink_to("/nonexistent/emacs-lock")
    (tmp_path / ".cmdb_ci_network.toml").write_text("not toml [")
    assert list(load_mappings(tmp_path).mappings) == ["cmdb_ci_network"]


def test_a_value_or_default_may_be_any_toml_scalar_and_is_written_in_servicenows_string_form(tmp_path):
    text = VALID.replace('name = "VpcId"', 'name = "VpcId"\nratio = { value = 1.5 }\nactive = { value = true }\n'
                         'size = { path = "Size", default = 8 }')
    (tmp_path / "cmdb_ci_network.toml").write_text(text)
    mapping = load_mappings(tmp_path).mappings["cmdb_ci_network"]
    ci = map_record(mapping, Record(ACCOUNT, REGION, "ec2:vpc", {"VpcId": "vpc-1"}))
    assert (ci.fields["ratio"], ci.fields["active"], ci.fields["size"]) == ("1.5", "true", "8")


def test_a_template_writes_a_literal_brace_doubled():
    from connector.mapping.expressions import compile_field
    from connector.mapping.schema import FieldSpec

    render = compile_field(FieldSpec(template="{{{Name}}} in {$region}, {{}}"))
    assert render({"Name": "web"}, {"region": "eu-west-1"}) == "{web} in eu-west-1, {}"
    assert render({}, {"region": "eu-west-1"}) is None  # a placeholder that finds nothing: no value


def test_a_file_saved_by_windows_notepad_loads_and_one_not_in_utf8_is_named(tmp_path):
    """Notepad puts a byte order mark before UTF-8 text (tomllib reads it as "Invalid statement"), or saves
    "Unicode" as UTF-16."""
    (tmp_path / "cmdb_ci_network.toml").write_bytes(b"\xef\xbb\xbf" + VALID.replace("\n", "\r\n").encode())
    assert list(load_mappings(tmp_path).mappings) == ["cmdb_ci_network"]
    (tmp_path / "cmdb_ci_network.toml").write_bytes(VALID.encode("utf-16"))
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert info.value.problems == [f"{tmp_path / 'cmdb_ci_network.toml'}: not UTF-8 text (byte 1 is not UTF-8): "
                                   "save the file as UTF-8"]


def test_two_resources_under_one_identity_are_a_warning_and_one_resource_seen_twice_is_not(tmp_path):
    """An identity template that leaves out the region: the VPCs of two regions clash, and the second would
    be lost without a word."""
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID.replace(":{$region}:", "::"))
    mappings = load_mappings(tmp_path)
    vpc = {"VpcId": "vpc-1", "CidrBlock": "10.0.0.0/16"}
    twice = Inventory(records=[Record(ACCOUNT, "us-east-1", "ec2:vpc", vpc), Record(ACCOUNT, "us-east-1", "ec2:vpc", vpc)])
    result = map_inventory(twice, mappings)
    assert len(result.cis) == 1 and result.warnings == []
    clash = Inventory(records=[Record(ACCOUNT, "us-east-1", "ec2:vpc", vpc),
                               Record(ACCOUNT, "eu-west-1", "ec2:vpc", {**vpc, "VpcId": "vpc-1"}),
                               Record(ACCOUNT, "ap-south-1", "ec2:vpc", {**vpc, "VpcId": "vpc-1"})])
    VALUED = VALID.replace(":{$region}:", "::").replace('name = "VpcId"', 'name = { template = "{VpcId} in {$region}" }')
    (tmp_path / "cmdb_ci_network.toml").write_text(VALUED)
    result = map_inventory(clash, load_mappings(tmp_path))
    assert [ci.fields["name"] for ci in result.cis] == ["vpc-1 in us-east-1"]
    assert result.warnings == [
        f"cmdb_ci_network: 2 resource(s) map to an identity that another resource has already, with other values "
        f"(e.g. arn:aws:ec2::{ACCOUNT}:vpc/vpc-1): only the first of each is written. Make the identity unique in "
        "cmdb_ci_network.toml (a correlation_id template without the region or the account?)"]


def test_the_commented_lookup_example_of_the_instance_file_loads_once_uncommented(tmp_path):
    """The example a CMDB admin copies from must not rot."""
    import re
    import shutil

    from connector.mapping.load import builtin_mappings_dir
    from connector.models import Lookup

    folder = tmp_path / "mappings"
    shutil.copytree(builtin_mappings_dir(), folder, ignore=shutil.ignore_patterns("__*"))
    path = folder / "cmdb_ci_vm_instance.toml"
    text, count = re.subn(r"^# (owned_by|support_group) = ", r"\1 = ", path.read_text(), flags=re.M)
    assert count == 2
    path.write_text(text)
    assert load_mappings(folder).lookups == {"cmdb_ci_vm_instance": {
        "owned_by": Lookup("sys_user", "email"), "support_group": Lookup("sys_user_group", "name", "active=true")}}
