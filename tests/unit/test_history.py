"""Writes that do not stick: this run's changes set against the previous run's."""

from __future__ import annotations

import os

import orjson

from connector.report.history import previous_run_report, repeated_writes

VM = "cmdb_ci_vm_instance"


def change(action, identity, status="applied", table=VM, **fields):
    return {"action": action, "table": table, "identity": identity, "sys_id": "s-" + identity, "status": status,
            "fields": {name: {"old": old, "new": new} for name, (old, new) in fields.items()}, "note": ""}


def previous(*changes):
    return {"run_id": "20261125T010000Z-aaaaaa", "mode": "run", "changes": list(changes)}


def test_an_update_that_repeats_the_same_value_on_the_same_field_is_named_once_per_field():
    before = previous(change("update", "arn:1", name=("x", "web-01")), change("update", "arn:2", name=("x", "web-02")),
                      change("update", "arn:3", state=("off", "on")))
    now = [change("update", "arn:1", "planned", name=("x", "web-01"), state=("off", "on")),
           change("update", "arn:2", "planned", name=("y", "web-02")),
           change("update", "arn:3", "planned", state=("off", "on"))]
    warnings = repeated_writes(before, now)
    assert len(warnings) == 2
    name, state = warnings
    assert name.startswith(f"{VM}.name: written again on 2 record(s)") and "20261125T010000Z-aaaaaa" in name
    assert "e.g. arn:1: it reads 'x' again, written 'web-01'. Something in the instance changes it back" in name
    assert state.startswith(f"{VM}.state: written again on 1 record(s)")  # arn:1's state was not written last run
    assert "e.g. arn:3" in state


def test_a_different_value_a_failed_write_or_another_action_is_no_repeat():
    before = previous(change("update", "arn:1", name=("x", "old-name")),
                      change("update", "arn:2", "failed", name=("x", "web-02")),
                      change("create", "arn:3", name=("", "web-03")))
    now = [change("update", "arn:1", "planned", name=("old-name", "new-name")),  # AWS changed: a new value
           change("update", "arn:2", "planned", name=("x", "web-02")),  # last run's write failed
           change("update", "arn:3", "planned", name=("changed by hand", "web-03"))]  # created, then edited once
    assert repeated_writes(before, now) == []
    assert repeated_writes(previous(), now) == []


def test_a_ci_created_again_and_a_relation_created_again_are_named():
    rel = "cmdb_rel_ci"
    before = previous(change("create", "arn:1", name=("", "web-01")),
                      change("create", "arn:1 [Hosted on::Hosts] arn:dc", table=rel, type=("", "Hosted on::Hosts")))
    now = [change("create", "arn:1", "planned", name=("", "web-01")),
           change("create", "arn:1 [Hosted on::Hosts] arn:dc", "planned", table=rel, type=("", "Hosted on::Hosts"))]
    created, related = repeated_writes(before, now)
    assert created.startswith(f"{VM}: 1 record(s) created again that the previous run") and "duplicates" in created
    assert related.startswith(f"{rel}: 1 record(s) created again")


def test_a_long_value_is_shown_cut_with_its_length():
    long = "d" * 300
    before = previous(change("update", "arn:1", short_description=("", long)))
    [warning] = repeated_writes(before, [change("update", "arn:1", "planned", short_description=(long[:255], long))])
    assert "(255 characters)" in warning and "(300 characters)" in warning and long not in warning
    assert "keeps only its first 255 characters: the field is likely 255 long" in warning  # a cut value, told apart
    assert "(transform truncate:255)" in warning  # and what to put in the mapping


def write(path, report, when):
    path.write_bytes(orjson.dumps(report))
    os.utime(path, ns=(when, when))


def test_the_previous_report_is_the_newest_run_written_plans_and_unreadable_files_skipped(tmp_path):
    assert previous_run_report(tmp_path / "none-yet") is None
    write(tmp_path / "report-older.json", {"mode": "run", "run_id": "older"}, 1_000_000_000)
    write(tmp_path / "report-run.json", {"mode": "run", "run_id": "run"}, 2_000_000_000)
    write(tmp_path / "report-plan.json", {"mode": "plan", "run_id": "plan"}, 3_000_000_000)
    (tmp_path / "report-broken.json").write_text("{not json")
    os.utime(tmp_path / "report-broken.json", ns=(4_000_000_000, 4_000_000_000))
    assert previous_run_report(tmp_path)["run_id"] == "run"


def test_a_previous_report_of_another_shape_is_no_history_and_no_failure():
    now = [change("update", "arn:1", "planned", name=("x", "web-01"))]
    for odd in ({"changes": "none"}, {"changes": ["text", 3, None]}, {"changes": [{"status": "applied", "fields": []}]},
                {"changes": [{"status": "applied", "action": "update", "table": VM, "identity": "arn:1",
                              "fields": {"name": "web-01"}}]}):
        assert repeated_writes(odd, now) == []


def test_old_run_files_are_pruned_and_nothing_else(tmp_path):
    from connector.report.history import prune_reports

    day, now = 86400, 2_000_000_000
    old, recent = now - 31 * day, now - 29 * day
    names = {
        "report-20260101T000000Z-aaaaaa.json": old, "report-20260101T000000Z-aaaaaa.html": old,
        "report-20260101T000000Z-aaaaaa.csv": old,
        "report-20261101T000000Z-bbbbbb.json": recent, "report-20261101T000000Z-bbbbbb.html": recent,
        # not a run's own file: kept whatever its age
        "latest.json": old, "cmdb_connector.prom": old, "report-notes.txt": old, "report-kept-by-hand.json": old,
    }
    for name, when in names.items():
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (when, when))
    assert prune_reports(tmp_path, 0, now=now) == 0  # 0 keeps everything
    assert prune_reports(tmp_path, 30, now=now) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n in names if "aaaaaa" not in n)
    assert prune_reports(tmp_path / "no-such-folder", 30, now=now) == 0


def test_the_run_files_pattern_knows_the_run_id_of_a_run():
    from connector.report.history import RUN_FILE
    from connector.run import new_run_id

    run_id = new_run_id()
    assert all(RUN_FILE.fullmatch(f"report-{run_id}.{ext}") for ext in ("json", "html", "csv"))


def test_a_refresh_repeated_run_after_run_is_named_though_its_time_differs():
    """A refreshed last_discovered is due again only days later: refreshed again by the next run, the
    instance did not keep it (each run would then write every such CI)."""
    before = previous(change("refresh", "arn:1", last_discovered=("2026-11-01 00:00:00", "2026-12-01 06:00:00")))
    now = [change("refresh", "arn:1", "planned", last_discovered=("2026-11-01 00:00:00", "2026-12-01 12:00:00")),
           change("refresh", "arn:2", "planned", last_discovered=("2026-11-01 00:00:00", "2026-12-01 12:00:00"))]
    [warning] = repeated_writes(before, now)
    assert warning.startswith(f"{VM}: refresh repeated on 1 record(s) as in the previous run") and "arn:1" in warning


def test_a_run_against_another_instance_is_no_history_of_this_one(tmp_path):
    """The demo's stand-in of the demo before, or a dev instance and then prod in one folder: the
    creates of that run are no repeat of this one's."""
    write(tmp_path / "report-prod.json", {"mode": "run", "run_id": "prod", "instance": "https://prod.example"},
          1_000_000_000)
    write(tmp_path / "report-dev.json", {"mode": "run", "run_id": "dev", "instance": "https://dev.example"},
          2_000_000_000)
    assert previous_run_report(tmp_path, "https://prod.example")["run_id"] == "prod"
    assert previous_run_report(tmp_path, "https://test.example") is None
    assert previous_run_report(tmp_path)["run_id"] == "dev"
    write(tmp_path / "report-old.json", {"mode": "run", "run_id": "old"}, 3_000_000_000)  # names no instance
    assert previous_run_report(tmp_path, "https://test.example") is None
    assert previous_run_report(tmp_path, "https://prod.example")["run_id"] == "prod"
