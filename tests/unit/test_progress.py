"""Progress bars show on a terminal and stay silent elsewhere; logs and other run-time helpers."""

from __future__ import annotations

import io
import sys

from connector import progress


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_without_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    with progress.bar("collect", 10) as bar:
        bar.advance(3, "ok")
    assert out.getvalue() == ""


def test_counts_units_by_status_on_a_terminal(monkeypatch):
    out = FakeTty()
    monkeypatch.setattr(sys, "stderr", out)
    with progress.bar("collect", 4) as bar:
        bar.advance(1, "ok")
        bar.advance(1, "denied")
        bar.advance(2, "ok")
        task = bar._progress.tasks[0]
        assert (task.completed, task.total) == (4, 4)
        assert task.description == "collect denied 1, ok 3"
    assert "collect" in out.getvalue()  # drawn on stderr, never on stdout


def test_json_log_lines_carry_run_id_and_scope(monkeypatch):
    import json
    import logging

    from connector import ops

    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    ops.setup_logging(False, "json")
    ops.set_run_id("20261124T000000Z-abc123")
    logging.getLogger("connector.aws.collect").warning(
        "account %s region %s: denied", "111122223333", "eu-west-1",
        extra={"account": "111122223333", "region": "eu-west-1", "source": "ec2:vpc"})
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["run_id"] == "20261124T000000Z-abc123"
    assert (line["account"], line["region"], line["source"], line["level"]) == ("111122223333", "eu-west-1", "ec2:vpc", "warning")
    assert line["message"] == "account 111122223333 region eu-west-1: denied"
    logging.getLogger().handlers.clear()


def test_fewer_gc_passes_during_a_run_and_the_threshold_restored_after():
    import gc

    from connector.ops import fewer_gc_passes

    before = gc.get_threshold()
    try:
        with fewer_gc_passes(12_345):
            assert gc.get_threshold() == (12_345, *before[1:])
            raise RuntimeError("a run that fails")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before


def test_the_mapped_inventory_is_set_aside_from_the_collector_during_read_and_plan(tmp_path, monkeypatch):
    """Frozen once mapped (gc.freeze), so that collections during the read and plan do not walk it again;
    unfrozen when the run ends, whatever its outcome."""
    import gc

    import connector.run as run
    from connector.settings import load_settings

    frozen = {}

    def read_cmdb(*args, **kwargs):
        frozen["during read"] = gc.get_freeze_count()
        raise RuntimeError("a read that fails")

    monkeypatch.setattr(run, "read_cmdb", read_cmdb)
    monkeypatch.setattr(run.CmdbReader, "check_login", lambda self, table: None)  # no instance here
    settings = load_settings(None, {"aws": {"external_id": "not-used-here"},
                                        "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "svc",
                                                       "password": "not-used"},
                                        "report": {"output_dir": str(tmp_path)}})
    inventory = tmp_path / "inventory.jsonl"
    inventory.write_text("")
    outcome = run.run_pipeline(settings, inventory_file=inventory)
    assert outcome.exit_code != 0
    assert frozen["during read"] > 0 and gc.get_freeze_count() == 0
