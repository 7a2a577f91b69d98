"""The ServiceNow stand-in, checked over HTTP against the behaviours in SERVICENOW.md."""

from __future__ import annotations

import pytest
import requests

AUTH = ("admin", "s3cret-pw")


@pytest.fixture
def api(standin):
    session = requests.Session()
    session.auth = AUTH
    session.headers.update({"Accept": "application/json", "Content-Type": "application/json"})
    base = f"{standin.url}/api/now/table"

    def call(method, path, **kw):
        return session.request(method, f"{base}/{path}", **kw)

    return call


def make(api, table, **values):
    response = api("POST", table, json=values)
    assert response.status_code == 201
    return response.json()["result"]


def test_values_are_strings_and_create_answers_201_with_location(api):
    response = api("POST", "cmdb_ci_vm_instance", json={"name": "vm", "cpus": 4, "state": None})
    body = response.json()["result"]
    assert response.status_code == 201
    assert response.headers["Location"].endswith(f"/api/now/table/cmdb_ci_vm_instance/{body['sys_id']}")
    assert body["cpus"] == "4" and body["state"] == "" and body["sys_class_name"] == "cmdb_ci_vm_instance"
    assert all(isinstance(v, str) for v in body.values())


def test_unknown_fields_are_ignored_on_write(api):
    body = make(api, "cmdb_ci_vm_instance", name="vm", no_such_field="x")
    assert "no_such_field" not in body


def test_reference_fields_are_links_unless_excluded(api, standin):
    parent = make(api, "cmdb_ci_vm_instance", name="vm")["sys_id"]
    child = make(api, "cmdb_ci_aws_datacenter", name="dc")["sys_id"]
    rel_type = api("GET", "cmdb_rel_type", params={"sysparm_query": "name=Hosted on::Hosts"}).json()["result"][0]["sys_id"]
    rel = make(api, "cmdb_rel_ci", parent=parent, child=child, type=rel_type)
    assert rel["parent"] == {"link": f"{standin.url}/api/now/table/cmdb_ci/{parent}", "value": parent}
    plain = api("GET", f"cmdb_rel_ci/{rel['sys_id']}", params={"sysparm_exclude_reference_link": "true"}).json()["result"]
    assert plain["parent"] == parent and plain["type"] == rel_type


def test_relation_types_are_seeded_with_standard_names(api):
    names = {r["name"] for r in api("GET", "cmdb_rel_type").json()["result"]}
    assert {"Hosted on::Hosts", "Contains::Contained by", "Located in::Houses"} <= names


def test_condition_on_unknown_field_is_silently_dropped(api):
    make(api, "cmdb_ci_vm_instance", name="a", discovery_source="X")
    make(api, "cmdb_ci_vm_instance", name="b", discovery_source="Y")
    typo = api("GET", "cmdb_ci_vm_instance", params={"sysparm_query": "discovery_sorce=X"}).json()["result"]
    assert len(typo) == 2  # every row, as a real instance does
    right = api("GET", "cmdb_ci_vm_instance", params={"sysparm_query": "discovery_source=X"}).json()["result"]
    assert [r["name"] for r in right] == ["a"]


@pytest.mark.parametrize("query, names", [
    ("name=a", ["a"]),
    ("name!=a", ["b", "c"]),
    ("nameINa,c", ["a", "c"]),
    ("nameNOT INa,c", ["b"]),
    ("nameSTARTSWITHa", ["a"]),
    ("short_descriptionENDSWITHend", ["b"]),
    ("short_descriptionLIKEmid", ["a", "b"]),
    ("short_descriptionNOT LIKEmid", ["c"]),
    ("short_descriptionISEMPTY", ["c"]),
    ("short_descriptionISNOTEMPTY", ["a", "b"]),
    ("name=a^ORname=b^short_descriptionLIKEend", ["b"]),
    ("name=a^NQname=c", ["a", "c"]),
    ("nameINa,b,c^ORDERBYDESCname", ["c", "b", "a"]),
])
def test_encoded_query_operators(api, query, names):
    make(api, "cmdb_ci_vm_instance", name="b", short_description="the mid end")
    make(api, "cmdb_ci_vm_instance", name="a", short_description="mid")
    make(api, "cmdb_ci_vm_instance", name="c")
    rows = api("GET", "cmdb_ci_vm_instance", params={"sysparm_query": query + ("" if "ORDERBY" in query else "^ORDERBYname")}).json()["result"]
    assert [r["name"] for r in rows] == names


def test_numeric_comparisons_and_or_groups_with_unknown_fields(api):
    for name, status in (("a", "1"), ("b", "7"), ("c", "10")):
        make(api, "cmdb_ci_vm_instance", name=name, install_status=status)

    def names(query: str) -> list[str]:
        rows = api("GET", "cmdb_ci_vm_instance", params={"sysparm_query": query + "^ORDERBYname"}).json()["result"]
        return [r["name"] for r in rows]

    assert names("install_status>5") == ["b", "c"]  # as numbers: "10" > "5"
    assert names("install_status<=7") == ["a", "b"]
    assert names("namee=a^ORname=b") == ["b"]  # the unknown condition drops out of its OR group
    assert names("namee=a^ORnamf=b^name!=c") == ["a", "b"]  # a group of unknown conditions drops out whole


@pytest.mark.parametrize("sent", [b"", b'{"name": "cut'])
def test_a_request_whose_body_is_cut_short_is_dropped_not_run(standin, api, sent):
    # A client killed mid-send leaves headers and part of a body: a real server
    # never runs that as an empty request (which would create a blank CI).
    import base64
    import socket
    from urllib.parse import urlparse

    url = urlparse(standin.url)
    auth = base64.b64encode(b"admin:s3cret-pw").decode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"POST /api/now/table/cmdb_ci_vm_instance HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode() + sent)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # no answer: the connection is just closed
    assert standin.store.rows("cmdb_ci_vm_instance") == []
    assert api("GET", "cmdb_ci_vm_instance").status_code == 200  # and the stand-in serves on


def test_a_burst_of_new_connections_is_queued_not_dropped(standin):
    # socketserver listens with a backlog of 5: more connections at once and
    # the kernel drops SYNs, which clients retry a second later.
    assert standin._server.request_queue_size >= 128


def test_paging_headers_link_and_total_count(api):
    for i in range(5):
        make(api, "cmdb_ci_network", name=f"n{i}")
    response = api("GET", "cmdb_ci_network", params={"sysparm_limit": "2", "sysparm_offset": "2", "sysparm_query": "ORDERBYname"})
    assert [r["name"] for r in response.json()["result"]] == ["n2", "n3"]
    assert response.headers["X-Total-Count"] == "5"
    links = requests.utils.parse_header_links(response.headers["Link"])
    rels = {link["rel"]: link["url"] for link in links}
    assert set(rels) == {"first", "prev", "next", "last"}
    assert "sysparm_offset=4" in rels["next"] and "sysparm_offset=0" in rels["prev"]
    nxt = requests.get(rels["next"], auth=AUTH).json()["result"]
    assert [r["name"] for r in nxt] == ["n4"]


def test_table_inheritance_cmdb_ci_returns_child_classes(api):
    make(api, "cmdb_ci_vm_instance", name="vm")
    make(api, "cmdb_ci_aws_datacenter", name="dc")
    classes = {r["sys_class_name"] for r in api("GET", "cmdb_ci").json()["result"]}
    assert classes == {"cmdb_ci_vm_instance", "cmdb_ci_aws_datacenter"}
    logical = api("GET", "cmdb_ci_logical_datacenter").json()["result"]
    assert [r["name"] for r in logical] == ["dc"]


def test_update_delete_and_404_in_servicenow_shape(api):
    sys_id = make(api, "cmdb_ci_network", name="n")["sys_id"]
    assert api("PATCH", f"cmdb_ci_network/{sys_id}", json={"cidr": "10.0.0.0/8"}).json()["result"]["cidr"] == "10.0.0.0/8"
    deleted = api("DELETE", f"cmdb_ci_network/{sys_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    missing = api("GET", f"cmdb_ci_network/{sys_id}")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "No Record found",
                                        "detail": "Record doesn't exist or ACL restricts the record retrieval"},
                              "status": "failure"}


def test_v1_no_match_is_404_and_v2_is_empty(standin):
    for version, status in (("v1", 404), ("v2", 200)):
        response = requests.get(f"{standin.url}/api/now/{version}/table/cmdb_ci", params={"sysparm_query": "name=none"}, auth=AUTH)
        assert response.status_code == status


def test_basic_auth_required(standin):
    response = requests.get(f"{standin.url}/api/now/table/cmdb_ci", auth=("admin", "wrong"))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "User Not Authenticated"


def test_dot_walked_query_through_a_reference(api):
    mine = make(api, "cmdb_ci_vm_instance", name="mine", discovery_source="X")["sys_id"]
    theirs = make(api, "cmdb_ci_vm_instance", name="theirs", discovery_source="Y")["sys_id"]
    dc = make(api, "cmdb_ci_aws_datacenter", name="dc")["sys_id"]
    make(api, "cmdb_rel_ci", parent=mine, child=dc)
    make(api, "cmdb_rel_ci", parent=theirs, child=dc)
    rows = api("GET", "cmdb_rel_ci", params={"sysparm_query": "parent.discovery_source=X", "sysparm_exclude_reference_link": "true"}).json()["result"]
    assert [r["parent"] for r in rows] == [mine]


def test_relations_by_the_name_of_their_type(api):
    """What the connector asks for the relations by: parent.discovery_source and type.nameIN."""
    mine = make(api, "cmdb_ci_vm_instance", name="mine", discovery_source="X")["sys_id"]
    dc = make(api, "cmdb_ci_aws_datacenter", name="dc")["sys_id"]
    types = {row["name"]: row["sys_id"] for row in api("GET", "cmdb_rel_type").json()["result"]}
    hosted = make(api, "cmdb_rel_ci", parent=mine, child=dc, type=types["Hosted on::Hosts"])["sys_id"]
    make(api, "cmdb_rel_ci", parent=mine, child=dc, type=types["Depends on::Used by"])
    located = make(api, "cmdb_rel_ci", parent=mine, child=dc, type=types["Located in::Houses"])["sys_id"]
    query = "parent.discovery_source=X^type.nameINHosted on::Hosts,Located in::Houses^ORDERBYsys_id"
    rows = api("GET", "cmdb_rel_ci", params={"sysparm_query": query}).json()["result"]
    assert sorted(r["sys_id"] for r in rows) == sorted([hosted, located])


def test_dot_walks_through_empty_and_dangling_references(api):
    """An empty reference, or one to a record that is gone, walks to "" (so ISEMPTY holds for it); a walk to
    a field the referenced table lacks is dropped, as any unknown field is."""
    vm = make(api, "cmdb_ci_vm_instance", name="vm", discovery_source="X")["sys_id"]
    dc = make(api, "cmdb_ci_aws_datacenter", name="dc")["sys_id"]
    gone = make(api, "cmdb_ci_aws_datacenter", name="gone")["sys_id"]
    kept = make(api, "cmdb_rel_ci", parent=vm, child=dc)["sys_id"]
    empty = make(api, "cmdb_rel_ci", parent=vm)["sys_id"]
    dangling = make(api, "cmdb_rel_ci", parent=vm, child=gone)["sys_id"]
    assert api("DELETE", f"cmdb_ci_aws_datacenter/{gone}").status_code == 204
    tag = make(api, "cmdb_key_value", configuration_item=vm, key="k", value="v")["sys_id"]

    def found(table, query):
        return sorted(r["sys_id"] for r in api("GET", table, params={"sysparm_query": query}).json()["result"])

    assert found("cmdb_rel_ci", "child.nameISEMPTY") == sorted([empty, dangling])
    assert found("cmdb_rel_ci", "child.name=dc") == [kept]
    assert found("cmdb_rel_ci", "child.no_such_field=dc") == sorted([kept, empty, dangling])  # dropped
    assert found("cmdb_key_value", "configuration_item.discovery_source=X") == [tag]
    assert found("cmdb_key_value", "configuration_item.discovery_source=Y") == []


def test_a_list_shows_each_change_of_a_record_at_once(api):
    """Lists render a record once per change (sys_mod_count): a change is never served stale."""
    vm = make(api, "cmdb_ci_vm_instance", name="before")["sys_id"]
    fields = {"sysparm_fields": "sys_id,name,sys_mod_count", "sysparm_query": "nameSTARTSWITHbe"}
    assert [r["name"] for r in api("GET", "cmdb_ci_vm_instance", params=fields).json()["result"]] == ["before"]
    assert api("PATCH", f"cmdb_ci_vm_instance/{vm}", json={"name": "bent"}).status_code == 200
    assert api("GET", "cmdb_ci_vm_instance", params=fields).json()["result"] == [
        {"sys_id": vm, "name": "bent", "sys_mod_count": "1"}]
    assert api("PATCH", f"cmdb_ci_vm_instance/{vm}", json={"name": "best"}).status_code == 200
    assert [r["name"] for r in api("GET", "cmdb_ci_vm_instance", params=fields).json()["result"]] == ["best"]


def test_faults_html_outage_429_and_session_cookie(standin, api):
    first = api("GET", "cmdb_ci")
    assert first.cookies.get("JSESSIONID")
    requests.post(f"{standin.url}/sandbox/faults", json={"html_outage": True})
    outage = api("GET", "cmdb_ci")
    assert outage.status_code == 200 and outage.headers["Content-Type"] == "text/html" and b"<html>" in outage.content
    requests.post(f"{standin.url}/sandbox/faults", json={"html_outage": False, "rate_429": 1.0, "retry_after": 3})
    limited = api("GET", "cmdb_ci")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert "X-RateLimit-Limit" in limited.headers


def test_count_and_pagination_headers_can_be_suppressed(api):
    make(api, "cmdb_ci_network", name="n")
    response = api("GET", "cmdb_ci_network", params={"sysparm_no_count": "true", "sysparm_suppress_pagination_header": "true"})
    assert "X-Total-Count" not in response.headers and "Link" not in response.headers
    assert len(response.json()["result"]) == 1


def test_sysparm_fields_limits_fields_and_ignores_unknown_ones(api):
    make(api, "cmdb_ci_network", name="n", cidr="10.0.0.0/8")
    row = api("GET", "cmdb_ci_network", params={"sysparm_fields": "name,cidr,nonsense"}).json()["result"][0]
    assert row == {"name": "n", "cidr": "10.0.0.0/8"}


def test_acl_limit_before_acl_gives_short_and_empty_pages(standin, api):
    for name in ("a1", "a2", "hidden1", "hidden2", "hidden3", "b1"):
        make(api, "cmdb_ci_network", name=name)
    standin.faults.update({"acl_hidden_prefix": "hidden"})
    pages = [api("GET", "cmdb_ci_network", params={"sysparm_query": "ORDERBYname", "sysparm_limit": "2", "sysparm_offset": str(o)})
             for o in (0, 2, 4)]
    assert [[r["name"] for r in p.json()["result"]] for p in pages] == [["a1", "a2"], ["b1"], []]
    assert {p.headers["X-Total-Count"] for p in pages} == {"6"}


def test_client_reads_past_short_and_empty_pages(standin):
    from connector.servicenow.client import TableClient
    from connector.settings import ServiceNowSettings

    for i in range(9):
        standin.store.insert("cmdb_ci_network", {"name": ("hidden" if 2 <= i <= 5 else "net") + str(i)}, "admin")
    standin.faults.update({"acl_hidden_prefix": "hidden"})
    tables = TableClient(ServiceNowSettings(instance_url=standin.url, username="admin", password="s3cret-pw", page_size=2))
    names = sorted(r["name"] for r in tables.query("cmdb_ci_network", "", ["name"]))
    assert names == ["net0", "net1", "net6", "net7", "net8"]
    # with sys_id among the fields, each page begins on the row the page before ended on (the seam):
    # where ACLs hid that row, the page's first row is one of its own, kept; none is read twice
    names = [r["name"] for r in tables.read("cmdb_ci_network", "", ["sys_id", "name"], workers=3)]
    assert sorted(names) == ["net0", "net1", "net6", "net7", "net8"]


@pytest.mark.parametrize("seed", range(6))
def test_seams_where_acls_hide_rows_anywhere_read_every_visible_row_once(standin, seed, caplog):
    import random

    from connector.servicenow.client import TableClient
    from connector.settings import ServiceNowSettings

    chance = random.Random(seed)
    for i in range(23):
        standin.store.insert("cmdb_ci_network", {"name": ("hidden" if chance.random() < 0.4 else "net") + str(i)}, "admin")
    standin.faults.update({"acl_hidden_prefix": "hidden"})
    visible = sorted(r["name"] for r in standin.store.rows("cmdb_ci_network") if r["name"].startswith("net"))
    tables = TableClient(ServiceNowSettings(instance_url=standin.url, username="admin", password="s3cret-pw",
                                            page_size=chance.choice([2, 3, 4])))
    names = [r["name"] for r in tables.read("cmdb_ci_network", "", ["sys_id", "name"], workers=4)]
    assert sorted(names) == visible  # every visible row, once
    assert not [r for r in caplog.records if "reading it again" in r.getMessage()]  # the table did not change


def test_acl_refusal_is_403_in_servicenow_shape(standin, api):
    standin.faults.update({"acl_denied_tables": ["cmdb_ci_network"]})
    response = api("POST", "cmdb_ci_network", json={"name": "n"})
    assert response.status_code == 403
    assert response.json()["error"]["detail"] == "ACL Exception Insert Failed due to security constraints"


def test_batch_api_runs_each_item_and_reports_unserviced(standin):
    import base64
    import json as _json

    standin.faults.update({"batch_serviced_limit": 2})
    body = {"batch_request_id": "7", "rest_requests": [
        {"id": str(i), "method": "POST", "url": "/api/now/table/cmdb_ci_network",
         "headers": [{"name": "Content-Type", "value": "application/json"}],
         "body": base64.b64encode(_json.dumps({"name": f"n{i}"}).encode()).decode()} for i in range(3)]}
    answer = requests.post(f"{standin.url}/api/now/v1/batch", json=body, auth=AUTH).json()
    assert answer["batch_request_id"] == "7" and answer["unserviced_requests"] == ["2"]
    assert [(r["id"], r["status_code"]) for r in answer["serviced_requests"]] == [("0", 201), ("1", 201)]
    made = _json.loads(base64.b64decode(answer["serviced_requests"][0]["body"]))["result"]
    assert made["name"] == "n0"
    assert sorted(r["name"] for r in standin.store.rows("cmdb_ci_network")) == ["n0", "n1"]


def test_oauth_token_endpoint_and_expiry(standin):
    standin.oauth_clients["cid"] = "csecret"
    token = requests.post(f"{standin.url}/oauth_token.do", data={
        "grant_type": "password", "client_id": "cid", "client_secret": "csecret",
        "username": "admin", "password": "s3cret-pw"}).json()
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert requests.get(f"{standin.url}/api/now/table/cmdb_ci", headers=bearer).status_code == 200
    requests.post(f"{standin.url}/sandbox/expire-tokens")
    assert requests.get(f"{standin.url}/api/now/table/cmdb_ci", headers=bearer).status_code == 401
    refused = requests.post(f"{standin.url}/oauth_token.do", data={
        "grant_type": "password", "client_id": "cid", "client_secret": "wrong", "username": "admin", "password": "s3cret-pw"})
    assert refused.status_code == 401 and refused.json()["error_description"] == "access_denied"


def test_sqlite_persistence_keeps_the_cmdb_between_runs(tmp_path):
    from connector.sandbox.servicenow import ServiceNowStandIn

    db = tmp_path / "cmdb.sqlite"
    with ServiceNowStandIn(users={"admin": "pw"}, db_path=db) as first:
        sys_id = requests.post(f"{first.url}/api/now/table/cmdb_ci_network", json={"name": "kept"}, auth=("admin", "pw")).json()["result"]["sys_id"]
        requests.patch(f"{first.url}/api/now/table/cmdb_ci_network/{sys_id}", json={"cidr": "10.1.0.0/16"}, auth=("admin", "pw"))
    with ServiceNowStandIn(users={"admin": "pw"}, db_path=db) as second:
        row = requests.get(f"{second.url}/api/now/table/cmdb_ci_network/{sys_id}", auth=("admin", "pw")).json()["result"]
        assert (row["name"], row["cidr"]) == ("kept", "10.1.0.0/16")
        assert len([r for r in second.store.rows("cmdb_rel_type") if r["name"] == "Hosted on::Hosts"]) == 1


def test_latency_is_spent_after_the_work_a_write_lands_before_its_answer(standin):
    """The stand-in serves a request, then holds its answer until the latency (plus its own CPU) is up, as a
    server that serves requests in parallel, behind that much network, would: a write is in the table while
    its answer is still on its way (what a run killed then leaves behind)."""
    import threading
    import time

    standin.faults.update({"latency": 0.5})
    answer = {}
    thread = threading.Thread(target=lambda: answer.setdefault("r", requests.post(
        f"{standin.url}/api/now/table/cmdb_ci_network", json={"name": "in flight"}, auth=AUTH)))
    started = time.monotonic()
    thread.start()
    while not [r for r in standin.store.rows("cmdb_ci_network") if r["name"] == "in flight"]:
        assert time.monotonic() - started < 10, "the write never landed"
        time.sleep(0.005)
    assert "r" not in answer  # written, answer not yet back
    thread.join()
    assert answer["r"].status_code == 201 and time.monotonic() - started >= 0.5


def test_requests_of_one_session_are_served_one_at_a_time(standin):
    import threading

    standin.faults.update({"latency": 0.2})
    first = requests.get(f"{standin.url}/api/now/table/cmdb_ci", auth=AUTH)
    shared = {"JSESSIONID": first.cookies["JSESSIONID"]}

    def burst(cookies):
        threads = [threading.Thread(target=lambda: requests.get(f"{standin.url}/api/now/table/cmdb_ci", auth=AUTH,
                                                                 cookies=cookies)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    standin.max_active = 0
    burst(shared)
    assert standin.max_active == 1
    burst(None)  # six sessions of their own
    assert standin.max_active > 1


def test_empty_string_clears_and_bad_json_is_400(api):
    sys_id = make(api, "cmdb_ci_network", name="n", cidr="10.0.0.0/8")["sys_id"]
    assert api("PATCH", f"cmdb_ci_network/{sys_id}", json={"cidr": ""}).json()["result"]["cidr"] == ""
    bad = api("PATCH", f"cmdb_ci_network/{sys_id}", data="{not json")
    assert bad.status_code == 400 and bad.json()["status"] == "failure"
    assert api("GET", "no_such_table").status_code == 400


def test_reads_are_logged_with_their_query_for_a_replay(standin, api):
    # bench/reconcile_bench.py sends a run's reads again from this log.
    make(api, "cmdb_ci_network", name="vpc")
    api("GET", "cmdb_ci_network", params={"sysparm_query": "name=vpc", "sysparm_limit": "5"})
    api("GET", "cmdb_ci_network", params={"sysparm_offset": "5"})
    answer = requests.get(f"{standin.url}/sandbox/reads", timeout=10).json()
    assert answer["total"] == 2  # the POST is not a read
    assert answer["reads"] == ["/api/now/table/cmdb_ci_network?sysparm_query=name%3Dvpc&sysparm_limit=5",
                               "/api/now/table/cmdb_ci_network?sysparm_offset=5"]


def test_string_values_are_cut_to_the_dictionary_length_which_the_dictionary_serves(api, standin):
    """A real instance cuts a value longer than its field, silently; sys_dictionary says how long each
    field is, on the class that defines it, and sys_db_object how the classes extend each other."""
    long_name = "n" * 300
    body = make(api, "cmdb_ci_vm_instance", name=long_name, short_description="d" * 300, vm_inst_id="i-1")
    assert body["name"] == long_name[:255] and len(body["short_description"]) == 300
    standin.store.set_length("cmdb_ci", "name", 12)  # an admin shortens the field
    changed = api("PATCH", f"cmdb_ci_vm_instance/{body['sys_id']}", json={"name": "abcdefghijklmnopq"}).json()["result"]
    assert changed["name"] == "abcdefghijkl"

    def rows(table, query, fields):
        response = api("GET", table, params={"sysparm_query": query, "sysparm_fields": fields,
                                             "sysparm_exclude_reference_link": "true"})
        assert response.status_code == 200
        return response.json()["result"]

    [name] = rows("sys_dictionary", "name=cmdb_ci^element=name", "name,element,internal_type,max_length")
    assert name == {"name": "cmdb_ci", "element": "name", "internal_type": "string", "max_length": "12"}
    assert rows("sys_dictionary", "name=cmdb_ci_vm_instance^element=name", "name") == []  # inherited: not its own
    [own] = rows("sys_dictionary", "name=cmdb_ci_vm_instance^element=cpus", "internal_type")
    assert own == {"internal_type": "integer"}
    classes = {r["sys_id"]: r for r in rows("sys_db_object", "nameSTARTSWITHcmdb_ci", "sys_id,name,super_class")}
    by_name = {r["name"]: r for r in classes.values()}
    assert classes[by_name["cmdb_ci_vm_instance"]["super_class"]]["name"] == "cmdb_ci_vm_object"
    assert classes[by_name["cmdb_ci_vm_object"]["super_class"]]["name"] == "cmdb_ci"
    assert by_name["cmdb_ci"]["super_class"] == ""
    refused = api("POST", "sys_dictionary", json={"name": "cmdb_ci", "element": "x"})
    assert refused.status_code == 403


def test_a_request_head_over_8_kb_is_refused_as_tomcat_refuses_it(api):
    """A real instance sits behind Tomcat, which answers a request line and headers over 8 KB with a 400
    HTML page before the Table API sees it: the stand-in does the same, so the connector is held to it."""
    make(api, "cmdb_ci_network", name="n")
    fits = api("GET", "cmdb_ci_network", params={"sysparm_query": "nameIN" + ",".join(["n"] * 1500)})  # 6 KB, encoded
    assert fits.status_code == 200 and [r["name"] for r in fits.json()["result"]] == ["n"]
    refused = api("GET", "cmdb_ci_network", params={"sysparm_query": "nameIN" + ",".join(["n"] * 2500)})  # 10 KB
    assert refused.status_code == 400 and "Request header is too large" in refused.text
    assert refused.headers["Content-Type"].startswith("text/html")


def test_the_client_names_a_request_head_too_large(standin):
    from connector.errors import ServiceNowBadRequest
    from connector.servicenow.client import TableClient
    from connector.settings import ServiceNowSettings

    tables = TableClient(ServiceNowSettings(instance_url=standin.url, username=AUTH[0], password=AUTH[1]))
    with pytest.raises(ServiceNowBadRequest, match="Request header is too large: the request's URL and headers"):
        list(tables.query("cmdb_ci_network", "nameIN" + ",".join(["n"] * 2500), ["name"]))


def test_a_db_file_that_is_no_stand_in_database_is_a_usage_error(tmp_path):
    from connector.errors import UsageError
    from connector.sandbox.store import Store

    garbage = tmp_path / "cmdb.db"
    garbage.write_text("not a database")
    with pytest.raises(UsageError, match=r"cmdb.db: cannot keep the stand-in's CMDB there \(file is not a database\)"):
        Store(garbage)
    with pytest.raises(UsageError, match="cannot keep the stand-in's CMDB there"):
        Store(tmp_path / "no-such-folder" / "cmdb.db")
