"""The HTML page's notes: every kind shown, and long lists cut with their count."""

from __future__ import annotations

import re

import pytest

from connector.models import MappingProblem
from connector.report.json_report import build_report
from connector.report.outputs import render_html


def report_with(problems: int, guards: list[str]) -> dict:
    report = build_report(
        run_id="20261125T000000Z-abcdef", mode="run", started_at="2026-11-25T00:00:00+00:00",
        finished_at="2026-11-25T00:01:00+00:00", exit_code=3, inventory=None, plan=None, applied=None,
        problems=[MappingProblem(("111122223333", "us-east-1", "ec2:instance"), "cmdb_ci_vm_instance",
                                 f"cmdb_ci_vm_instance.toml: correlation_id is empty for item 'i-{n}'")
                  for n in range(problems)],
        errors=[], tables=["cmdb_ci_vm_instance"])
    report["guards"] = guards
    return report


def test_mapping_problems_are_on_the_page_and_a_long_list_is_cut_with_its_count():
    page = render_html(report_with(150, ["cmdb_ci_vm_instance.ip_address: would empty it on 20 of 20 CIs"]))
    assert "<h2>Mapping problems (150)</h2>" in page
    assert ("<li>cmdb_ci_vm_instance 111122223333/us-east-1/ec2:instance: cmdb_ci_vm_instance.toml: "
            "correlation_id is empty for item &#x27;i-0&#x27;</li>") in page
    assert "i-99&#x27;" in page and "i-100&#x27;" not in page
    assert "<li>... and 50 more: see the JSON report</li>" in page
    assert "<h2>Guards (1)</h2>" in page and "The blast-radius guard held writes back: see Guards." in page
    assert "<h1>PARTIAL</h1>" in page  # exit code 3 keeps its word


def test_a_run_whose_guard_held_writes_back_is_not_a_green_page():
    report = report_with(0, ["cmdb_ci_vm_instance: would retire 6 of 8 owned CIs"])
    report["exit_code"] = 0
    page = render_html(report)
    assert "<h1>OK, WRITES HELD BACK</h1>" in page and "background:#ef6c00" in page
    report["guards"] = []
    assert "<h1>OK</h1>" in render_html(report) and "background:#2e7d32" in render_html(report)


def test_a_run_of_an_approved_plan_says_so_and_blames_the_blast_radius_guard_only_for_its_own_holds():
    report = report_with(0, ["3 change(s) that the approved plan p-1 (plan.json) does not hold ..."])
    report["exit_code"] = 0
    report["approval"] = {"file": "plan.json", "run_id": "p-1", "approved": 5, "kept": 4, "held": 3,
                          "no_longer_due": 1, "held_by_kind": {"cmdb_ci_vm_instance": {"update": 3}}}
    page = render_html(report)
    assert ("Only the changes of the approved plan p-1: 4 made as it showed them, 3 it does not show held back, 1 of "
            "it no longer due.") in page
    assert "<h1>OK, WRITES HELD BACK</h1>" in page and "blast-radius" not in page
    report["guards"].append("cmdb_ci_vm_instance: would retire 6 of 8 owned CIs")
    assert "The blast-radius guard held writes back: see Guards." in render_html(report)
    report["approval"] = {**report["approval"], "held": 0}
    report["guards"] = report["guards"][1:]
    assert "The blast-radius guard held writes back: see Guards." in render_html(report)


def test_a_plan_with_changes_says_how_to_make_them_once_reviewed():
    report = report_with(0, [])
    report["mode"] = "plan"
    assert "--approved" not in render_html(report)
    report["changes"] = [{"action": "update", "table": "cmdb_ci_vm_instance", "identity": "arn:x", "sys_id": "s",
                          "fields": {"name": {"old": "a", "new": "b"}}, "note": "", "status": "planned"}]
    assert ("Once reviewed, cmdb-connector run --approved report-20261125T000000Z-abcdef.json (in the reports folder) "
            "makes these changes and no other.") in render_html(report)


def test_no_section_for_what_did_not_happen():
    page = render_html(report_with(0, []))
    assert "Mapping problems" not in page and "Guards" not in page


def test_warnings_are_named_in_the_headline_and_no_empty_table_of_scopes_not_collected():
    report = report_with(0, [])
    report["exit_code"] = 0
    report["scopes"] = [{"account_id": "111122223333", "region": "us-east-1", "source": "ec2:instance", "status": "ok"}]
    report["warnings"] = ["cmdb_ci_vm_instance.ipaddress: the class has no such field on this instance"]
    page = render_html(report)
    assert "<h1>OK</h1>" in page and "1 warning(s) to read: see Warnings." in page  # still green
    assert '<p id="scopes">None: every scope was collected.</p>' in page and '<table id="scopes">' not in page
    report["scopes"][0]["status"] = "throttled"
    report["warnings"] = []
    page = render_html(report)
    assert '<table id="scopes">' in page and "<td>throttled</td>" in page and "warning(s) to read" not in page


def test_the_terminal_lists_the_classes_with_writes_and_nothing_for_a_run_that_writes_none():
    from connector.report.json_report import change_lines

    report = report_with(0, [])
    report["tables"] = {"cmdb_ci_network": {"created": 0, "updated": 0, "retired": 0, "revived": 0, "refreshed": 0,
                                            "unchanged": 4},
                        "cmdb_ci_vm_instance": {"created": 2, "updated": 1, "retired": 3, "revived": 0, "refreshed": 0,
                                                "unchanged": 9}}
    report["relations"] = {"created": 5, "deleted": 1, "unchanged": 7}
    assert change_lines(report) == ["changed:", "  cmdb_ci_vm_instance: 2 created, 1 updated, 3 retired",
                                    "  relations: 5 created, 1 deleted"]
    report["mode"] = "plan"
    report["key_values"] = {"created": 0, "updated": 2, "deleted": 0, "unchanged": 1}
    assert change_lines(report)[0] == "would change:" and change_lines(report)[-1] == "  tags: 2 updated"
    report["tables"]["cmdb_ci_vm_instance"] = {"created": 0, "updated": 0, "retired": 0, "revived": 0,
                                               "refreshed": 0, "unchanged": 15}
    report["relations"] = {"created": 0, "deleted": 0, "unchanged": 12}
    report["key_values"] = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 3}
    assert change_lines(report) == []
    # the fields the updates set, most first: the first five, and how many more
    report["tables"]["cmdb_ci_network"]["updated"] = 9
    report["drifted_fields"] = {"cmdb_ci_network": {f"f{n}": 9 - n for n in range(7)}}
    assert change_lines(report) == ["would change:", "  cmdb_ci_network: 9 updated (f0 9, f1 8, f2 7, f3 6, f4 5, 2 more)"]
    report["drifted_fields"] = {"cmdb_ci_network": {"cidr": 9}}
    assert change_lines(report)[1] == "  cmdb_ci_network: 9 updated (cidr 9)"


def test_a_long_change_list_shows_those_to_look_at_first_and_says_where_the_rest_are():
    from connector.report.outputs import CHANGES_SHOWN

    def change(action, n, status="applied"):
        return {"action": action, "table": "cmdb_ci_vm_instance", "identity": f"i-{action}-{n}", "sys_id": None,
                "fields": {}, "note": "", "status": status}

    report = report_with(0, [])
    report["changes"] = ([change("create", n) for n in range(CHANGES_SHOWN)] + [change("retire", n) for n in range(3)]
                         + [change("update", 0, "failed"), change("refresh", 0)])
    page = render_html(report)
    rows = re.findall(r'<tr class="change" data-action="(\w+)" data-search="(\w+) cmdb_ci_vm_instance (\S+)', page)
    assert len(rows) == CHANGES_SHOWN
    assert [identity for _a, _b, identity in rows[:4]] == ["i-update-0", "i-retire-0", "i-retire-1", "i-retire-2"]
    assert "i-refresh-0" not in page and f"i-create-{CHANGES_SHOWN - 5}" in page and f"i-create-{CHANGES_SHOWN - 4}" not in page
    assert (f"of {CHANGES_SHOWN} shown (the first {CHANGES_SHOWN} of {CHANGES_SHOWN + 5}: failed writes, then "
            "retires and deletes") in page and "every change is in report-20261125T000000Z-abcdef.csv" in page

    report["changes"] = report["changes"][-5:]  # few: all of them, in the report's order, and no note
    page = render_html(report)
    assert [i for _a, _b, i in re.findall(r'<tr class="change" data-action="(\w+)" data-search="(\w+) '
                                          r'cmdb_ci_vm_instance (\S+)', page)] == [
        "i-retire-0", "i-retire-1", "i-retire-2", "i-update-0", "i-refresh-0"]
    assert "of 5 shown</p>" in page


@pytest.mark.parametrize("text, expected", [
    (None, "cannot read the report: No such file or directory"),
    ('{"run_id": "x"}', "not a cmdb-connector JSON report (no mode, tables, relations, changes, accounts)"),
    ("5", "not a cmdb-connector JSON report (TypeError: "),
    ("{oops", "not a cmdb-connector JSON report (JSONDecodeError: "),
])
def test_a_report_file_that_cannot_be_rendered_says_why(tmp_path, text, expected):
    from connector.errors import UsageError
    from connector.report.outputs import load_report

    path = tmp_path / "report.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_report(path)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_an_interrupted_run_has_a_page_of_its_own():
    report = report_with(0, [])
    report["exit_code"] = 130
    page = render_html(report)
    assert "<h1>INTERRUPTED</h1>" in page and "those not begun are left for the next run" in page


def test_a_value_a_spreadsheet_would_take_for_a_formula_is_text_in_the_csv():
    import csv
    import io

    from connector.report.outputs import render_csv

    report = report_with(0, [])
    report["changes"] = [{"action": "update", "table": "cmdb_ci_vm_instance", "identity": "arn:aws:ec2:1",
                          "sys_id": "abc", "status": "applied", "note": "",
                          "fields": {"name": {"old": "web-01", "new": '=HYPERLINK("http://x","y")'},
                                     "short_description": {"old": "@SUM(A1)", "new": "-1+2"},
                                     "state": {"old": "on", "new": "off"}}}]
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert [(r["field"], r["old"], r["new"]) for r in rows] == [
        ("name", "web-01", '\'=HYPERLINK("http://x","y")'), ("short_description", "'@SUM(A1)", "'-1+2"),
        ("state", "on", "off")]


def test_a_change_note_is_on_the_page_and_in_the_csv():
    """What plan says of a change (an adoption, what IRE would do instead) is shown with it, not only in the JSON."""
    import csv
    import io

    from connector.report.outputs import render_csv

    report = report_with(0, [])
    note = "IRE would update the CI 0123 it identifies, rather than create one"
    report["changes"] = [{"action": "create", "table": "cmdb_ci_vm_instance", "identity": "arn:aws:ec2:1",
                          "sys_id": None, "status": "planned", "note": note,
                          "fields": {"name": {"old": "", "new": "web-01"}}}]
    page = render_html(report)
    assert f"name:  \u2192 web-01 | note: {note}</td>" in page
    assert note.lower() in page  # in the row's search text too
    (row,) = csv.DictReader(io.StringIO(render_csv(report)))
    assert row["note"] == note


def test_accounts_no_longer_targeted_have_a_section_and_a_gauge():
    from connector.report.outputs import render_prometheus

    report = report_with(0, [])
    assert "no longer targeted" not in render_html(report)
    assert "cmdb_connector_untargeted_accounts 0\n" in render_prometheus(report)
    assert "cmdb_connector_unresolved_lookups 0\n" in render_prometheus(report)
    report["unresolved_lookups"] = [{"table": "t", "identity": "i", "field": "owned_by", "value": "x",
                                     "reason": "names no record", "lookup": "sys_user.email"}]
    assert "cmdb_connector_unresolved_lookups 1\n" in render_prometheus(report)
    assert "cmdb_connector_untargeted_account_cis{" not in render_prometheus(report)
    report["untargeted_accounts"] = [{"account_id": "999988887777",
                                      "cis": {"cmdb_ci_aws_datacenter": 2, "cmdb_ci_vm_instance": 5}}]
    page = render_html(report)
    assert "<h2>Accounts no longer targeted</h2>" in page
    assert "<td>999988887777</td><td>7</td><td>cmdb_ci_aws_datacenter: 2, cmdb_ci_vm_instance: 5</td>" in page
    metrics = render_prometheus(report)
    assert "cmdb_connector_untargeted_accounts 1\n" in metrics
    assert 'cmdb_connector_untargeted_account_cis{account="999988887777"} 7\n' in metrics


def test_the_fields_that_drifted_are_counted_per_class_on_the_page_and_as_gauges():
    """The one-shot drift report's summary: which fields the CMDB holds otherwise than AWS, on how many CIs.
    The run's own last_discovered stamp is no drift, and neither is a failed write or a create."""
    from connector.reconcile.apply import ApplyResult, Outcome
    from connector.reconcile.plan import CIChange, Plan
    from connector.report.outputs import render_prometheus

    vm, stamp = "cmdb_ci_vm_instance", ("2026-11-01 00:00:00", "2026-12-01 00:00:00")
    changes = [
        CIChange("update", vm, "a", "1", {"name": ("old", "web-1"), "memory": ("4096", "8192"), "last_discovered": stamp}),
        CIChange("update", vm, "b", "2", {"memory": ("", "8192")}),
        CIChange("update", vm, "c", "3", {"memory": ("1", "2"), "cpus": ("1", "2")}),  # its write fails
        CIChange("update", "cmdb_ci_network", "d", "4", {"cidr": ("10.0.0.0/8", "10.0.0.0/16")}),
        CIChange("refresh", vm, "e", "5", {"last_discovered": stamp}),
        CIChange("create", vm, "f", None, {"name": ("", "web-2"), "memory": ("", "8192")}),
    ]
    plan = Plan(changes=changes)

    def report(applied=None):
        return build_report(run_id="20261201T000000Z-abcdef", mode="run" if applied else "plan",
                            started_at="2026-12-01T00:00:00+00:00", finished_at="2026-12-01T00:01:00+00:00",
                            exit_code=0, inventory=None, plan=plan, applied=applied, problems=[], errors=[],
                            tables=[vm, "cmdb_ci_network"])

    planned = report()
    assert planned["drifted_fields"] == {"cmdb_ci_network": {"cidr": 1},
                                         vm: {"memory": 3, "cpus": 1, "name": 1}}  # most first, then by name
    assert list(planned["drifted_fields"][vm]) == ["memory", "cpus", "name"]
    outcomes = [Outcome(c, c.sys_id or "new", "HTTP 403" if c.identity == "c" else None) for c in changes]
    ran = report(ApplyResult(outcomes=outcomes))
    assert ran["drifted_fields"][vm] == {"memory": 2, "name": 1}  # c's write failed: the CMDB still differs
    page = render_html(ran)
    assert "<h2>Fields that drifted</h2>" in page
    assert "<td>cmdb_ci_vm_instance</td><td>memory</td><td>2</td>" in page
    metrics = render_prometheus(ran)
    assert 'cmdb_connector_drifted_fields{table="cmdb_ci_vm_instance",field="memory"} 2\n' in metrics
    assert 'field="last_discovered"' not in metrics
    quiet = report_with(0, [])
    assert "Fields that drifted" not in render_html(quiet) and "drifted_fields{" not in render_prometheus(quiet)


def test_the_cis_waiting_to_be_retired_have_a_section_and_a_gauge():
    from connector.report.outputs import render_prometheus

    report = report_with(0, [])
    assert "retired later" not in render_html(report) and "cmdb_connector_retire_pending 0\n" in render_prometheus(report)
    report["retire_pending"] = [{"table": "cmdb_ci_vm_instance", "identity": f"arn:i-{n}", "sys_id": f"s{n}",
                                 "gone_since": "2026-12-01 00:00:00", "retire_from": "2026-12-02 00:00:00"}
                                for n in range(102)]
    page = render_html(report)
    assert "<h2>Gone from AWS, retired later</h2>" in page
    assert "<td>cmdb_ci_vm_instance</td><td>arn:i-0</td><td>2026-12-01 00:00:00</td><td>2026-12-02 00:00:00</td>" in page
    assert "arn:i-99<" in page and "arn:i-100<" not in page and "... and 2 more: see the JSON report" in page
    assert "cmdb_connector_retire_pending 102\n" in render_prometheus(report)


def test_a_report_that_every_section_fills_is_of_the_shape_the_report_command_reads(tmp_path):
    """build_report and shape.ReportShape held together: every section filled (each kind of change, a failed
    write, a failed scope, guards, retires held, accounts no longer targeted, an approval), written as a run
    writes it, then read back by load_report, which would refuse it if the two had drifted apart."""
    import orjson

    from connector.models import Account, Inventory, Scope
    from connector.reconcile.apply import ApplyResult, Outcome
    from connector.reconcile.approve import Approval
    from connector.reconcile.plan import CIChange, KeyValueChange, Plan, RelationChange
    from connector.report.json_report import run_options, write_report
    from connector.report.outputs import load_report, render_csv, render_prometheus
    from connector.report.shape import shape_problems

    vm, net = ("cmdb_ci_vm_instance", "arn:i-1"), ("cmdb_ci_network", "arn:vpc-1")
    plan = Plan(
        changes=[CIChange("create", vm[0], vm[1], None, {"name": ("", "web-1")}),
                 CIChange("update", net[0], net[1], "s2", {"cidr": ("10.0.0.0/8", "10.0.0.0/16")}, note="adopted"),
                 CIChange("retire", vm[0], "arn:i-2", "s3", {"install_status": ("1", "7")}),
                 CIChange("revive", vm[0], "arn:i-3", "s4", {"install_status": ("7", "1")}),
                 CIChange("refresh", vm[0], "arn:i-4", "s5", {"last_discovered": ("2026-11-01 00:00:00",
                                                                                 "2026-12-01 00:00:00")})],
        relation_changes=[RelationChange("create", "Hosted on::Hosts", vm, net),
                          RelationChange("delete", "Contains::Contained by", net, vm, "r1")],
        key_value_changes=[KeyValueChange("create", vm, "env", "", "prod"),
                           KeyValueChange("update", vm, "team", "a", "b", "k1"),
                           KeyValueChange("delete", vm, "old", "x", "", "k2")],
        duplicates=[{"table": vm[0], "identity": "arn:i-5", "sys_ids": ["s6", "s7"]}],
        guards=["cmdb_ci_vm_instance: would retire 9 of 10 owned CIs"], warnings=["a warning"],
        absent={(vm[0], "arn:i-6"): ("s8", "2026-11-30 00:00:00")},
        retire_pending={(vm[0], "arn:i-6"): "2026-12-02 00:00:00"})
    plan.untargeted["999988887777"]["cmdb_ci_vm_instance"] += 2
    inventory = Inventory(accounts=[Account("111122223333", "prod"), Account("444455556666", "dev")],
                          scopes=[Scope("111122223333", "us-east-1", "ec2:instance", "ok"),
                                  Scope("444455556666", "us-east-1", "ec2:instance", "denied", "AccessDenied")])
    changes = [*plan.changes, *plan.relation_changes, *plan.key_value_changes]
    applied = ApplyResult(outcomes=[Outcome(c, "new", "HTTP 403" if i == 0 else None) for i, c in enumerate(changes)])
    report = build_report(
        run_id="20261201T000000Z-abcdef", mode="run", started_at="2026-12-01T00:00:00+00:00",
        finished_at="2026-12-01T00:01:00+00:00", exit_code=1, inventory=inventory, plan=plan, applied=applied,
        problems=[MappingProblem(("111122223333", "us-east-1", "ec2:instance"), vm[0], "x.toml: empty")],
        errors=["an error"], tables=[vm[0], net[0]], timings={"plan": 0.1}, cpu_timings={"plan": 0.1},
        instance="https://acme.service-now.com",
        unresolved_lookups=[{"table": vm[0], "identity": vm[1], "field": "owned_by", "value": "a@b",
                             "reason": "names no record", "lookup": "sys_user.email"}],
        approval=Approval("plan.json", "20261130T000000Z-fedcba", 4, 3, 1, 1, {vm[0]: {"create": 1}}).as_dict(),
        options=run_options(force=True, shard=(1, 2), only_accounts=frozenset({"111122223333"})))
    assert all(report[key] for key in ("accounts", "scopes", "changes", "drifted_fields", "retire_pending",
                                       "duplicates", "untargeted_accounts", "guards", "warnings", "approval",
                                       "mapping_problems", "unresolved_lookups", "errors"))
    assert shape_problems(report) == []
    path = write_report(report, tmp_path)
    read = load_report(path)
    assert read == orjson.loads(orjson.dumps(report))
    assert render_html(read) and render_csv(read) and render_prometheus(read)


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["tables"]["cmdb_ci_vm_instance"].update(created="5"),
     "tables.cmdb_ci_vm_instance.created: Input should be a valid integer (got '5')"),
    (lambda r: r.pop("errors"), "errors: Field required"),
    (lambda r: r.update(started_at="yesterday"), "started_at: not an ISO 8601 time (got 'yesterday')"),
    (lambda r: r["accounts"].append({"account_id": "111122223333", "status": "ok"}),
     "accounts[0].name: Field required"),
    (lambda r: r["changes"].append({"action": "update", "table": "t", "identity": "i", "fields": {"name": "b"}}),
     "changes[0].fields.name: Input should be a JSON object (got 'b')"),
    # what run --approved reads of a reviewed plan: each change's action, table, identity, fields; its time
    (lambda r: r["changes"].append({"action": "update"}),
     "changes[0].table: Field required\n  changes[0].identity: Field required"),
    (lambda r: r["changes"].append({"action": "update", "table": "t", "identity": "i", "fields": ["name"]}),
     "changes[0].fields: Input should be a JSON object"),
    (lambda r: r["changes"].append(None), "changes[0]: Input should be a JSON object (got None)"),
    (lambda r: r.update(changes={"not": "a list"}), "changes: Input should be a valid list"),
    (lambda r: r.update(finished_at="yesterday"), "finished_at: not an ISO 8601 time (got 'yesterday')"),
    (lambda r: r["relations"].update(created=True), "relations.created: Input should be a valid integer (got True)"),
])
def test_a_report_not_of_the_shape_is_refused_naming_the_key_not_rendered_into_a_traceback(tmp_path, change,
                                                                                           expected):
    from connector.errors import UsageError
    from connector.report.outputs import load_report

    report = report_with(0, [])
    change(report)
    path = tmp_path / "report.json"
    path.write_text(__import__("json").dumps(report))
    with pytest.raises(UsageError) as info:
        load_report(path)
    assert str(info.value) == (f"{path}: not a report this version of cmdb-connector can read (another version's, "
                               f"or edited?):\n  {expected}")
