"""Two shards whose runs overlap on one instance, each `cmdb-connector run` in a process of its own.

The second shard's run starts while the first one's is writing its thousands of CIs and relations, so its
reads of the same classes and of cmdb_rel_ci shift under it (rows added between its pages by offset): it
reads them again by sys_id, and both runs are complete and right. Before, such a read shifted on every
attempt, and the second shard's run failed (exit 1, nothing written for the class or the run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from connector.inventory import write_inventory
from connector.models import Inventory
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory

PASSWORD = "shards-password"
VM, REL = "cmdb_ci_vm_instance", "cmdb_rel_ci"


def shard_inventory(whole: Inventory, accounts: set[str], path: Path) -> Path:
    write_inventory(Inventory([a for a in whole.accounts if a.account_id in accounts],
                              [s for s in whole.scopes if s.account_id in accounts],
                              [r for r in whole.records if r.account_id in accounts], whole.targeted), path)
    return path


def start_run(work: Path, url: str, k: int, inventory: Path) -> subprocess.Popen:
    config = work / f"shard{k}.toml"
    config.write_text(f'[aws]\nexternal_id = "not-used-here"\n\n[servicenow]\ninstance_url = "{url}"\n'
                      f'username = "svc"\nworkers = 2\nbatch_size = 0\npage_size = 50\n\n'
                      f'[report]\noutput_dir = "reports-{k}"\n')
    config.chmod(0o600)
    return subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "--log-format", "text", "--config", str(config), "run",
         "--inventory", str(inventory), "--shard", f"{k}/2"],
        env={**os.environ, "CMDB_SERVICENOW__PASSWORD": PASSWORD}, cwd=work,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, err


def report(work: Path, k: int) -> dict:
    return json.loads((work / f"reports-{k}" / "latest.json").read_text())


def test_a_shard_that_reads_while_another_writes_reads_whole_and_both_runs_are_right(tmp_path):
    whole = synthetic_inventory(accounts=4, regions=("us-east-1",), vpcs=1, subnets=3, instances=60)
    whole.targeted = frozenset(a.account_id for a in whole.accounts)
    ids = sorted(a.account_id for a in whole.accounts)
    first = shard_inventory(whole, set(ids[:3]), tmp_path / "shard1.jsonl")  # 540 instances: the long writer
    second = shard_inventory(whole, set(ids[3:]), tmp_path / "shard2.jsonl")  # 180 instances
    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.005) as server:
        writer = start_run(tmp_path, server.url, 1, first)
        deadline = time.monotonic() + 120
        while server.writes() < 100 and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.poll() is None, "the first shard's run ended before the second began: no overlap"
        reader = start_run(tmp_path, server.url, 2, second)
        code_2, err_2 = finished(reader)
        writes_meanwhile = server.writes()
        code_1, _err_1 = finished(writer)
        assert server.writes() > writes_meanwhile, "the first shard's run stopped writing before the second ended"
        assert (code_1, code_2) == (0, 0), err_2[-3000:]
        assert "reading it again by sys_id" in err_2  # its reads did shift under the other shard's writes
        for k, inventory, instances in ((1, first, 540), (2, second, 180)):
            counts = report(tmp_path, k)["tables"][VM]
            assert (counts["created"], counts["unchanged"], counts["retired"]) == (instances, 0, 0)
        rows = server.store.rows(VM)
        assert len(rows) == 720
        assert set(Counter(row["correlation_id"] for row in rows).values()) == {1}  # no duplicate CI
        relations = Counter((r["parent"], r["child"], r["type"]) for r in server.store.rows(REL))
        assert set(relations.values()) == {1}  # no relation twice
        # and each shard's next run, at once again, writes nothing
        again = [start_run(tmp_path, server.url, k, inventory) for k, inventory in ((1, first), (2, second))]
        assert [finished(proc)[0] for proc in again] == [0, 0]
        assert report(tmp_path, 1)["changes"] == [] and report(tmp_path, 2)["changes"] == []
