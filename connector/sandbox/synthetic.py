"""Synthetic inventories, shaped like real API output, for tests and benchmarks.

No AWS call is made: the records are what collection would have produced.
"""

from __future__ import annotations

from ..models import OK, Account, Inventory, Record, Scope


def synthetic_inventory(accounts: int = 2, regions: tuple[str, ...] = ("us-east-1",),
                        vpcs: int = 1, subnets: int = 2, instances: int = 5) -> Inventory:
    """``accounts`` accounts; per region ``vpcs`` VPCs, each with ``subnets`` subnets of ``instances`` instances."""
    inventory = Inventory()
    for a in range(accounts):
        account_id = f"{100000000000 + a:012d}"
        raw = {"Id": account_id, "Name": f"account-{a}", "State": "ACTIVE",
               "Organization": {"Id": "o-synthetic", "MasterAccountId": f"{100000000000:012d}"}}
        inventory.accounts.append(Account(account_id, raw["Name"], OK, None, raw))
        inventory.scopes.append(Scope(account_id, "global", "organizations:account"))
        inventory.records.append(Record(account_id, "global", "organizations:account", raw))
        for region in regions:
            for source in ("ec2:region", "ec2:vpc", "ec2:subnet", "ec2:instance"):
                inventory.scopes.append(Scope(account_id, region, source))
            inventory.records.append(Record(account_id, region, "ec2:region", {"RegionName": region}))
            for v in range(vpcs):
                vpc_id = f"vpc-{a:04x}{v:04x}"
                inventory.records.append(Record(account_id, region, "ec2:vpc", {
                    "VpcId": vpc_id, "CidrBlock": f"10.{v}.0.0/16", "State": "available",
                    "Tags": [{"Key": "Name", "Value": f"vpc-{v}"}]}))
                for s in range(subnets):
                    subnet_id = f"subnet-{a:04x}{v:04x}{s:04x}"
                    inventory.records.append(Record(account_id, region, "ec2:subnet", {
                        "SubnetId": subnet_id, "VpcId": vpc_id, "CidrBlock": f"10.{v}.{s}.0/24",
                        "AvailableIpAddressCount": 250, "Tags": []}))
                    for i in range(instances):
                        inventory.records.append(Record(account_id, region, "ec2:instance", {
                            "InstanceId": f"i-{a:04x}{v:04x}{s:04x}{i:06x}", "InstanceType": "t3.micro",
                            "State": {"Code": 16, "Name": "running"}, "SubnetId": subnet_id, "VpcId": vpc_id,
                            "PrivateIpAddress": f"10.{v}.{s}.{i % 250 + 4}",
                            "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 2},
                            "InstanceTypeSpecs": {"DefaultVCpus": 2, "SizeInMiB": 1024},
                            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
                                "Status": "attached", "VolumeId": f"vol-{a:04x}{v:04x}{s:04x}{i:06x}"}}],
                            "VolumeSizes": [8],
                            "NetworkInterfaces": [{"SubnetId": subnet_id, "Status": "in-use"}],
                            "Tags": [{"Key": "Name", "Value": f"app-{i}"}]}))
    return inventory
