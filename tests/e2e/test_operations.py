"""Unattended operation: the lock, schedules, stop signals, logs and report outputs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest

from connector.inventory import write_inventory
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "connector.cli"]
PASSWORD = "ops-password-5e1f"
EXTERNAL_ID = "ops-external-id-77"


@pytest.fixture
def setup(tmp_path):
    inventory = tmp_path / "inventory.jsonl"
    write_inventory(synthetic_inventory(accounts=2, vpcs=1, subnets=2, instances=15), inventory)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as sn:
        config = tmp_path / "config.toml"
        config.write_text(f'[aws]\nregions = ["us-east-1"]\n\n[servicenow]\ninstance_url = "{sn.url}"\nusername = "svc"\n'
                          'workers = 2\n\n[report]\noutput_dir = "reports"\n')
        env = {**os.environ, "CMDB_AWS__EXTERNAL_ID": EXTERNAL_ID, "CMDB_SERVICENOW__PASSWORD": PASSWORD}
        yield sn, config, inventory, env, tmp_path / "reports"


def test_one_scheduled_run_at_a_time_and_sigterm_stops_cleanly(setup):
    sn, config, inventory, env, reports = setup
    sn.faults.update({"latency": 0.2})  # slow enough that the run is still writing when SIGTERM comes
    every = [*CLI, "--config", str(config), "run", "--every", "1h", "--jitter", "0s", "--inventory", str(inventory)]
    first = subprocess.Popen(every, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while sn.writes() < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sn.writes() >= 5, "the first run did not start writing"
        second = subprocess.run(every, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another run holds the lock" in second.stderr and str(first.pid) in second.stderr
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "SIGTERM received" in err and "Traceback" not in err
    report = json.loads((reports / "latest.json").read_text())
    assert report["exit_code"] == 130 and any("interrupted" in e for e in report["errors"])
    assert (reports / ".cmdb-connector.lock").read_text() == ""
    # the lock is free again, and the next run finishes the work with no duplicate
    sn.faults.update({"latency": 0})
    again = subprocess.run([*CLI, "--config", str(config), "run", "--inventory", str(inventory)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    keys = [r["correlation_id"] for r in sn.store.rows("cmdb_ci")]
    assert len(keys) == len(set(keys)) == 2 + 2 + 2 + 4 + 60


def test_a_stale_lock_of_a_dead_process_is_taken_over(setup):
    sn, config, inventory, env, reports = setup
    reports.mkdir()
    (reports / ".cmdb-connector.lock").write_text("999999")
    proc = subprocess.run([*CLI, "--config", str(config), "run", "--inventory", str(inventory)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_json_logs_outputs_and_rerendering(setup):
    sn, config, inventory, env, reports = setup
    # a run's files from two months ago, and a file of someone else's: report.keep_days (30) removes only the first
    reports.mkdir()
    months_ago = time.time() - 60 * 86400
    for name in ("report-20260901T000000Z-0a0b0c.json", "report-20260901T000000Z-0a0b0c.html", "notes.txt"):
        (reports / name).write_text("{}")
        os.utime(reports / name, (months_ago, months_ago))
    proc = subprocess.run([*CLI, "--config", str(config), "--log-format", "json", "run", "--inventory", str(inventory)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((reports / "latest.json").read_text())
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert lines and all(line["run_id"] == report["run_id"] for line in lines)
    summary = [line for line in lines if line["message"].startswith(f"run {report['run_id']} run: exit 0")]
    assert len(summary) == 1
    assert not any(reports.glob("report-2026090*")) and (reports / "notes.txt").exists()

    json_path = next(reports.glob("report-*.json"))
    rows = list(csv.DictReader(io.StringIO(json_path.with_suffix(".csv").read_text())))
    created = sum(1 for c in report["changes"] for _ in c["fields"])
    assert len(rows) == created and {r["action"] for r in rows} == {"create"}
    prom = (reports / "cmdb_connector.prom").read_text()
    assert "cmdb_connector_runs_total 1" in prom and 'cmdb_connector_last_run_exit_code{mode="run"} 0' in prom
    assert 'cmdb_connector_cis{table="cmdb_ci_vm_instance",action="created"} 60' in prom

    html = json_path.with_suffix(".html")
    html.unlink()
    rendered = subprocess.run([*CLI, "report", str(json_path)], capture_output=True, text=True, env=env)
    assert rendered.returncode == 0 and html.exists()
    assert "cmdb_connector_runs_total 2" in (reports / "cmdb_connector.prom").read_text()
    bad = subprocess.run([*CLI, "report", str(inventory)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a cmdb-connector JSON report" in bad.stderr


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.changes, self.bars = set(), 0, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "tr" and attrs.get("class") == "change":
            self.changes += 1
        if tag == "rect" and attrs.get("class") == "bar":
            self.bars[(attrs["data-table"], attrs["data-action"])] = int(attrs["data-count"])


def test_html_report_has_the_numbers(setup):
    sn, config, inventory, env, reports = setup
    subprocess.run([*CLI, "--config", str(config), "run", "--inventory", str(inventory)], env=env, check=True,
                   capture_output=True)
    report = json.loads((reports / "latest.json").read_text())
    page = next(reports.glob("report-*.html")).read_text()
    cells = _Cells()
    cells.feed(page)
    assert {"headline", "chart", "accounts", "changes", "search", "action", "counts"} <= cells.ids
    assert cells.changes == len(report["changes"])
    assert cells.bars[("cmdb_ci_vm_instance", "created")] == 60
    assert ">OK<" in page
    # self-contained: nothing loaded from elsewhere
    assert " src=" not in page and "<link" not in page and "@import" not in page


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed (apt-get install chromium); the HTML checks above still ran")
def test_html_report_in_headless_chromium(setup):
    sn, config, inventory, env, reports = setup
    subprocess.run([*CLI, "--config", str(config), "run", "--inventory", str(inventory)], env=env, check=True,
                   capture_output=True)
    page = next(reports.glob("report-*.html"))
    browser = shutil.which("chromium") or shutil.which("chromium-browser")

    def dom(fragment: str) -> tuple[str, str]:
        proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run",
                               f"--user-data-dir={page.parent / '.chromium'}", "--enable-logging=stderr", "--v=0",
                               "--dump-dom", page.as_uri() + fragment], capture_output=True, text=True, timeout=120)
        return proc.stdout, proc.stderr

    everything, log = dom("")
    assert "Uncaught" not in log and "CONSOLE" not in log.upper().replace("CONSOLE_", "")
    report = json.loads((reports / "latest.json").read_text())
    assert f'<span id="shown">{len(report["changes"])}</span>' in everything
    cells = _Cells()  # what the browser built: the chart's bars and the change rows
    cells.feed(everything)
    assert cells.bars[("cmdb_ci_vm_instance", "created")] == report["tables"]["cmdb_ci_vm_instance"]["created"] == 60
    assert cells.changes == len(report["changes"])
    relations_only, _ = dom("#action=create&q=cmdb_rel_ci")
    expected = sum(1 for c in report["changes"] if c["table"] == "cmdb_rel_ci")
    assert f'<span id="shown">{expected}</span>' in relations_only
