"""Property: for any inventory and any CMDB state, applying the plan and planning
again gives an empty plan (convergence), tags included, and nothing outside the
run's ok scopes or not owned is ever written."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.mapping.load import MappingSet, load_mappings
from connector.mapping.transform import map_inventory
from connector.models import DENIED, OK, ExistingCI, ExistingKeyValue, ExistingRelation, Inventory, Record, Scope
from connector.reconcile.plan import CREATE, PlanOptions, plan_changes
from connector.run import table_policies

DS = "AWS CMDB Connector"
ACCOUNTS = ["111111111111", "222222222222"]
REGION = "us-east-1"
MAPPINGS = load_mappings()
SOURCES = ("ec2:region", "ec2:vpc", "ec2:subnet", "ec2:instance")
SUBSET = MappingSet({n: m for n, m in MAPPINGS.mappings.items()
                     if n in ("cmdb_ci_aws_datacenter", "cmdb_ci_network", "cmdb_ci_cloud_subnet", "cmdb_ci_vm_instance")})
POLICIES = table_policies(SUBSET)
REL_TYPES = {"Hosted on::Hosts": "t1", "Contains::Contained by": "t2", "Located in::Houses": "t3"}

vpc_ids = st.sampled_from([f"vpc-{i}" for i in range(3)])
names = st.sampled_from(["a", "b", "c", None])
instances = st.fixed_dictionaries({
    "InstanceId": st.sampled_from([f"i-{i}" for i in range(6)]),
    "State": st.fixed_dictionaries({"Name": st.sampled_from(["running", "stopped", "pending"])}),
    "PrivateIpAddress": st.one_of(st.none(), st.sampled_from(["10.0.0.1", "10.0.0.2"])),
    "InstanceType": st.sampled_from(["t3.micro", "m5.large"]),
    "Tags": st.dictionaries(st.sampled_from(["Name", "env", "team"]), st.sampled_from(["web", "db"]), max_size=3)
              .map(lambda tags: [{"Key": k, "Value": v} for k, v in tags.items()]),
    "Placement": st.just({"AvailabilityZone": "us-east-1a"}),
})
vpcs = st.fixed_dictionaries({"VpcId": vpc_ids, "CidrBlock": st.sampled_from(["10.0.0.0/16", "10.1.0.0/16"])})
subnets = st.fixed_dictionaries({"SubnetId": st.sampled_from(["subnet-1", "subnet-2"]), "VpcId": vpc_ids,
                                 "CidrBlock": st.just("10.0.1.0/24"), "AvailableIpAddressCount": st.integers(0, 250)})


@st.composite
def inventories(draw):
    inventory = Inventory()
    for account in ACCOUNTS:
        status = draw(st.sampled_from([OK, OK, DENIED]))
        for source in SOURCES:
            inventory.scopes.append(Scope(account, REGION, source, status))
        if status != OK:
            continue
        inventory.records.append(Record(account, REGION, "ec2:region", {"RegionName": REGION}))
        for source, strategy in (("ec2:vpc", vpcs), ("ec2:subnet", subnets), ("ec2:instance", instances)):
            for item in draw(st.lists(strategy, max_size=4)):
                inventory.records.append(Record(account, REGION, source, item))
    return inventory


class MemoryCmdb:
    """Applies a plan to plain dicts, the way the Table API would: a name longer than ``name_length``
    is cut, as the instance cuts a value longer than its field."""

    def __init__(self, name_length: int | None = None):
        self.name_length = name_length
        self.cis: dict[str, dict[str, str]] = {}
        self.relations: dict[str, tuple[str, str, str]] = {}
        self.key_values: dict[str, tuple[str, str, str]] = {}  # sys_id -> (CI sys_id, key, value)
        self.written: list[str] = []
        self._next = 0

    def new_id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._next}"

    def existing(self) -> dict[str, list[ExistingCI]]:
        out: dict[str, list[ExistingCI]] = {}
        for sys_id, fields in self.cis.items():
            out.setdefault(fields["sys_class_name"], []).append(ExistingCI(fields["sys_class_name"], sys_id, dict(fields)))
        return out

    def apply(self, plan) -> None:
        sys_ids = dict(plan.sys_ids)
        for change in plan.changes:
            if change.action == CREATE:
                sys_id = self.new_id("s")
                self.cis[sys_id] = {"sys_id": sys_id, "sys_class_name": change.table, **self.fit(change.payload)}
                sys_ids[(change.table, change.identity)] = sys_id
            else:
                self.cis[change.sys_id].update(self.fit(change.payload))
            self.written.append(change.identity)
        for rel in plan.relation_changes:
            if rel.action == "delete":
                del self.relations[rel.sys_id]
            else:
                self.relations[self.new_id("r")] = (
                    sys_ids[rel.parent], sys_ids[rel.child], REL_TYPES[rel.type])
        for kv in plan.key_value_changes:
            if kv.action == "delete":
                del self.key_values[kv.sys_id]
            elif kv.action == "update":
                ci, key, _old = self.key_values[kv.sys_id]
                self.key_values[kv.sys_id] = (ci, key, kv.new)
            else:
                self.key_values[self.new_id("k")] = (sys_ids[kv.ci], kv.key, kv.new)

    def fit(self, payload: dict[str, str]) -> dict[str, str]:
        if self.name_length is None or "name" not in payload:
            return payload
        return {**payload, "name": payload["name"][: self.name_length]}

    def existing_relations(self) -> list[ExistingRelation]:
        return [ExistingRelation(k, p, c, t) for k, (p, c, t) in self.relations.items()]

    def existing_key_values(self) -> list[ExistingKeyValue]:
        return [ExistingKeyValue(k, ci, key, value) for k, (ci, key, value) in self.key_values.items()]


def plan_for(inventory: Inventory, cmdb: MemoryCmdb, now: str = ""):
    mapped = map_inventory(inventory, SUBSET, tags=True)
    # the lengths the connector reads from sys_dictionary: the same as the CMDB's own
    policies = POLICIES if cmdb.name_length is None else table_policies(
        SUBSET, {table: {"name": cmdb.name_length} for table in POLICIES})
    return plan_changes(mapped.cis, cmdb.existing(), inventory.scopes, mapped.problems, cmdb.existing_relations(),
                        REL_TYPES, policies, PlanOptions(DS, max_retire_fraction=1.0, now=now, last_discovered_days=7),
                        cmdb.existing_key_values())


@settings(max_examples=150, deadline=None)
@given(st.lists(inventories(), min_size=1, max_size=4), st.sampled_from([None, None, 2, 4]), st.booleans())
def test_apply_then_plan_again_is_empty_and_unknown_scopes_are_never_written(runs, name_length, stamped):
    """``stamped``: with last_discovered stamped, each run 8 days after the one before (so that the CIs
    a run leaves alone are stale at the next)."""
    cmdb = MemoryCmdb(name_length)
    foreign = {"sys_id": "foreign", "sys_class_name": "cmdb_ci_vm_instance", "discovery_source": "ServiceNow Discovery",
               "correlation_id": f"arn:aws:ec2:{REGION}:{ACCOUNTS[0]}:instance/i-foreign", "install_status": "1"}
    cmdb.cis["foreign"] = dict(foreign)
    cmdb.key_values["foreign-tag"] = ("foreign", "env", "theirs")
    # CIs made by hand, without correlation_id: either account's resource of that object_id may adopt them, and
    # when both want one in the same run, neither does (a datacenter's object_id is its region in every account)
    for sys_id, table, object_id in (("hand-dc", "cmdb_ci_aws_datacenter", REGION), ("hand-vm", "cmdb_ci_vm_instance", "i-0")):
        cmdb.cis[sys_id] = {"sys_id": sys_id, "sys_class_name": table, "discovery_source": "", "correlation_id": "",
                            "object_id": object_id, "name": "by hand", "install_status": "1"}
    for number, inventory in enumerate(runs):
        now = f"2026-12-{1 + 8 * number:02d} 00:00:00" if stamped else ""
        denied = {s.account_id for s in inventory.scopes if s.status != OK}
        before = {k: dict(v) for k, v in cmdb.cis.items()}
        tags_before = dict(cmdb.key_values)
        plan = plan_for(inventory, cmdb, now)
        cmdb.apply(plan)
        if any(change.note.startswith("adopted") for change in plan.changes):
            # An adopted CI gets its tags from the next run on (README): that run writes tags, and nothing else.
            tags_round = plan_for(inventory, cmdb, now)
            assert tags_round.changes == [] and tags_round.relation_changes == []
            cmdb.apply(tags_round)
        if stamped:  # every CI of the run's resources was seen now
            stamps = {f.get("correlation_id"): f.get("last_discovered") for f in cmdb.cis.values()}
            assert all(stamps[ci.identity] == now for ci in map_inventory(inventory, SUBSET).cis
                       if (ci.table, ci.identity) not in plan.held)
        # convergence: the same inventory plans nothing more
        again = plan_for(inventory, cmdb, now)
        assert again.changes == [] and again.relation_changes == [] and again.key_value_changes == []
        # every tag of every instance in the run is in the CMDB, once
        tags = {(cmdb.cis[ci]["correlation_id"], key): value for ci, key, value in cmdb.key_values.values()}
        assert len(tags) == len(cmdb.key_values)
        for ci in map_inventory(inventory, SUBSET, tags=True).cis:
            assert {k: v for (arn, k), v in tags.items() if arn == ci.identity} == (ci.tags or {})
        # a denied account's tags are exactly as they were
        for sys_id, row in tags_before.items():
            if any(f":{a}:" in cmdb.cis.get(row[0], {}).get("correlation_id", "") for a in denied):
                assert cmdb.key_values.get(sys_id) == row
        # unknown is not empty: a denied account's CIs are exactly as they were
        for sys_id, fields in before.items():
            if any(f":{a}:" in fields.get("correlation_id", "") for a in denied):
                assert cmdb.cis[sys_id] == fields
        # never owned, never touched
        assert cmdb.cis["foreign"] == foreign and cmdb.key_values["foreign-tag"] == ("foreign", "env", "theirs")
        # no duplicates
        keys = [f.get("correlation_id") for f in cmdb.cis.values() if f.get("correlation_id")]
        assert len(keys) == len(set(keys))
