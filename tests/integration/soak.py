"""A chaos soak: an estate that changes between runs, against a stand-in that fails on purpose.

Each round changes the synthetic inventory (instances gone, new, resized,
retagged; now and then a scope not collected in full), lets a person edit the
CMDB (a relation deleted, a CI renamed or deleted, a Discovery CI put in, a
datacenter's relation to its account deleted), switches the stand-in's faults
at random (429s, 503s, transactions cancelled after they ran, batches cut
short, an outage's HTML page), and runs `cmdb-connector run` in a process of
its own with the Table API or IRE, batched or not, tags on or off, basic auth
or OAuth (every token expiring mid-run), sometimes killed with SIGKILL part
way. Where a round has no faults, `plan` runs first and must predict the
run's changes (half of those runs are `run --approved` with that plan).
After every run: no traceback, no secret in its log or report. After every
round: no two CIs of one identity, no relation twice, no CI retired that
AWS still has (collected or not). At the end, with the faults
off: every resource's CI there and active, every gone one retired, and a
second run writes nothing.

    python -m tests.integration.soak [--seeds 1-20] [--rounds 16]

The tests run one seed (tests/integration/test_soak.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from connector.inventory import write_inventory
from connector.models import Inventory, Scope
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory

PASSWORD = "soak-password"
CLIENT_SECRET = "soak-client-secret"
RETIRED = "7"
FAULTS = ("rate_429", "rate_5xx", "rate_cancelled", "batch_serviced_limit", "outage_requests")
PEOPLE = ("none", "relation deleted", "CI edited", "CI deleted", "Discovery CI", "datacenter unhosted",
          "datacenter unhosted")
STAMPS = ("last_discovered", "first_discovered")  # the run's own time: plan's and run's differ


class SoakFailure(AssertionError):
    pass


def instance_arn(record) -> str:
    return f"arn:aws:ec2:{record.region}:{record.account_id}:instance/{record.resource['InstanceId']}"


class Soak:
    def __init__(self, seed: int, work: Path):
        self.rng = random.Random(seed)  # what each round does: the same for a seed, however its runs went
        self.pick = random.Random(-seed)  # which CI or relation a person edits, of those the CMDB holds then
        self.seed, self.work = seed, work
        self.inventory = synthetic_inventory(accounts=3, regions=("us-east-1", "eu-west-1"), vpcs=1, subnets=2,
                                             instances=6)
        self.tags = seed % 2 == 1
        self.oauth = seed % 3 == 0  # OAuth (password grant), its tokens expiring now and then mid-run
        self.added = 0
        self.log: list[str] = []

    # -- one run in a process of its own -----------------------------------------
    def config(self, url: str, batch_size: int, writer: str) -> Path:
        path = self.work / "config.toml"
        path.write_text(
            f'[aws]\nexternal_id = "not-used-here"\n\n[servicenow]\ninstance_url = "{url}"\nusername = "svc"\n'
            f'workers = 4\nbatch_size = {batch_size}\nwriter = "{writer}"\nmax_retry_seconds = 4\nmax_attempts = 8\n'
            + ('auth = "oauth_password"\nclient_id = "soak"\n' if self.oauth else "") + "\n"
            f'[reconcile]\nmax_retire_fraction = 0.5\ntags = {str(self.tags).lower()}\n\n'
            '[report]\noutput_dir = "reports"\n')
        path.chmod(0o600)
        return path

    def run(self, server: ServiceNowStandIn, inventory: Path, command: str, batch_size: int, writer: str,
            kill_after_writes: int | None = None, approved: Path | None = None) -> tuple[int | str, str]:
        """(the exit code, or "killed"; stderr). With ``kill_after_writes``, SIGKILL once the stand-in has had
        that many writes of the run (a run that ends first is not killed)."""
        env = {**os.environ, "CMDB_SERVICENOW__PASSWORD": PASSWORD, "CMDB_SERVICENOW__CLIENT_SECRET": CLIENT_SECRET}
        writes = server.writes()
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "--log-format", "text", "--config",
             str(self.config(server.url, batch_size, writer)), command, "--inventory", str(inventory),
             *(["--approved", str(approved)] if approved else [])],
            env=env, cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kill_after_writes is not None:
            deadline = time.monotonic() + 120
            while proc.poll() is None and server.writes() - writes < kill_after_writes and time.monotonic() < deadline:
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                return "killed", ""
        _out, err = proc.communicate(timeout=300)
        if "Traceback" in err:
            raise SoakFailure(f"seed {self.seed}: a traceback from {command}:\n{err[-3000:]}")
        report = (self.work / "reports" / "latest.json")
        for secret in (PASSWORD, CLIENT_SECRET):
            if secret in err or (report.exists() and secret in report.read_text()):
                raise SoakFailure(f"seed {self.seed}: a secret in the log or the report of {command}")
        return proc.returncode, err

    def latest_report(self) -> dict:
        return json.loads((self.work / "reports" / "latest.json").read_text())

    # -- what changes between rounds ----------------------------------------------
    def change_the_estate(self) -> None:
        rng, records = self.rng, self.inventory.records
        instances = [r for r in records if r.source == "ec2:instance"]
        for gone in rng.sample(instances, k=rng.randint(0, 3)):
            records.remove(gone)
        kept = [r for r in records if r.source == "ec2:instance"]
        for resized in rng.sample(kept, k=min(len(kept), rng.randint(0, 4))):
            resized.resource["InstanceType"] = rng.choice(["t3.micro", "m5.large", "c6i.xlarge"])
        for retagged in rng.sample(kept, k=min(len(kept), rng.randint(0, 4))):
            tags = [t for t in retagged.resource.get("Tags", []) if t["Key"] != "Team"]
            retagged.resource["Tags"] = tags + ([{"Key": "Team", "Value": rng.choice(["red", "blue"])}]
                                                if rng.random() < 0.7 else [])
        for _ in range(rng.randint(1, 4)):
            new = copy.deepcopy(rng.choice(kept))
            self.added += 1
            new.resource["InstanceId"] = f"i-soak{self.seed:04x}{self.added:08x}"
            records.append(new)

    def as_collected(self) -> Inventory:
        """This round's inventory, now and then with one instance scope throttled (its records not in it)."""
        shown = copy.deepcopy(self.inventory)
        if self.rng.random() < 0.3:
            scopes = [i for i, s in enumerate(shown.scopes) if s.source == "ec2:instance"]
            index = self.rng.choice(scopes)
            s = shown.scopes[index]
            shown.scopes[index] = Scope(s.account_id, s.region, s.source, "throttled", "soak")
            shown.records = [r for r in shown.records if (r.account_id, r.region, r.source) != s.key]
        return shown

    def someone_edits_the_cmdb(self, server: ServiceNowStandIn) -> str:
        store, pick = server.store, self.pick
        who = self.rng.choice(PEOPLE)
        active = [r for r in store.rows("cmdb_ci_vm_instance") if r.get("install_status") != RETIRED]
        relations = store.rows("cmdb_rel_ci")
        if who == "relation deleted" and relations:
            store.delete("cmdb_rel_ci", pick.choice(relations)["sys_id"])
        elif who == "CI edited" and active:
            store.update("cmdb_ci", pick.choice(active)["sys_id"], {"name": "edited by hand", "cpus": "99"}, "admin")
        elif who == "CI deleted" and active:
            victim = pick.choice(active)["sys_id"]
            for row in relations:
                if victim in (row["parent"], row["child"]):
                    store.delete("cmdb_rel_ci", row["sys_id"])
            store.delete("cmdb_ci", victim)
        elif who == "Discovery CI":
            record = pick.choice([r for r in self.inventory.records if r.source == "ec2:instance"])
            store.insert("cmdb_ci_vm_instance", {"name": "found by Discovery", "discovery_source": "ServiceNow",
                                                 "object_id": record.resource["InstanceId"]}, "discovery")
        elif who == "datacenter unhosted":
            datacenters = {r["sys_id"] for r in store.rows("cmdb_ci_aws_datacenter")}
            hosted = [r for r in relations if r["parent"] in datacenters]
            if hosted:
                store.delete("cmdb_rel_ci", pick.choice(hosted)["sys_id"])
        return who

    def faults(self, server: ServiceNowStandIn) -> dict:
        rng = self.rng
        faults = {"rate_429": rng.choice([0, 0.1, 0.3]), "retry_after": 0.01, "rate_5xx": rng.choice([0, 0.05, 0.15]),
                  "rate_cancelled": rng.choice([0, 0.05, 0.15]), "batch_serviced_limit": rng.choice([0, 0, 3]),
                  "latency": rng.choice([0, 0.005]), "outage_requests": rng.choice([0, 0, 5, 40])}
        if rng.random() < 0.35:
            faults.update(dict.fromkeys(FAULTS, 0))
        # an outage (a hibernating instance's HTML page, with 200) from one of the run's requests on
        faults["outage_after"] = server.api_requests() + rng.randint(1, 60) if faults["outage_requests"] else -1
        # every access token expires at one of the run's requests (OAuth seeds; not a fault: a token's life)
        faults["expire_tokens_at"] = server.api_requests() + rng.randint(1, 200) if self.oauth else -1
        return faults

    # -- the checks ----------------------------------------------------------------
    def check(self, server: ServiceNowStandIn, inventory: Inventory, was_active: set[str], label: str,
              final: bool = False) -> None:
        cis = server.store.rows("cmdb_ci")
        identities = Counter(r.get("correlation_id") for r in cis if r.get("correlation_id"))
        twice = [k for k, n in identities.items() if n > 1]
        if twice:
            raise SoakFailure(f"seed {self.seed} {label}: duplicates {twice[:3]}")
        links = Counter((r["parent"], r["child"], r["type"]) for r in server.store.rows("cmdb_rel_ci"))
        if links and max(links.values()) > 1:
            raise SoakFailure(f"seed {self.seed} {label}: a relation made twice")
        wanted = {instance_arn(r) for r in inventory.records if r.source == "ec2:instance"}
        ours = {r["correlation_id"]: r for r in cis
                if r.get("sys_class_name") == "cmdb_ci_vm_instance" and r.get("correlation_id")}
        wrongly = [k for k in wanted if k in ours and ours[k]["install_status"] == RETIRED
                   and ours[k]["sys_id"] in was_active]
        if wrongly:
            raise SoakFailure(f"seed {self.seed} {label}: retired though AWS still has it: {wrongly[:3]}")
        if final:
            missing = [k for k in wanted if k not in ours or ours[k]["install_status"] == RETIRED]
            stale = [k for k, r in ours.items() if k not in wanted and r["install_status"] != RETIRED]
            if missing or stale:
                raise SoakFailure(f"seed {self.seed} {label}: missing or retired {missing[:3]}, "
                                  f"not retired {stale[:3]}")

    # -- the soak ------------------------------------------------------------------
    def soak(self, rounds: int, first_killed_after: int | None = None) -> list[str]:
        """The rounds' log; ``first_killed_after``: the first run (which creates everything) killed after
        that many writes, whatever the seed says."""
        rng = self.rng
        with ServiceNowStandIn(users={"svc": PASSWORD}, oauth_clients={"soak": CLIENT_SECRET}) as server:
            for n in range(rounds):
                self.change_the_estate()
                shown = self.as_collected()
                path = self.work / f"inventory-{n}.jsonl"
                write_inventory(shown, path)
                who = self.someone_edits_the_cmdb(server)
                faults = self.faults(server)
                if n == 0 and first_killed_after is not None:
                    faults.update(outage_requests=0, outage_after=-1)  # no outage before the kill
                server.faults.update(faults)
                calm = not any(faults[k] for k in FAULTS)
                shown_faults = {k: v for k, v in faults.items()
                                if v not in (0, -1) and k not in ("retry_after", "expire_tokens_at")}
                batch_size, writer = rng.choice([0, 10]), rng.choice(["table", "ire"])
                kill = None if calm or rng.random() < 0.5 else rng.randint(1, 40)
                if n == 0 and first_killed_after is not None:
                    kill = first_killed_after
                planned, approved = None, None
                if calm:
                    self.run(server, path, "plan", batch_size, writer)
                    planned = self.latest_report()
                    if rng.random() < 0.5:  # the plan reviewed, then run as it was approved
                        approved = self.work / f"approved-{n}.json"
                        approved.write_text(json.dumps(planned))
                was_active = {r["sys_id"] for r in server.store.rows("cmdb_ci") if r.get("install_status") != RETIRED}
                code, _err = self.run(server, path, "run", batch_size, writer, kill, approved)
                if planned is not None and code != "killed":
                    predicted, done = changes(planned), changes(self.latest_report())
                    if predicted != done:
                        raise SoakFailure(f"seed {self.seed} round {n}: plan predicted {sorted(predicted - done)[:3]}, "
                                          f"run did {sorted(done - predicted)[:3]}")
                ended = "killed" if code == "killed" else f"exit {code}" + (" before its kill" if kill else "")
                self.log.append(f"round {n}: {who}; {writer}, batch {batch_size}{', approved' if approved else ''}, "
                                f"{'no faults' if calm else shown_faults}; {ended}")
                self.check(server, self.inventory, was_active, f"round {n}")  # what AWS has, collected or not
            server.faults.update({**dict.fromkeys(FAULTS, 0), "latency": 0, "outage_after": -1, "expire_tokens_at": -1})
            path = self.work / "inventory-final.jsonl"
            write_inventory(self.inventory, path)
            was_active = {r["sys_id"] for r in server.store.rows("cmdb_ci") if r.get("install_status") != RETIRED}
            code, err = self.run(server, path, "run", 10, "table")
            if code != 0:
                raise SoakFailure(f"seed {self.seed}: the last run, without faults, exit {code}:\n{err[-2000:]}")
            self.check(server, self.inventory, was_active, "at the end", final=True)
            writes = server.writes()
            code, err = self.run(server, path, "run", 10, "table")
            if code != 0 or server.writes() != writes:
                raise SoakFailure(f"seed {self.seed}: a second run wrote {server.writes() - writes} (exit {code})")
        return self.log


def changes(report: dict) -> set[tuple[str, str, str, str]]:
    return {(c["action"], c["table"], c["identity"],
             json.dumps({k: v for k, v in c["fields"].items() if k not in STAMPS}, sort_keys=True))
            for c in report["changes"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10", help="a seed or a range of them, 1-10 (default)")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None, help="a folder for each seed's files (default: a temp one)")
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    failed = 0
    for seed in range(int(first), int(last or first) + 1):
        work = (args.work or Path(tempfile.mkdtemp(prefix="soak-"))) / f"seed-{seed}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            log = Soak(seed, work).soak(args.rounds)
            print(f"seed {seed}: ok ({len(log)} rounds)", flush=True)
        except SoakFailure as failure:
            failed += 1
            print(f"seed {seed}: FAILED: {failure} (files in {work})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
