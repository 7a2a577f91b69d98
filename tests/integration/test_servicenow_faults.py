"""The whole reconcile path against the stand-in over HTTP, with its faults switched on.

Every run either ends with the right CMDB or fails with a clear error, and
never writes a duplicate or a wrong retire. The inventory is synthetic (no
AWS here), so these runs test the ServiceNow side alone.
"""

from __future__ import annotations

from collections import Counter

import pytest

from connector.inventory import write_inventory
from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory
from connector.settings import load_settings

PASSWORD = "fault-test-password"
SECRET = "fault-test-client-secret"
INVENTORY = synthetic_inventory(accounts=2, regions=("us-east-1",), vpcs=1, subnets=2, instances=5)
# 2 accounts + 2 datacenters + 2 VPCs + 4 subnets + 20 instances
EXPECTED_CIS = 30
EXPECTED_RELATIONS = 2 + 2 + 4 * 2 + 20


@pytest.fixture
def inventory_file(tmp_path):
    path = tmp_path / "inventory.jsonl"
    write_inventory(INVENTORY, path)
    return path


def settings_for(server: ServiceNowStandIn, tmp_path, **servicenow):
    sn = {"instance_url": server.url, "username": "svc", "password": PASSWORD, "max_retry_seconds": 60, **servicenow}
    return load_settings(None, {"aws": {"external_id": "not-used-here"}, "servicenow": sn,
                                "report": {"output_dir": str(tmp_path / "reports")}})


def assert_cmdb_right(server: ServiceNowStandIn) -> None:
    cis = server.store.rows("cmdb_ci")
    keys = Counter(r["correlation_id"] for r in cis)
    assert [k for k, n in keys.items() if n > 1] == []  # no duplicate
    assert len(cis) == EXPECTED_CIS
    assert {r["install_status"] for r in cis} == {"1"}  # no wrong retire
    relations = Counter((r["parent"], r["child"], r["type"]) for r in server.store.rows("cmdb_rel_ci"))
    assert len(relations) == EXPECTED_RELATIONS and max(relations.values()) == 1


@pytest.mark.parametrize("batch_size", [0, 10])
def test_a_fifth_of_requests_throttled_still_converges(tmp_path, inventory_file, batch_size):
    with ServiceNowStandIn(users={"svc": PASSWORD}, rate_429=0.2, retry_after=0.01) as server:
        settings = settings_for(server, tmp_path, batch_size=batch_size, max_attempts=12)
        outcome = run_pipeline(settings, inventory_file=inventory_file)
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert server.stats["fault 429"] > 0
        assert_cmdb_right(server)
        writes = server.writes()
        again = run_pipeline(settings, inventory_file=inventory_file)
        assert again.exit_code == 0 and again.report["changes"] == []
        assert server.writes() == writes


def test_batch_on_or_off_gives_the_same_cmdb(tmp_path, inventory_file):
    snapshots = []
    for batch_size in (0, 7):
        with ServiceNowStandIn(users={"svc": PASSWORD}, batch_serviced_limit=3) as server:
            outcome = run_pipeline(settings_for(server, tmp_path, batch_size=batch_size), inventory_file=inventory_file)
            assert outcome.exit_code == 0
            assert_cmdb_right(server)
            if batch_size:
                assert server.stats["POST batch"] > 0 and server.stats["POST cmdb_ci_vm_instance"] == 0
            keys = {r["sys_id"]: r["correlation_id"] for r in server.store.rows("cmdb_ci")}
            assert all(r["first_discovered"] and r["last_discovered"] for r in server.store.rows("cmdb_ci"))
            # the same CMDB, but for the time each run stamped (the runs are made one after the other)
            content = sorted(tuple(sorted((k, v) for k, v in r.items() if not k.startswith("sys_")
                                          and k not in ("first_discovered", "last_discovered")))
                             for r in server.store.rows("cmdb_ci"))
            relations = sorted((keys[r["parent"]], keys[r["child"]]) for r in server.store.rows("cmdb_rel_ci"))
            snapshots.append((content, relations))
    assert snapshots[0] == snapshots[1]


@pytest.mark.parametrize("batch_size", [0, 10])
def test_short_html_outage_in_the_middle_of_a_run(tmp_path, inventory_file, batch_size):
    with ServiceNowStandIn(users={"svc": PASSWORD}, outage_after=12, outage_requests=3) as server:
        settings = settings_for(server, tmp_path, batch_size=batch_size)
        outcome = run_pipeline(settings, inventory_file=inventory_file)
        assert server.stats["fault html"] == 3
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert_cmdb_right(server)


def test_long_html_outage_fails_clearly_then_the_next_run_converges(tmp_path, inventory_file):
    with ServiceNowStandIn(users={"svc": PASSWORD}, outage_after=15, outage_requests=100_000) as server:
        settings = settings_for(server, tmp_path, max_attempts=2)
        outcome = run_pipeline(settings, inventory_file=inventory_file)
        assert outcome.exit_code == 1
        assert any("HTML page" in e for e in outcome.report["errors"])
        server.faults.update({"outage_after": -1})
        recovered = run_pipeline(settings, inventory_file=inventory_file)
        assert recovered.exit_code == 0, recovered.report["errors"]
        assert_cmdb_right(server)


def test_an_expired_oauth_token_is_renewed_mid_run(tmp_path, inventory_file):
    with ServiceNowStandIn(users={"svc": PASSWORD}, oauth_clients={"cmdb": SECRET}, expire_tokens_at=20) as server:
        settings = settings_for(server, tmp_path, auth="oauth_password", client_id="cmdb", client_secret=SECRET)
        outcome = run_pipeline(settings, inventory_file=inventory_file)
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert server.stats["oauth password"] == 1 and server.stats["oauth refresh_token"] >= 1
        assert_cmdb_right(server)
        text = str(outcome.report)
        assert SECRET not in text and PASSWORD not in text


def test_client_credentials_grant(tmp_path, inventory_file):
    with ServiceNowStandIn(users={}, oauth_clients={"cmdb": SECRET}) as server:
        settings = settings_for(server, tmp_path, auth="oauth_client_credentials", username="", password="",
                                client_id="cmdb", client_secret=SECRET)
        assert run_pipeline(settings, inventory_file=inventory_file).exit_code == 0
        assert_cmdb_right(server)
        assert {r["sys_created_by"] for r in server.store.rows("cmdb_ci")} == {"cmdb"}


def test_wrong_password_fails_with_exit_1_and_no_write(tmp_path, inventory_file, monkeypatch):
    """And before any AWS call: the login is checked first, not after minutes of collection."""
    import connector.run as run

    collected = []
    monkeypatch.setattr(run, "collect_from_aws", lambda *args: collected.append(args))
    with ServiceNowStandIn(users={"svc": "the-real-one"}) as server:
        outcome = run_pipeline(settings_for(server, tmp_path), inventory_file=inventory_file)
        assert outcome.exit_code == 1
        assert any("User Not Authenticated" in e for e in outcome.report["errors"])
        assert server.writes() == 0 and PASSWORD not in str(outcome.report)

        live = run_pipeline(settings_for(server, tmp_path))  # from AWS, not from a file
        assert live.exit_code == 1 and collected == [] and live.report["accounts"] == []
        [error] = live.report["errors"]
        assert error.startswith("ServiceNow refused the credentials") and "GET /api/now/table/cmdb_ci" in error
        assert server.stats["GET cmdb_ci"] == 2  # one look at cmdb_ci per run, and nothing else
        assert sum(n for kind, n in server.stats.items() if kind.startswith(("GET", "POST", "PATCH", "DELETE"))) == 2


@pytest.mark.parametrize("refusal", ["ServiceNowPermissionError", "ServiceNowNotFound", "ServiceNowBadRequest"])
def test_a_login_check_refused_for_cmdb_ci_alone_is_left_to_each_class(tmp_path, inventory_file, monkeypatch, refusal):
    """The user may not read cmdb_ci itself (an ACL: 403, or 404 for rows it hides), only the classes:
    the login check on cmdb_ci is then no reason to fail. The run reconciles every class."""
    import connector.errors as errors
    from connector.servicenow.client import TableClient

    count = TableClient.count

    def refused_on_cmdb_ci(self, table, query):
        if table == "cmdb_ci":
            raise getattr(errors, refusal)("refused", status=403, method="GET", url="/api/now/table/cmdb_ci")
        return count(self, table, query)

    monkeypatch.setattr(TableClient, "count", refused_on_cmdb_ci)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        outcome = run_pipeline(settings_for(server, tmp_path), inventory_file=inventory_file)
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert_cmdb_right(server)
    with ServiceNowStandIn(users={"svc": "the-real-one"}) as server:  # a refused login still fails the run
        assert run_pipeline(settings_for(server, tmp_path), inventory_file=inventory_file).exit_code == 1
        assert server.writes() == 0


def test_deep_session_queue_drops_requests_with_an_empty_202(tmp_path):
    import threading

    import requests

    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.2, session_queue_limit=1) as server:
        first = requests.get(f"{server.url}/api/now/table/cmdb_ci", auth=("svc", PASSWORD))
        cookie = {"JSESSIONID": first.cookies["JSESSIONID"]}
        statuses = []

        def call():
            r = requests.get(f"{server.url}/api/now/table/cmdb_ci", auth=("svc", PASSWORD), cookies=cookie)
            statuses.append((r.status_code, r.content))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (202, b"") in statuses and any(s == 200 for s, _ in statuses)


def test_concurrent_writers_do_not_share_a_session_cookie(tmp_path, inventory_file):
    # Requests sharing a JSESSIONID are served one at a time; overlap proves separate sessions.
    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.02) as server:
        outcome = run_pipeline(settings_for(server, tmp_path, workers=4), inventory_file=inventory_file)
        assert outcome.exit_code == 0
        assert server.max_active > 1
        assert_cmdb_right(server)


def test_workers_bounds_the_requests_in_flight_over_every_table_and_page(tmp_path, inventory_file):
    # Tables, their pages and the relations are read at once, and writes run
    # concurrently; still no more than servicenow.workers requests are in flight.
    with ServiceNowStandIn(users={"svc": PASSWORD}, latency=0.02) as server:
        settings = settings_for(server, tmp_path, workers=3, page_size=2)
        assert run_pipeline(settings, inventory_file=inventory_file).exit_code == 0
        assert run_pipeline(settings, inventory_file=inventory_file).exit_code == 0  # reads many pages
        assert 1 < server.max_active <= 3


@pytest.mark.parametrize("batch_size", [0, 10])
def test_answers_lost_after_the_work_was_done_never_duplicate(tmp_path, inventory_file, batch_size):
    """A cancelled transaction (500) may have written: creates are looked up before any resend."""
    with ServiceNowStandIn(users={"svc": PASSWORD}, rate_cancelled=0.15) as server:
        settings = settings_for(server, tmp_path, batch_size=batch_size, max_attempts=12)
        outcome = run_pipeline(settings, inventory_file=inventory_file)
        assert server.stats["fault cancelled"] > 0
        assert outcome.exit_code == 0, outcome.report["errors"]
        assert_cmdb_right(server)
