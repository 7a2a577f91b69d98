"""apply through a recording writer: order, failures kept, the rest goes on."""

from __future__ import annotations

import threading

import pytest

from connector.errors import ServiceNowPermissionError
from connector.models import OK, Account, Inventory, Scope
from connector.reconcile.apply import apply_plan, describe
from connector.servicenow.cmdb import WriteOp, WriteResult
from connector.reconcile.plan import CIChange, Plan, RelationChange, TablePolicy
from connector.report.json_report import build_report
from connector.mapping.transform import MapResult
from connector.run import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, exit_code_for

VM, DC = "cmdb_ci_vm_instance", "cmdb_ci_aws_datacenter"
POLICIES = {t: TablePolicy(t, "correlation_id", ("s",), {}, {}) for t in (VM, DC)}


class RecordingWriter:
    """A CmdbWriter that records what it is asked, and refuses some creates."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.calls: list[tuple] = []
        self.refuse = refuse
        self.lock = threading.Lock()

    def write_many(self, ops: list[WriteOp]) -> list[WriteResult]:
        return [self._one(op) for op in ops]

    def _one(self, op: WriteOp) -> WriteResult:
        with self.lock:
            if op.table == "cmdb_rel_ci":
                call = ("delete_relation", op.sys_id) if op.method == "DELETE" else (
                    "create_relation", op.payload["parent"], op.payload["child"], op.payload["type"])
            elif op.method == "POST":
                call = ("create_ci", op.table, op.match["correlation_id"])
            else:
                call = ("update_ci", op.table, op.sys_id, op.payload)
            self.calls.append(call)
        if op.method == "POST" and op.match.get("correlation_id") in self.refuse:
            return WriteResult(error=str(ServiceNowPermissionError("ServiceNow refused the request: Operation Failed", status=403)))
        if op.method == "POST":
            return WriteResult(sys_id="sys-" + (op.match.get("correlation_id") or "rel"))
        return WriteResult(sys_id=op.sys_id)


def sample_plan() -> Plan:
    plan = Plan()
    plan.sys_ids[(DC, "dc")] = "sys-dc"
    plan.changes = [
        CIChange("create", VM, "vm1", None, {"correlation_id": ("", "vm1"), "name": ("", "a")}),
        CIChange("create", VM, "vm2", None, {"correlation_id": ("", "vm2")}),
        CIChange("update", VM, "vm3", "sys-vm3", {"name": ("old", "new")}),
    ]
    plan.relation_changes = [
        RelationChange("create", "Hosted on::Hosts", (VM, "vm1"), (DC, "dc")),
        RelationChange("create", "Hosted on::Hosts", (VM, "vm2"), (DC, "dc")),
        RelationChange("delete", "Hosted on::Hosts", (VM, "vm3"), (DC, "old"), "rel-old"),
    ]
    return plan


def test_relations_follow_their_ends_and_a_failure_does_not_stop_the_rest():
    writer = RecordingWriter(refuse={"vm2"})
    result = apply_plan(sample_plan(), writer, POLICIES, {"Hosted on::Hosts": "t-hosted"}, workers=4)
    kinds = [c[0] for c in writer.calls]
    assert max(i for i, k in enumerate(kinds) if k.endswith("_ci")) < min(i for i, k in enumerate(kinds) if "relation" in k)
    assert ("update_ci", VM, "sys-vm3", {"name": "new"}) in writer.calls
    assert ("create_relation", "sys-vm1", "sys-dc", "t-hosted") in writer.calls
    assert ("delete_relation", "rel-old") in writer.calls
    failed = {describe(o.change): o.error for o in result.failed}
    assert failed == {
        f"create {VM} vm2": "ServiceNow refused the request: Operation Failed | HTTP 403",
        "create cmdb_rel_ci vm2 [Hosted on::Hosts] dc": f"end {VM} vm2 was not created",
    }


def test_report_counts_applied_and_lists_failures():
    writer = RecordingWriter(refuse={"vm2"})
    plan = sample_plan()
    result = apply_plan(plan, writer, POLICIES, {"Hosted on::Hosts": "t-hosted"}, workers=2)
    inventory = Inventory(accounts=[Account("111122223333", "a")], scopes=[Scope("111122223333", "r", "s", OK)])
    report = build_report(run_id="r", mode="run", started_at="t0", finished_at="t1", exit_code=1, inventory=inventory,
                          plan=plan, applied=result, problems=[], errors=[], tables=[VM, DC])
    assert report["tables"][VM] == {"created": 1, "updated": 1, "retired": 0, "revived": 0, "refreshed": 0,
                                 "unchanged": 0}
    assert report["relations"] == {"created": 1, "deleted": 1, "unchanged": 0}
    assert len(report["errors"]) == 2
    statuses = sorted(c["status"] for c in report["changes"])
    assert statuses == ["applied"] * 4 + ["failed"] * 2
    assert exit_code_for(inventory, MapResult(), result) == EXIT_FAILED


def test_exit_codes():
    ok = Inventory(accounts=[Account("1", "a")], scopes=[Scope("1", "r", "s", OK)])
    assert exit_code_for(ok, MapResult(), None) == EXIT_OK
    one_denied = Inventory(accounts=[Account("1", "a"), Account("2", "b", "denied", "AccessDenied")],
                           scopes=[Scope("1", "r", "s", OK)])
    assert exit_code_for(one_denied, MapResult(), None) == EXIT_PARTIAL
    # nothing collected at all (every account denied, or every scope throttled): not partial, failed
    denied = Inventory(accounts=[Account("1", "a", "denied", "AccessDenied")])
    assert exit_code_for(denied, MapResult(), None) == EXIT_FAILED
    # the Organization's structure read (without any account's role), and still no account: failed
    structure_only = Inventory(accounts=[Account("1", "a", "denied", "AccessDenied")],
                               scopes=[Scope("1", "global", "organizations:organizational_unit", OK)])
    assert exit_code_for(structure_only, MapResult(), None) == EXIT_FAILED
    # a shard whose one account is suspended: its own CI written (its scope), nothing else to collect: ok
    closed_only = Inventory(accounts=[Account("1", "a", "skipped", "account state is SUSPENDED", closed=True)],
                            scopes=[Scope("1", "global", "organizations:account", OK)])
    assert exit_code_for(closed_only, MapResult(), None) == EXIT_OK
    all_throttled = Inventory(accounts=[Account("1", "a")], scopes=[Scope("1", "r", "s", "throttled")] * 2)
    assert exit_code_for(all_throttled, MapResult(), None) == EXIT_FAILED
    assert exit_code_for(Inventory(), MapResult(), None) == EXIT_OK  # no account targeted (an empty shard)
    no_accounts = Inventory(scopes=[Scope("1", "r", "s", "denied")])  # a saved inventory without its accounts
    assert exit_code_for(no_accounts, MapResult(), None) == EXIT_FAILED
    only_skipped = Inventory(accounts=[Account("1", "a")], scopes=[Scope("1", "r", "s", "skipped")])  # a region not enabled
    assert exit_code_for(only_skipped, MapResult(), None) == EXIT_OK
    skipped = Inventory(accounts=[Account("1", "a", "skipped", "SUSPENDED")], scopes=[Scope("2", "r", "s", "skipped")])
    assert exit_code_for(skipped, MapResult(), None) == EXIT_OK
    throttled = Inventory(accounts=[Account("1", "a")], scopes=[Scope("1", "r", "s", "throttled"), Scope("1", "q", "s", OK)])
    assert exit_code_for(throttled, MapResult(), None) == EXIT_PARTIAL


def test_an_unexpected_error_still_writes_a_report(tmp_path, monkeypatch):
    from connector.inventory import write_inventory
    from connector.run import run_pipeline
    from connector.sandbox.synthetic import synthetic_inventory
    from connector.settings import load_settings
    import connector.run as run_module

    path = tmp_path / "inventory.jsonl"
    write_inventory(synthetic_inventory(accounts=1, instances=1), path)

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(run_module.Mapper, "add", broken)
    monkeypatch.setattr(run_module.CmdbReader, "check_login", lambda self, table: None)  # no instance here
    settings = load_settings(None, {"aws": {"external_id": "xx-yy"},
                                    "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"},
                                    "report": {"output_dir": str(tmp_path / "reports")}})
    outcome = run_pipeline(settings, inventory_file=path)
    assert outcome.exit_code == EXIT_FAILED
    assert outcome.report["errors"] == ["unexpected KeyError: 'a bug'"]
    assert outcome.report_path.exists() and outcome.report_path.with_suffix(".html").exists()


def test_retire_account_is_refused_for_an_account_that_a_run_collects(tmp_path):
    """Only an account no run collects may have its CIs retired wholesale: one the configuration no longer
    targets; the inventory's accounts, those it says are targeted, and aws.accounts say."""
    from connector.errors import UsageError
    from connector.inventory import write_inventory
    from connector.run import check_retire_accounts, run_pipeline
    from connector.sandbox.synthetic import synthetic_inventory
    from connector.settings import load_settings

    def settings(**aws):
        return load_settings(None, {"aws": {"external_id": "xx-yy", **aws},
                                    "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"},
                                    "report": {"output_dir": str(tmp_path / "reports")}})

    inventory = synthetic_inventory(accounts=1, instances=1)
    (target,) = [a.account_id for a in inventory.accounts]
    member, gone = "222222222222", "333333333333"
    inventory.targeted = frozenset({target, member})  # member: another shard's
    accounts = inventory.accounts
    check_retire_accounts(frozenset({gone}), accounts, inventory.targeted, settings())  # not refused
    check_retire_accounts(frozenset({member}), accounts, inventory.targeted, settings(exclude_accounts=[member]))
    for retire, config, why in ((target, {}, "a target of this run"), (member, {}, "targeted by this configuration"),
                                (gone, {"accounts": [gone]}, "in aws.accounts")):
        with pytest.raises(UsageError, match=f"--retire-account {retire}: the account is {why}"):
            check_retire_accounts(frozenset({retire, gone}), accounts, inventory.targeted, settings(**config))
    # run --inventory checks it on the inventory read, before ServiceNow is asked anything
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    with pytest.raises(UsageError, match=f"--retire-account {member}: the account is targeted by this configuration"):
        run_pipeline(settings(), inventory_file=path, retire_accounts=frozenset({member}))
