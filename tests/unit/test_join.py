"""``[source.join]``: a few calls per unit whose answers join its items (the instance types' vCPUs and
memory), and the ``product`` transform that makes an instance's vCPUs of its CPU options."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from connector.aws.collect import SharedAnswers, collect_inventory, fetch_items
from connector.aws.sessions import RoleSettings, SessionPool
from connector.errors import MappingError
from connector.mapping.functions import make_transform
from connector.mapping.load import MappingSet, load_mappings
from connector.mapping.transform import map_record
from connector.models import DENIED, OK, Account, Record

from .test_mapping import JOIN, VALID  # the wrong joins are among test_mapping's INVALID_CASES

ACCOUNT, REGION = "111122223333", "eu-west-1"
ROLE = RoleSettings("CMDBReadRole", "ext-id-123", "CMDBInventorySession", 3600)


def instance_mapping():
    return load_mappings().mappings["cmdb_ci_vm_instance"]


def running(instance_id: str, instance_type: str, **extra) -> dict:
    """An item of describe_instances (whose lists AWS always gives, empty or not)."""
    return {"InstanceId": instance_id, "InstanceType": instance_type, "State": {"Name": "running"},
            "Placement": {"AvailabilityZone": f"{REGION}a"}, "BlockDeviceMappings": [], "NetworkInterfaces": [],
            **extra}


def type_info(name: str, vcpus: int, mib: int) -> dict:
    return {"InstanceType": name, "VCpuInfo": {"DefaultVCpus": vcpus, "DefaultCores": vcpus},
            "MemoryInfo": {"SizeInMiB": mib}, "CurrentGeneration": True}


@pytest.mark.parametrize("value, expected", [
    ([4, 2], 8), ([2], 2), (["4", 2], 8), (3, 3), ([4, None], None), ([None], None), ([], None), (None, None),
    ([4, "x"], None), ([True, 2], None),
])
def test_product_multiplies_every_member_and_a_member_unknown_leaves_it_unknown(value, expected):
    assert make_transform("product")(value) == expected


@mock_aws
def test_instances_carry_their_types_vcpus_and_memory_from_one_call_per_unit():
    ec2 = boto3.client("ec2", region_name=REGION)
    image = "ami-12345678"
    ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="m5.large")
    ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    calls = []
    ec2.meta.events.register("before-parameter-build.ec2.DescribeInstanceTypes",
                             lambda params, **_: calls.append(sorted(params["InstanceTypes"])))
    mapping = instance_mapping()
    items = fetch_items(ec2, mapping.source)
    assert calls == [["m5.large", "t3.micro"]]  # the distinct types, once
    specs = {item["InstanceType"]: item["InstanceTypeSpecs"] for item in items}
    assert specs == {"m5.large": {"DefaultVCpus": 2, "SizeInMiB": 8192},
                     "t3.micro": {"DefaultVCpus": 2, "SizeInMiB": 1024}}
    fields = {ci.fields["short_description"]: (ci.fields["cpus"], ci.fields["memory"])
              for ci in (map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", item)) for item in items)}
    assert fields == {"m5.large": ("2", "8192"), "t3.micro": ("2", "1024")}


def test_the_values_go_per_call_at_a_time_and_a_type_without_an_entry_leaves_its_fields_unknown():
    mapping = instance_mapping()
    join = mapping.source.joins[0]
    source = MappingSet({"x": mapping}).mappings["x"].source
    object.__setattr__(join, "per_call", 2)  # three types: two calls
    try:
        client = boto3.client("ec2", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        with Stubber(client) as stub:
            stub.add_response("describe_instances", {"Reservations": [{"Instances": [
                running("i-1", "c5.xlarge", CpuOptions={"CoreCount": 2, "ThreadsPerCore": 1}),
                running("i-2", "m5.large"), running("i-3", "m5.large"), running("i-4", "z9.huge")]}]})
            stub.add_response("describe_instance_types", {"InstanceTypes": [type_info("c5.xlarge", 4, 8192),
                                                                            type_info("m5.large", 2, 8192)]},
                              {"InstanceTypes": ["c5.xlarge", "m5.large"]})
            stub.add_response("describe_instance_types", {"InstanceTypes": []}, {"InstanceTypes": ["z9.huge"]})
            items = fetch_items(client, source)
            stub.assert_no_pending_responses()
    finally:
        object.__setattr__(join, "per_call", 100)
    cis = {item["InstanceId"]: map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", item)) for item in items}
    # the instance's own CPU options win over its type's default: 2 cores x 1 thread, not 4 vCPUs
    assert (cis["i-1"].fields["cpus"], cis["i-1"].fields["memory"]) == ("2", "8192")
    assert (cis["i-2"].fields["cpus"], cis["i-2"].fields["memory"]) == ("2", "8192")
    # no entry for its type: vCPUs and memory unknown, so a CI keeps what it holds (written on a create only)
    assert "InstanceTypeSpecs" not in items[3]
    assert set(cis["i-4"].create_only) == {"cpus", "memory"}
    assert "cpus" not in cis["i-2"].create_only


def test_a_value_two_different_entries_claim_is_left_unknown():
    join = instance_mapping().source.joins[0]
    index = join.index([{"InstanceTypes": [type_info("m5.large", 2, 8192), type_info("m5.large", 2, 4096),
                                           type_info("t3.micro", 2, 1024), type_info("t3.micro", 2, 1024)]}])
    assert index == {"t3.micro": {"DefaultVCpus": 2, "SizeInMiB": 1024}}
    items = join.merge([running("i-1", "m5.large"), running("i-2", "t3.micro"), "not-an-object"], index)
    assert "InstanceTypeSpecs" not in items[0] and items[1]["InstanceTypeSpecs"]["SizeInMiB"] == 1024
    assert items[2] == "not-an-object"


def seed_instances(account: str, region: str, *instance_types: str) -> None:
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/seed", RoleSessionName="seed")["Credentials"]
    ec2 = boto3.client("ec2", region_name=region, aws_access_key_id=creds["AccessKeyId"],
                       aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    for instance_type in instance_types:
        ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType=instance_type)


def opened_pool(*accounts: str) -> SessionPool:
    pool = SessionPool(boto3.Session(), ROLE, "us-east-1")
    assert all(pool.open(account)[0] == OK for account in accounts)
    return pool


def collect_instances(pool: SessionPool, source, accounts: list[str], regions: list[str]):
    return collect_inventory(pool, [Account(a, a, raw={"Id": a, "Name": a}) for a in accounts],
                             {source.name: source}, regions, max_workers=1, max_per_account=1)


@pytest.mark.parametrize("shared", [True, False])
@mock_aws
def test_a_shared_join_asks_each_value_once_per_region_not_once_per_account(shared):
    first, second = accounts = ["111122223333", "444455556666"]
    regions = ["eu-west-1", "us-east-1"]
    for account in accounts:
        for region in regions:
            seed_instances(account, region, "m5.large", "t3.micro")
    seed_instances(second, "eu-west-1", "c5.xlarge")  # a type the first account's unit did not ask for
    pool = opened_pool(*accounts)
    asked: list[tuple[str, list[str]]] = []
    for account in accounts:
        pool.get(account).session.register(
            "before-parameter-build.ec2.DescribeInstanceTypes",
            lambda params, account=account, **_: asked.append((account, sorted(params["InstanceTypes"]))))
    source = instance_mapping().source
    object.__setattr__(source.joins[0], "shared", shared)
    try:  # one unit at a time, accounts in turn: first's eu-west-1, second's, first's us-east-1, second's
        inventory = collect_instances(pool, source, accounts, regions)
    finally:
        object.__setattr__(source.joins[0], "shared", True)
    both = ["m5.large", "t3.micro"]
    if shared:  # the second account asks only for what its region has not been asked yet; in us-east-1, nothing
        assert asked == [(first, both), (second, ["c5.xlarge"]), (first, both)]
    else:
        assert asked == [(first, both), (second, ["c5.xlarge", *both]), (first, both), (second, both)]
    specs = {(r.account_id, r.region, r.resource["InstanceType"]): r.resource.get("InstanceTypeSpecs")
             for r in inventory.records}
    assert len(specs) == 9 and all(specs.values())
    assert specs[(accounts[1], "eu-west-1", "c5.xlarge")]["DefaultVCpus"] == 4


@mock_aws
def test_units_collected_together_ask_a_shared_join_once_per_region():
    accounts = ["111122223333", "444455556666", "777788889999"]
    for account in accounts:
        seed_instances(account, REGION, "m5.large", "t3.micro")
    pool = opened_pool(*accounts)
    asked: list[list[str]] = []

    def slow(params, **_):  # each answer takes a while: the other units start meanwhile
        asked.append(sorted(params["InstanceTypes"]))
        time.sleep(0.3)

    for account in accounts:
        pool.get(account).session.register("before-parameter-build.ec2.DescribeInstanceTypes", slow)
    inventory = collect_inventory(pool, [Account(a, a, raw={"Id": a, "Name": a}) for a in accounts],
                                  {"ec2:instance": instance_mapping().source}, [REGION], max_workers=3,
                                  max_per_account=1)
    assert asked == [["m5.large", "t3.micro"]]
    assert len(inventory.records) == 6 and all(r.resource["InstanceTypeSpecs"] for r in inventory.records)


class _Asker(threading.Thread):
    """A unit asking the shared answers for ``wanted``: each fetch is recorded, and the first one can be
    held until ``go`` (and made to fail)."""

    def __init__(self, shared: SharedAnswers, wanted: set[str], fetched: list, hold: bool = False,
                 fail: bool = False):
        super().__init__(daemon=True)
        self.shared, self.wanted, self.fetched, self.hold, self.fail = shared, wanted, fetched, hold, fail
        self.fetching, self.go = threading.Event(), threading.Event()
        self.result: dict | None = None
        self.error: Exception | None = None

    def fetch(self, values: set[str]) -> dict:
        self.fetched.append((self.name, sorted(values)))
        self.fetching.set()
        if self.hold:
            self.hold = False
            assert self.go.wait(10)
            if self.fail:
                raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}},
                                  "DescribeInstanceTypes")
        return {value: f"entry of {value}" for value in values if value != "gone"}

    def run(self) -> None:
        try:
            self.result = self.shared.answers(("eu-west-1", "join"), self.wanted, self.fetch)
        except ClientError as exc:
            self.error = exc


@pytest.mark.parametrize("first_fails", [False, True])
def test_a_value_another_unit_is_asking_is_waited_for_and_asked_again_only_if_that_unit_failed(first_fails):
    """The first units of a run start together: the second must not ask again what the first is asking."""
    shared, fetched = SharedAnswers(), []
    first = _Asker(shared, {"m5.large", "t3.micro", "gone"}, fetched, hold=True, fail=first_fails)
    first.name = "first"
    first.start()
    assert first.fetching.wait(10)  # the first unit is asking, its answer not in yet
    second = _Asker(shared, {"m5.large", "gone", "c5.xlarge"}, fetched)
    second.name = "second"
    second.start()
    assert second.fetching.wait(10)  # it asked for what no one is asking, and waits for the rest
    assert second.is_alive() and second.result is None
    first.go.set()
    first.join(10), second.join(10)
    assert not first.is_alive() and not second.is_alive()
    if first_fails:  # the first unit fails; the second asks what the first could not, and has every answer
        assert fetched == [("first", ["gone", "m5.large", "t3.micro"]), ("second", ["c5.xlarge"]),
                           ("second", ["gone", "m5.large"])]
        assert first.error is not None and first.result is None
    else:
        assert fetched == [("first", ["gone", "m5.large", "t3.micro"]), ("second", ["c5.xlarge"])]
        assert first.result == {"m5.large": "entry of m5.large", "t3.micro": "entry of t3.micro"}
    assert second.error is None
    assert second.result == {"m5.large": "entry of m5.large", "c5.xlarge": "entry of c5.xlarge"}
    asked_before = len(fetched)
    third = _Asker(shared, {"t3.micro", "gone"}, fetched)
    third.name = "third"
    third.run()  # a value asked and not found ("gone") is not asked again; one only a failed unit asked is
    assert third.result == {"t3.micro": "entry of t3.micro"}
    assert fetched[asked_before:] == ([("third", ["t3.micro"])] if first_fails else [])


@mock_aws
def test_a_join_call_refused_fails_the_unit_so_nothing_of_it_is_retired():
    seed_instances(ACCOUNT, REGION, "m5.large")
    pool = opened_pool(ACCOUNT)

    def refuse(**_):
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized to "
                                     "perform: ec2:DescribeInstanceTypes"}}, "DescribeInstanceTypes")

    pool.get(ACCOUNT).session.register("before-call.ec2.DescribeInstanceTypes", refuse)
    inventory = collect_instances(pool, instance_mapping().source, [ACCOUNT], [REGION])
    [scope] = inventory.scopes
    assert (scope.source, scope.status) == ("ec2:instance", DENIED)
    assert "DescribeInstanceTypes" in scope.error
    assert inventory.records == []


def test_an_instance_saved_before_the_joins_keeps_the_cmdbs_vcpus_memory_and_disks_size():
    """An inventory collected by an older version, or another tool's, has no specs and no volume sizes:
    unknown, not empty."""
    ci = map_record(instance_mapping(), Record(ACCOUNT, REGION, "ec2:instance", running("i-1", "m5.large")))
    assert not {"cpus", "memory", "disks_size"} & set(ci.fields)
    assert set(ci.create_only) == {"cpus", "memory", "disks_size"}


def test_an_instance_counts_its_disks_and_nics_and_one_with_none_has_zero():
    """disks and nics count the lists of describe_instances; an empty list is 0, known (its known_when,
    ``BlockDeviceMappings != `null```, says true), and an item without the list does not know them."""
    mapping = instance_mapping()

    def mapped(*without: str, **extra):
        item = {k: v for k, v in running("i-1", "m5.large", **extra).items() if k not in without}
        return map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", item))

    ci = mapped(BlockDeviceMappings=[{"DeviceName": "/dev/xvda"}, {"DeviceName": "/dev/sdf"}],
                NetworkInterfaces=[{"NetworkInterfaceId": "eni-1"}])
    assert (ci.fields["disks"], ci.fields["nics"]) == ("2", "1")
    ci = mapped(BlockDeviceMappings=[], NetworkInterfaces=[])
    assert (ci.fields["disks"], ci.fields["nics"]) == ("0", "0")
    assert not {"disks", "nics"} & set(ci.create_only)
    ci = mapped("BlockDeviceMappings", "NetworkInterfaces")  # saved by another tool: the CMDB's counts kept
    assert "disks" not in ci.fields and "nics" not in ci.fields
    assert {"disks", "nics"} <= set(ci.create_only)


def test_two_files_of_one_source_must_join_alike(tmp_path):
    (tmp_path / "cmdb_ci_network.toml").write_text(VALID.replace("[fields]", JOIN + "[fields]"))
    (tmp_path / "cmdb_ci_network.other.toml").write_text(VALID)
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert any("source.name: 'ec2:vpc' is also defined, differently" in p for p in info.value.problems)


@mock_aws
def test_instances_carry_the_sizes_of_their_volumes_from_one_filtered_call_per_unit():
    """The second join of the instance file: describe_volumes by the volume-id filter, the values being a
    list for each instance (its BlockDeviceMappings' volume ids), the sizes kept in their order."""
    ec2 = boto3.client("ec2", region_name=REGION)
    image = "ami-12345678"
    big = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large", BlockDeviceMappings=[
        {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}, {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 50}}])
    small = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro", BlockDeviceMappings=[
        {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 20}}])
    ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=500)  # attached to none: not asked for
    calls = []
    ec2.meta.events.register("before-parameter-build.ec2.DescribeVolumes",
                             lambda params, **_: calls.append(params["Filters"]))
    mapping = instance_mapping()
    items = {item["InstanceId"]: item for item in fetch_items(ec2, mapping.source)}
    ids = {i: [m["Ebs"]["VolumeId"] for m in item["BlockDeviceMappings"]] for i, item in items.items()}
    assert calls == [[{"Name": "volume-id", "Values": sorted(v for vs in ids.values() for v in vs)}]]
    big_id, small_id = big["Instances"][0]["InstanceId"], small["Instances"][0]["InstanceId"]
    sizes = {8: ids[big_id][[m["DeviceName"] for m in items[big_id]["BlockDeviceMappings"]].index("/dev/sda1")]}
    assert items[big_id]["VolumeSizes"] == [8 if v == sizes[8] else 50 for v in ids[big_id]]
    assert items[small_id]["VolumeSizes"] == [20]
    fields = {i: map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", item)).fields for i, item in items.items()}
    assert (fields[big_id]["disks"], fields[big_id]["disks_size"]) == ("2", "58")
    assert (fields[small_id]["disks"], fields[small_id]["disks_size"]) == ("1", "20")


def test_a_volume_not_in_the_answer_leaves_that_instances_sizes_unknown_and_none_is_zero():
    mapping = instance_mapping()
    join = mapping.source.joins[1]

    def disk(volume: str) -> dict:
        return {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": volume, "Status": "attached"}}

    index = join.index([{"Volumes": [{"VolumeId": "vol-1", "Size": 8}, {"VolumeId": "vol-2", "Size": 30}]}])
    items = join.merge([running("i-1", "m5.large", BlockDeviceMappings=[disk("vol-2"), disk("vol-1")]),
                        running("i-2", "m5.large", BlockDeviceMappings=[disk("vol-1"), disk("vol-gone")]),
                        running("i-3", "m5.large"),  # no volume: instance store only
                        {k: v for k, v in running("i-4", "m5.large").items() if k != "BlockDeviceMappings"}], index)
    assert [item.get("VolumeSizes") for item in items] == [[30, 8], None, [], None]
    cis = [map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", item)) for item in items]
    assert [ci.fields.get("disks_size") for ci in cis] == ["38", None, "0", None]
    assert "disks_size" in cis[1].create_only and "disks_size" in cis[3].create_only  # the CMDB's value kept
    assert join.chunks(join.values(items[:2])) == [["vol-1", "vol-2", "vol-gone"]]
    assert join.call_params(["vol-1"]) == {"Filters": [{"Name": "volume-id", "Values": ["vol-1"]}]}


def test_a_filter_join_adds_its_filter_to_those_of_its_params():
    # per_call up to EC2's 200 filter values a call, with those of params (one here)
    (join,) = load_join('filter = "volume-id"\nparams = { Filters = [{ Name = "status", Values = ["in-use"] }] }\n'
                        'per_call = 199\n')
    assert join.per_call == 199
    assert join.call_params(["vol-1"]) == {"Filters": [{"Name": "status", "Values": ["in-use"]},
                                                       {"Name": "volume-id", "Values": ["vol-1"]}]}


def load_join(lines: str) -> tuple:
    from pathlib import Path
    from tempfile import TemporaryDirectory

    spec = ('[source.join]\noperation = "describe_volumes"\non = "Volumes"\nitems = "Volumes"\nmatch = "VolumeId"\n'
            'key = "Sizes"\n' + lines)
    with TemporaryDirectory() as folder:
        (Path(folder) / "cmdb_ci_network.toml").write_text(VALID.replace("[fields]", spec + "[fields]"))
        return load_mappings(Path(folder)).mappings["cmdb_ci_network"].source.joins


@mock_aws
def test_a_join_with_many_keeps_every_entry_of_a_value_and_none_is_an_empty_list(tmp_path):
    """One-to-many: the sizes of the volumes attached to each instance, asked by attachment.instance-id (the
    instance file asks by the volume ids its instances list instead; both give the same sizes)."""
    from pathlib import Path

    ec2 = boto3.client("ec2", region_name=REGION)
    image = "ami-12345678"
    two = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, BlockDeviceMappings=[
        {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}, {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 50}}])
    bare = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    for volume in ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [bare]}])["Volumes"]:
        ec2.detach_volume(VolumeId=volume["VolumeId"], InstanceId=bare)  # an instance with no volume attached
    import shutil

    from connector.mapping.load import builtin_mappings_dir

    folder = Path(tmp_path) / "mappings"
    shutil.copytree(builtin_mappings_dir(), folder, ignore=shutil.ignore_patterns("__*"))
    text = (Path(instance_mapping().file).read_text()
            .replace('filter = "volume-id"\non = "BlockDeviceMappings[].Ebs.VolumeId"\nitems = "Volumes"\n'
                     'match = "VolumeId"\n',
                     'filter = "attachment.instance-id"\non = "InstanceId"\nitems = "Volumes"\n'
                     'match = "Attachments[0].InstanceId"\nmany = true\n'))
    assert "many = true" in text
    (folder / "cmdb_ci_vm_instance.toml").write_text(text)
    mapping = load_mappings(folder).mappings["cmdb_ci_vm_instance"]
    items = {item["InstanceId"]: item for item in fetch_items(ec2, mapping.source)}
    big = two["Instances"][0]["InstanceId"]
    assert sorted(items[big]["VolumeSizes"]) == [8, 50] and items[bare]["VolumeSizes"] == []
    disks = {i: map_record(mapping, Record(ACCOUNT, REGION, "ec2:instance", item)).fields["disks_size"]
             for i, item in items.items()}
    assert disks == {big: "58", bare: "0"}
    by_ids = {item["InstanceId"]: item.get("VolumeSizes") for item in fetch_items(ec2, instance_mapping().source)}
    assert sorted(by_ids[big]) == [8, 50]
    # the index keeps every entry of a value, in the answer's order; merge gives a value without any []
    join = mapping.source.joins[1]
    index = join.index([{"Volumes": [{"VolumeId": "v1", "Size": 1, "Attachments": [{"InstanceId": "i-1"}]},
                                     {"VolumeId": "v2", "Size": 2, "Attachments": [{"InstanceId": "i-1"}]}]}])
    assert index == {"i-1": [1, 2]}
    assert [i.get("VolumeSizes") for i in join.merge([running("i-1", "m5.large"), running("i-2", "m5.large"),
                                                      {"InstanceId": None}], index)] == [[1, 2], [], None]
