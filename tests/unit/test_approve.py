"""approve: a fresh plan cut down to the changes of a reviewed plan, compared as the report lists them."""

from __future__ import annotations

import json

from connector.reconcile.approve import ApprovedPlan, approve, malformed
from connector.reconcile.plan import CIChange, KeyValueChange, Plan, RelationChange
from connector.report.json_report import change_entry

VM, DC = "cmdb_ci_vm_instance", "cmdb_ci_aws_datacenter"
DC_KEY = (DC, "arn:aws:ec2:us-east-1:111111111111:region/us-east-1")


def update(identity: str, name: str, stamp: str = "2026-12-01 10:00:00") -> CIChange:
    return CIChange("update", VM, identity, f"sys-{identity}", {"name": ("old", name), "last_discovered": ("", stamp)})


def create(identity: str, stamp: str = "2026-12-01 10:00:00") -> CIChange:
    return CIChange("create", VM, identity, None, {"name": ("", identity), "object_id": ("", identity),
                                                 "last_discovered": ("", stamp), "first_discovered": ("", stamp)})


def hosted(identity: str) -> RelationChange:
    return RelationChange("create", "Hosted on::Hosts", (VM, identity), DC_KEY)


def tag(identity: str, value: str) -> KeyValueChange:
    return KeyValueChange("create", (VM, identity), "env", "", value)


def reviewed(*changes) -> ApprovedPlan:
    """As run --approved reads it: the plan's report, through JSON."""
    report = json.loads(json.dumps({"run_id": "plan-1", "mode": "plan",
                                    "changes": [change_entry(change) for change in changes]}))
    return ApprovedPlan.of_report("reports/plan-1.json", report)


def test_only_the_changes_reviewed_are_kept_the_run_stamps_aside():
    approved = reviewed(update("a", "web-a"), create("b"), hosted("b"), tag("b", "prod"))
    fresh = Plan(changes=[update("a", "web-a", stamp="2026-12-02 08:00:00"), create("b", stamp="2026-12-02 08:00:00"),
                          update("c", "web-c")],
                 relation_changes=[hosted("b"), hosted("d")], key_value_changes=[tag("b", "prod")])
    kept, approval = approve(fresh, approved)
    assert [(c.action, c.identity) for c in kept.changes] == [("update", "a"), ("create", "b")]
    assert kept.changes[0].diff["last_discovered"] == ("", "2026-12-02 08:00:00")  # the fresh plan's own stamps
    assert kept.relation_changes == [hosted("b")] and kept.key_value_changes == [tag("b", "prod")]
    assert (approval.approved, approval.kept, approval.held, approval.no_longer_due) == (4, 4, 2, 0)
    assert approval.held_by_kind == {VM: {"update": 1}, "cmdb_rel_ci": {"create": 1}}
    [guard] = kept.guards
    assert guard.startswith("2 change(s) that the approved plan plan-1 (reports/plan-1.json) does not hold as they "
                            f"are planned now, not made: 1 update in {VM}, 1 create in cmdb_rel_ci "
                            f"(e.g. update {VM} c;")
    assert kept.warnings == [] and fresh.changes[2] == update("c", "web-c")  # the fresh plan left as it was


def test_a_change_that_differs_from_the_one_reviewed_is_held_and_the_one_reviewed_is_no_longer_due():
    approved = reviewed(update("a", "web-a"))
    kept, approval = approve(Plan(changes=[update("a", "web-a2")]), approved)
    assert kept.changes == []
    assert (approval.kept, approval.held, approval.no_longer_due) == (0, 1, 1)
    [warning] = kept.warnings
    assert warning.startswith("1 change(s) of the approved plan plan-1 (reports/plan-1.json) no longer due, not made: "
                              "AWS or the CMDB changed since that plan, or the change was made already (e.g. "
                              f"update {VM} a)")


def test_a_create_held_back_holds_back_the_relations_and_tags_of_its_ci_even_when_they_were_reviewed():
    approved = reviewed(create("b"), hosted("b"), tag("b", "prod"))
    changed = CIChange("create", VM, "b", None, {"name": ("", "renamed"), "object_id": ("", "b")})
    kept, approval = approve(Plan(changes=[changed], relation_changes=[hosted("b")],
                                  key_value_changes=[tag("b", "prod")]), approved)
    assert (kept.changes, kept.relation_changes, kept.key_value_changes) == ([], [], [])
    assert (VM, "b") in kept.held
    assert (approval.kept, approval.held, approval.no_longer_due) == (0, 3, 1)  # the create reviewed is gone
    assert "(a CI whose create is held back holds back its relations and tags too)" in kept.guards[0]


def test_a_refresh_is_made_whether_reviewed_or_not_and_a_guard_of_the_fresh_plan_is_named():
    refresh = CIChange("refresh", VM, "a", "sys-a", {"last_discovered": ("2026-11-20 10:00:00", "2026-12-02 08:00:00")})
    fresh = Plan(changes=[refresh], guards=["cmdb_ci_vm_instance: would retire 40 of 50 CIs ..."])
    kept, approval = approve(fresh, reviewed(CIChange("retire", VM, "z", "sys-z", {"install_status": ("1", "7")})))
    assert kept.changes == [refresh] and approval.held == 0
    assert kept.guards == fresh.guards  # nothing held by the approval: no guard of its own
    assert "since that plan, or a guard holds it back (see the guards), or the change" in kept.warnings[0]


def test_a_tag_update_and_a_relation_delete_are_compared_by_what_they_write():
    delete = RelationChange("delete", "Hosted on::Hosts", (VM, "a"), DC_KEY, sys_id="rel-1")
    change = KeyValueChange("update", (VM, "a"), "env", "dev", "prod", sys_id="kv-1")
    approved = reviewed(delete, change)
    kept, approval = approve(Plan(relation_changes=[delete], key_value_changes=[change]), approved)
    assert (kept.relation_changes, kept.key_value_changes, approval.held) == ([delete], [change], 0)
    other = KeyValueChange("update", (VM, "a"), "env", "dev", "test", sys_id="kv-1")
    kept, approval = approve(Plan(key_value_changes=[other]), approved)
    assert kept.key_value_changes == [] and approval.held == 1


def test_entries_an_approval_cannot_read_are_found_by_index():
    good = change_entry(update("a", "web-a"))
    assert malformed([good, {**good, "fields": None}]) == []
    broken = [{"action": "update"}, {**good, "fields": {"name": "b"}}, {**good, "fields": ["name"]}]
    assert malformed([good, *broken]) == [1, 2, 3]
    assert malformed({"not": "a list"}) == [0] and malformed([None]) == [0]
