"""Progress bars show on a terminal and stay silent elsewhere."""

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
