"""approve: a fresh plan cut down to the changes of a reviewed plan, compared as the report lists them."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from connector.reconcile.approve import ApprovedPlan, approve, refusal
from connector.reconcile.plan import CIChange, KeyValueChange, Plan, RelationChange
from connector.report.json_report import change_entry, option_flags, run_options

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


INSTANCE = "https://acme.service-now.com"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def plan_report(**overrides) -> dict:
    return {"run_id": "plan-1", "mode": "plan", "instance": INSTANCE, "finished_at": "2026-12-02T09:00:00+00:00",
            "options": run_options(), "changes": [change_entry(update("a", "web-a"))], **overrides}


def why(report: dict, options: dict | None = None, max_age_hours: float = 72) -> str | None:
    return refusal("plan-1.json", report, instance=INSTANCE, options=options or run_options(), now=NOW,
                   max_age_hours=max_age_hours)


def test_a_plan_of_this_instance_made_with_the_same_options_and_recent_is_approved():
    assert why(plan_report()) is None
    forced = run_options(force=True, shard=(2, 4), only_accounts=frozenset({"222222222222", "111111111111"}))
    # the saved inventory a plan read is no scope option: a run may reconcile live AWS against its review
    assert why(plan_report(options={**forced, "inventory": "saved.jsonl"}), forced) is None


def test_the_options_a_plan_was_made_with_are_the_command_line_that_gives_them():
    options = run_options(force=True, shard=(2, 4), only_accounts=frozenset({"222222222222", "111111111111"}),
                          retire_accounts=frozenset({"333333333333"}))
    assert option_flags(json.loads(json.dumps(options))) == [
        "--force", "--shard", "2/4", "--account", "111111111111", "--account", "222222222222",
        "--retire-account", "333333333333"]
    assert option_flags(run_options()) == [] and option_flags({}) == []


@pytest.mark.parametrize("planned, run, said", [
    (run_options(force=True), run_options(), "made with --force, this run with none."),
    (run_options(), run_options(force=True), "made with none of --force, --shard, --account, --retire-account, "
                                             "this run with --force."),
    (run_options(shard=(1, 2)), run_options(shard=(2, 2)), "made with --shard 1/2, this run with --shard 2/2."),
    (run_options(only_accounts=frozenset({"111111111111"})), run_options(),
     "made with --account 111111111111, this run with none."),
    (run_options(retire_accounts=frozenset({"111111111111"})), run_options(retire_accounts=frozenset({"2" * 12})),
     "made with --retire-account 111111111111, this run with --retire-account 222222222222."),
])
def test_a_run_with_other_scope_or_guard_options_than_its_plan_is_refused(planned, run, said):
    reason = why(plan_report(options=json.loads(json.dumps(planned))), run)
    assert reason == (f"plan-1.json: the plan was {said} A run's guards and scope are those of its options: give it "
                      "the plan's")


def test_a_plan_older_than_approval_max_age_hours_is_refused_and_0_takes_any_age():
    old = plan_report(finished_at="2026-11-28T11:00:00+00:00")  # 97 hours before NOW
    assert why(old) == ("plan-1.json: a plan of 2026-11-28T11:00:00+00:00, 97 hours old: "
                        "reconcile.approval_max_age_hours is 72. Review a new plan")
    assert why(old, max_age_hours=100) is None and why(old, max_age_hours=0) is None
    assert why(plan_report(finished_at="2026-11-28T11:00:00"), max_age_hours=96) is not None  # no zone: UTC


@pytest.mark.parametrize("overrides, said", [
    ({"mode": "run"}, "plan-1.json: the report of a 'run', whose changes were made already"),
    ({"instance": "https://other.service-now.com"}, "plan-1.json: a plan of https://other.service-now.com, not of "
                                                    f"servicenow.instance_url ({INSTANCE})"),
    ({"options": None}, "plan-1.json: the report does not say what options the plan was made with"),
])
def test_a_report_that_cannot_be_approved_is_refused_with_the_reason(overrides, said):
    assert why(plan_report(**overrides)).startswith(said)
