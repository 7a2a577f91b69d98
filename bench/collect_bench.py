"""Collection benchmark: a simulated Organization of 50 accounts x 3 regions.

moto runs in a process of its own with the STS front, which adds a fixed
latency to every AWS call (default 100 ms, the order of a real describe call seen from
an on-premises host). The same Organization is collected one unit at a time
and then with 16 workers (4 per account).

Then the calls made per item: one account holds --buckets S3 buckets, and
S3 is collected with tags on, a unit of one listing and two calls per bucket
(its location, its tags). One call at a time, then within the account's bound
of 4 calls at once.

    python bench/collect_bench.py [--accounts 50] [--latency 0.1] [--workers 16] [--buckets 40]

Prints wall time, AWS calls per unit, and the speed-ups (target for the
Organization: >= 8x).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from connector.aws.collect import collect_inventory
from connector.aws.targets import open_account_sessions, open_session_pool, target_accounts
from connector.mapping.load import load_mappings
from connector.models import OK
from connector.sandbox.aws import MANAGEMENT_ACCOUNT, AwsSandbox, RegionPlan, seed_organization
from connector.sandbox.aws import _client as sandbox_client
from connector.sandbox.demo import point_aws_at
from connector.settings import load_settings

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]
# The EC2 sources every estate has; each other class adds one more unit per region.
SOURCES = ("ec2:vpc", "ec2:subnet", "ec2:instance", "organizations:account", "ec2:region")


def collect_once(sandbox: AwsSandbox, workers: int, per_account: int, wanted: tuple[str, ...] = SOURCES,
                 tags: bool = False, accounts: list[str] | None = None) -> tuple[float, int, Counter]:
    settings = load_settings(None, {
        "aws": {"external_id": "bench-external-id", "regions": REGIONS, "accounts": accounts or [],
                "max_workers": workers, "max_workers_per_account": per_account},
        "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"},
    })
    sandbox.clear_calls()
    cpu = time.process_time()
    started = time.perf_counter()
    pool = open_session_pool(settings)
    accounts = open_account_sessions(pool, target_accounts(settings, pool), workers)
    sources = {name: source for name, source in load_mappings().sources.items() if name in wanted}
    inventory = collect_inventory(pool, accounts, sources, REGIONS, workers, per_account, tags=tags)
    elapsed = time.perf_counter() - started
    print(f"  ({workers} workers: {elapsed:.2f} s wall, {time.process_time() - cpu:.2f} s CPU in the connector)", flush=True)
    units = sum(1 for s in inventory.scopes if s.source not in ("organizations:account", "ec2:region"))
    statuses = Counter(s.status for s in inventory.scopes)
    assert statuses.keys() == {OK}, statuses
    return elapsed, units, sandbox.calls


def seed_buckets(moto_url: str, count: int) -> str:
    """``count`` tagged buckets in the management account; returns its id."""
    s3 = sandbox_client("s3", moto_url, "us-east-1")  # the central keys land in the management account
    for i in range(count):
        s3.create_bucket(Bucket=f"bench-bucket-{i:04d}")
        s3.put_bucket_tagging(Bucket=f"bench-bucket-{i:04d}", Tagging={"TagSet": [{"Key": "n", "Value": str(i)}]})
    return MANAGEMENT_ACCOUNT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--buckets", type=int, default=40, help="S3 buckets for the calls per item (default 40)")
    args = parser.parse_args()

    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    with AwsSandbox(separate_process=True) as sandbox:
        members = [f"member-{i:03d}" for i in range(args.accounts - 1)]  # + the management account
        print(f"seeding {args.accounts} accounts x {len(REGIONS)} regions ...", flush=True)
        seed_organization(sandbox.moto_url, members, REGIONS, RegionPlan(vpcs=1, subnets_per_vpc=1, instances_per_subnet=1))
        point_aws_at(sandbox.url)
        sandbox.set_latency(args.latency)

        sequential, units, calls = collect_once(sandbox, workers=1, per_account=1)
        parallel, units_p, calls_p = collect_once(sandbox, workers=args.workers, per_account=4)

        print(f"seeding {args.buckets} tagged S3 buckets in one account ...", flush=True)
        sandbox.set_latency(0)
        account = seed_buckets(sandbox.moto_url, args.buckets)
        sandbox.set_latency(args.latency)
        one_call, _units, bucket_calls = collect_once(sandbox, 1, 1, ("s3:bucket",), tags=True, accounts=[account])
        four_calls, _units, _calls = collect_once(sandbox, args.workers, 4, ("s3:bucket",), tags=True, accounts=[account])

    assert units == units_p
    collection_calls = sum(n for call, n in calls_p.items() if call.startswith("Describe"))
    speedup = sequential / parallel
    print(f"organization:     {args.accounts} accounts x {len(REGIONS)} regions = {units} collection units")
    print(f"AWS latency:      {args.latency * 1000:.0f} ms per call (added by the STS front)")
    print(f"AssumeRole calls: {calls_p['AssumeRole']} (one per account)")
    print(f"AWS calls/unit:   {collection_calls / units:.2f} (describe calls; every call paginated)")
    print(f"all AWS calls:    {sum(calls_p.values())} ({dict(calls_p.most_common(6))})")
    print(f"sequential:       {sequential:7.2f} s  (1 worker)")
    print(f"parallel:         {parallel:7.2f} s  ({args.workers} workers, 4 per account)")
    print(f"speed-up:         {speedup:7.1f}x  (target >= 8x: {'met' if speedup >= 8 else 'NOT met'})")
    print(f"calls per item:   {args.buckets} buckets in one unit: {sum(bucket_calls.values())} AWS calls "
          f"(the listing, the location and tags of each bucket, the AssumeRole)")
    print(f"  one at a time:  {one_call:7.2f} s")
    print(f"  4 at once:      {four_calls:7.2f} s  ({one_call / four_calls:.1f}x; at most 4x, the account's bound)")
    return 0 if speedup >= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
