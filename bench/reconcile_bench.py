"""Reconciliation benchmark: about 20,000 CIs against the stand-in, 20 ms per request.

The stand-in runs in a process of its own, with 20 ms of latency on every
request: an answer leaves 20 ms, plus the CPU the stand-in spent on it, after
its request came in (a server that serves requests in parallel, behind that
much network).
Runs: the first (everything created), then, three times over (--repeat), a
run with nothing changed and a run where 1% of the instances changed (the same
1% changed, then changed back), so that the medians stand above the noise of
a shared machine.

    python bench/reconcile_bench.py [--workers 8] [--batch-size 20] [--page-size 1000] [--latency 0.02] [--repeat 3] [--tags]

For each run it prints the HTTP requests by kind, the wall time of each stage
(from the run's report), and the ratio of the reconciliation's wall time
(read the CMDB + plan + apply) to the lower bound
(reads + writes / batch size) x latency / workers. Target: within 2x. The
ratio of the whole run (which also reads the inventory file and maps it) is
printed beside it, and so is the CPU each side spent: where that exceeds the
latency bound, the machine's CPU, not the network, sets the pace. Then the
run's reads are sent again by a client that only reads the answers (see
replay): the pace this stand-in allows on this machine, whatever the client;
the read stage and the reconciliation are also printed against it. With
--tags, the instances' and VPCs' tags also go to cmdb_key_value (some 20,000
rows more to write once and to read on every run).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import statistics
import os
import queue
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from connector.inventory import write_inventory
from connector.run import run_pipeline
from connector.sandbox.aws import free_port
from connector.sandbox.schema import ancestors
from connector.sandbox.synthetic import synthetic_inventory
from connector.settings import load_settings

PASSWORD = "bench-password"
# The login check, one read of cmdb_ci before the collection (CmdbReader.check_login): a read of the
# run, but not of the reconciliation, which is what the bound is for. It is the run's first read.
LOGIN_CHECKS = 1


def stats(url: str) -> Counter:
    with urllib.request.urlopen(f"{url}/sandbox/stats", timeout=30) as response:
        return Counter(json.loads(response.read())["stats"])


def reads_log(url: str) -> tuple[int, list[str]]:
    with urllib.request.urlopen(f"{url}/sandbox/reads", timeout=30) as response:
        answer = json.loads(response.read())
    return answer["total"], answer["reads"]


def replay(url: str, targets: list[str], workers: int, standin_pid: int) -> tuple[float, float]:
    """The same reads, sent again on ``workers`` kept-alive connections by a
    client that only reads the bytes of each answer: (wall seconds, stand-in CPU
    seconds). What this stand-in on this machine allows for those reads, before
    a client does anything with them.

    As the connector does, every query starts at once with its first page, and
    its other pages follow as soon as that one is in, as many at a time as
    there are free connections."""
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    auth = "Basic " + base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    connections: queue.Queue[http.client.HTTPConnection] = queue.Queue()
    for _ in range(workers):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.connect()  # kept open, as the connector keeps its own
        connections.put(connection)

    def get(target: str) -> None:
        connection = connections.get()
        try:
            connection.request("GET", target, headers={"Authorization": auth, "Accept": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200, (response.status, target)
        finally:
            connections.put(connection)

    def offset_and_query(target: str) -> tuple[int, str]:
        parts = urllib.parse.urlsplit(target)
        params = urllib.parse.parse_qsl(parts.query)
        offset = int(dict(params).get("sysparm_offset", 0))
        return offset, parts.path + "?" + urllib.parse.urlencode([(k, v) for k, v in params if k != "sysparm_offset"])

    queries: dict[str, list[str]] = {}  # a query (its target less the offset) -> its pages, first page first
    for target in sorted(targets, key=lambda t: offset_and_query(t)[0]):
        queries.setdefault(offset_and_query(target)[1], []).append(target)

    def read(pages: list[str]) -> None:
        get(pages[0])
        with ThreadPoolExecutor(max_workers=max(1, len(pages) - 1)) as rest:
            list(rest.map(get, pages[1:]))

    try:
        with ThreadPoolExecutor(max_workers=len(queries)) as pool:
            # Untimed: each query run once, as it was for the run's own reads (a
            # change run's writes since then would have the stand-in run it again).
            list(pool.map(get, [pages[0] for pages in queries.values()]))
            started, standin_cpu = time.perf_counter(), cpu_seconds(standin_pid)
            list(pool.map(read, queries.values()))
            return time.perf_counter() - started, cpu_seconds(standin_pid) - standin_cpu
    finally:
        while not connections.empty():
            connections.get().close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reads_per_table(report: dict, requests: Counter, page_size: int) -> str:
    """Each table's reads against ceil(N / page size), N being the CIs it held.

    A table with CIs to create may take one more read: the check for CIs of
    other sources to adopt. The class tree (sys_db_object) is read one level at
    a time: the levels are the stand-in's.
    """
    allowed = {table: max(1, math.ceil((sum(counts.values()) - counts["created"]) / page_size)) + bool(counts["created"])
               for table, counts in report["tables"].items()}
    relations = report["relations"]
    allowed["cmdb_rel_ci"] = max(1, math.ceil((relations["unchanged"] + relations["deleted"]) / page_size))
    tags = report["key_values"]
    if any(tags.values()):
        allowed["cmdb_key_value"] = max(1, math.ceil((tags["unchanged"] + tags["updated"] + tags["deleted"]) / page_size))
    # The small constant: the relation types; the login check and our CIs in classes no mapping covers
    # (none here), on cmdb_ci; the class tree, one read per level above the mapped classes; and their
    # fields' lengths.
    levels = max(len(ancestors(table)) for table in report["tables"]) - 1
    constant = {"cmdb_rel_type": 1, "cmdb_ci": LOGIN_CHECKS + 1, "sys_db_object": levels, "sys_dictionary": 1}
    allowed.update(constant)
    tables = {key.split(" ", 1)[1] for key in requests if key.startswith("GET ")}
    over = [f"{table} {requests.get(f'GET {table}', 0)} for {allowed.get(table, 0)} allowed"
            for table in sorted(tables) if requests[f"GET {table}"] > allowed.get(table, 0)]
    return (f"{'none over' if not over else 'over: ' + ', '.join(over)}; {len(tables - constant.keys())} tables "
            f"read, plus {sum(constant.values())} reads of {', '.join(constant)}")


def one_run(label, settings, inventory_path, url, args, standin_pid) -> tuple[float, float, float]:
    """One run, printed; returns (reconcile / bound, whole run / bound, its reads replayed / their bound)."""
    workers, batch_size, page_size = args.workers, args.batch_size, args.page_size
    before, (reads_before, _log) = stats(url), reads_log(url)
    started, cpu, standin_cpu = time.perf_counter(), time.process_time(), cpu_seconds(standin_pid)
    outcome = run_pipeline(settings, inventory_file=inventory_path)
    wall = time.perf_counter() - started
    cpu, standin_cpu = time.process_time() - cpu, cpu_seconds(standin_pid) - standin_cpu
    requests = stats(url) - before
    assert outcome.exit_code == 0, outcome.report["errors"]
    reads = sum(n for k, n in requests.items() if k.startswith("GET ")) - LOGIN_CHECKS  # the reconciliation's
    batches = requests.get("POST batch", 0)
    direct = sum(n for k, n in requests.items() if k.split(" ")[0] in ("POST", "PATCH", "PUT", "DELETE") and k != "POST batch")
    items = sum(n for k, n in requests.items() if k.startswith("batch ") and not k.startswith("batch GET"))
    writes = items + direct
    bound = (reads + writes / max(1, batch_size)) * args.latency / workers
    timings = outcome.report["timings"]
    reconcile = sum(timings.get(stage, 0.0) for stage in ("read", "plan", "apply"))
    print(f"\n{label}: {wall:.2f} s wall; {writes} writes ({batches} batch requests, {direct} single), {reads} reads "
          f"(and {LOGIN_CHECKS} before the collection, the login check: in no stage timed here, nor in the bound)")
    print(f"  stages: {timings}; reconcile (read + plan + apply) {reconcile:.2f} s")
    reconcile_cpu = sum(outcome.report["cpu_timings"].get(stage, 0.0) for stage in ("read", "plan", "apply"))
    print(f"  CPU: {cpu:.2f} s in the connector ({reconcile_cpu:.2f} s of it reconciling), "
          f"{standin_cpu:.2f} s in the stand-in")
    print(f"  requests by kind: {dict(sorted(requests.items()))}")
    print(f"  reads per table against ceil(N / page size): {reads_per_table(outcome.report, requests, page_size)}")
    print(f"  lower bound {bound:.2f} s; reconcile / bound = {reconcile / bound:.2f}x (target <= 2x); "
          f"whole run / bound = {wall / bound:.2f}x")
    # Where the CPU of one side exceeds the latency bound, the bound cannot be met
    # on this machine whatever the concurrency: this says how close to that the run came.
    floor = max(bound, reconcile_cpu, standin_cpu)
    print(f"  CPU-aware floor max(bound, connector CPU, stand-in CPU) {floor:.2f} s; reconcile / floor = "
          f"{reconcile / floor:.2f}x")
    total, log = reads_log(url)
    assert total - reads_before == reads + LOGIN_CHECKS <= len(log), (total, reads_before, reads)
    replayed, replay_cpu = replay(url, log[len(log) - reads:], workers, standin_pid)
    reads_bound = reads * args.latency / workers
    print(f"  its {reads} reads replayed by a client that only reads the answers, {workers} at once: "
          f"{replayed:.2f} s = {replayed / reads_bound:.2f}x their share of the bound ({reads_bound:.2f} s), "
          f"the stand-in spending {replay_cpu:.2f} s of CPU: the pace of this stand-in on this machine"
          + (f"; read stage / replay = {timings.get('read', 0.0) / replayed:.2f}x, reconcile / replay = "
             f"{reconcile / replayed:.2f}x" if batches + direct <= reads else ""))  # where reads are most of the run
    return reconcile / bound, wall / bound, replayed / reads_bound


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every request (default 0.02)")
    parser.add_argument("--repeat", type=int, default=3, help="no-change and 1%% change runs, each (default 3)")
    parser.add_argument("--tags", action="store_true", help="write the tags to cmdb_key_value too (reconcile.tags)")
    args = parser.parse_args()

    port = free_port()
    standin = subprocess.Popen([sys.executable, "-m", "connector.sandbox.servicenow", "--port", str(port),
                                "--user", f"svc:{PASSWORD}", "--latency", str(args.latency)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                stats(url)
                break
            except OSError:
                time.sleep(0.1)
        work = Path(tempfile.mkdtemp())
        inventory = synthetic_inventory(accounts=10, regions=("us-east-1", "eu-west-1"), vpcs=2, subnets=5, instances=99)
        ci_count = len(inventory.records)
        first = work / "inventory.jsonl"
        write_inventory(inventory, first)
        changed = work / "changed.jsonl"
        step = 0
        for record in inventory.records:
            if record.source == "ec2:instance":
                step += 1
                if step % 100 == 0:  # 1% of the instances
                    record.resource["InstanceType"] = "m7g.large"
        write_inventory(inventory, changed)
        settings = load_settings(None, {
            "aws": {"external_id": "not-used-here"},
            "servicenow": {"instance_url": url, "username": "svc", "password": PASSWORD, "workers": args.workers,
                           "batch_size": args.batch_size, "page_size": args.page_size},
            "reconcile": {"tags": args.tags},
            "report": {"output_dir": str(work / "reports")},
        })
        print(f"{ci_count} CIs ({step} instances), {args.workers} workers, batch size {args.batch_size}, "
              f"page size {args.page_size}, {args.latency * 1000:.0f} ms per request"
              + (", tags to cmdb_key_value" if args.tags else ""))
        ratios: dict[str, list[tuple[float, float, float]]] = {"first": [], "no-change": [], "1% change": []}
        ratios["first"].append(one_run("first run", settings, first, url, args, standin.pid))
        current = first
        for n in range(1, args.repeat + 1):
            ratios["no-change"].append(one_run(f"no-change run {n}", settings, current, url, args, standin.pid))
            current = changed if current == first else first  # the same 1% of instances, changed or changed back
            ratios["1% change"].append(one_run(f"1% change run {n}", settings, current, url, args, standin.pid))
        print("\nmedians: " + "; ".join(
            f"{kind} reconcile / bound {statistics.median(r for r, _w, _p in runs):.2f}x "
            f"(whole run {statistics.median(w for _r, w, _p in runs):.2f}x)" for kind, runs in ratios.items()))
        print("medians of the reads replayed, against their share of the bound: " + "; ".join(
            f"{kind} {statistics.median(p for _r, _w, p in runs):.2f}x" for kind, runs in ratios.items()))
    finally:
        standin.terminate()
        standin.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
