"""Reads by pages of a table that changes under them: hypothesis-generated tables and changes.

Whatever is added or removed between two pages, and however the pages are fetched, a read either
returns every row that was there throughout (once each, and no row that never was), or raises
ServiceNowShiftedRead: it never misses a row silently. (A missed CI of ours would be created again.)
"""

from __future__ import annotations

import threading
from itertools import chain
from urllib.parse import parse_qs, urlparse

import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import ServiceNowShiftedRead
from connector.servicenow.client import TableClient
from connector.settings import ServiceNowSettings

URL = "https://acme.service-now.com"
TABLE_URL = f"{URL}/api/now/table/cmdb_ci_vm_instance"

ids = st.integers(min_value=0, max_value=999).map(lambda n: f"{n:03d}")


class ChangingTable:
    """Serves pages ordered by sys_id, as the Table API does; right after request ``at`` is answered, the
    rows ``gone`` are removed and ``added`` added (someone else's writes)."""

    def __init__(self, rows: set[str], at: int, gone: set[str], added: set[str]):
        self.rows, self.at, self.gone, self.added = set(rows), at, gone, added
        self.served = 0
        self.lock = threading.Lock()

    def __call__(self, request):
        query = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
        limit, offset = int(query["sysparm_limit"]), int(query.get("sysparm_offset", "0"))
        with self.lock:
            ordered = sorted(self.rows)
            page, total = ordered[offset:offset + limit], len(ordered)
            self.served += 1
            if self.served == self.at:
                self.rows = (self.rows - self.gone) | self.added
        return 200, {"X-Total-Count": str(total)}, '{"result": [%s]}' % ",".join(f'{{"sys_id": "{i}"}}' for i in page)


@settings(max_examples=150, deadline=None)
@given(rows=st.sets(ids, min_size=0, max_size=40), data=st.data(), page_size=st.integers(1, 7),
       workers=st.sampled_from([1, 3]))
def test_a_read_misses_no_row_that_was_there_throughout_or_says_the_table_shifted(rows, data, page_size, workers):
    gone = data.draw(st.sets(st.sampled_from(sorted(rows)), max_size=5) if rows else st.just(set()))
    added = data.draw(st.sets(ids, max_size=5)) - rows
    at = data.draw(st.integers(min_value=1, max_value=max(1, len(rows) // page_size + 1)))
    table = ChangingTable(rows, at, gone, added)
    tables = TableClient(ServiceNowSettings(instance_url=URL, username="u", password="p", page_size=page_size))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, TABLE_URL, callback=table)
        try:
            read = [r["sys_id"] for r in chain.from_iterable(
                tables.pages("cmdb_ci_vm_instance", "", ["sys_id"], workers=workers))]
        except ServiceNowShiftedRead:
            return  # told: the caller reads again, or leaves the class as it is
    assert len(read) == len(set(read))  # no row twice
    assert rows - gone <= set(read) <= rows | added  # every row there throughout; none that never was


class KeyedTable(ChangingTable):
    """``ChangingTable`` that also takes ``sys_id>X`` in its query, as the Table API does, and hides the
    rows ``hidden`` (an ACL) after the limit is applied, as the Table API does too; it changes
    right after each request of ``changes`` (request number -> rows removed, rows added)."""

    def __init__(self, rows: set[str], hidden: set[str], changes: dict[int, tuple[set[str], set[str]]]):
        super().__init__(rows, 0, set(), set())
        self.hidden, self.changes = hidden, changes

    def __call__(self, request):
        query = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
        limit, offset = int(query["sysparm_limit"]), int(query.get("sysparm_offset", "0"))
        after = next((c[len("sys_id>"):] for c in query["sysparm_query"].split("^") if c.startswith("sys_id>")), "")
        with self.lock:
            ordered = sorted(r for r in self.rows if r > after)
            page, total = ordered[offset:offset + limit], len(ordered)
            self.served += 1
            gone, added = self.changes.get(self.served, (set(), set()))
            self.rows = (self.rows - gone) | added
        shown = [i for i in page if i not in self.hidden]
        return 200, {"X-Total-Count": str(total)}, '{"result": [%s]}' % ",".join(f'{{"sys_id": "{i}"}}' for i in shown)


@settings(max_examples=150, deadline=None)
@given(rows=st.sets(ids, min_size=0, max_size=40), data=st.data(), page_size=st.integers(1, 7))
def test_a_read_by_sys_id_has_every_row_there_throughout_once_whatever_changes_meanwhile(rows, data, page_size):
    hidden = data.draw(st.sets(st.sampled_from(sorted(rows)), max_size=len(rows)) if rows else st.just(set()))
    changes = {}
    for at in data.draw(st.sets(st.integers(1, 12), max_size=4)):  # someone else's writes, now and then
        gone = data.draw(st.sets(st.sampled_from(sorted(rows)), max_size=5) if rows else st.just(set()))
        changes[at] = (gone, data.draw(st.sets(ids, max_size=5)) - rows)
    table = KeyedTable(rows, hidden, changes)
    tables = TableClient(ServiceNowSettings(instance_url=URL, username="u", password="p", page_size=page_size))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, TABLE_URL, callback=table)
        try:
            read = [r["sys_id"] for r in chain.from_iterable(
                tables.keyset_pages("cmdb_ci_vm_instance", "discovery_source=x", ["sys_id"]))]
        except ServiceNowShiftedRead:
            # only where ACLs hid a whole page: its rows give no row to go on from
            assert len(hidden) >= page_size
            return
        queries = [parse_qs(urlparse(c.request.url).query)["sysparm_query"][0] for c in mock.calls]
    gone_ever = set().union(*(g for g, _a in changes.values()))
    added_ever = set().union(*(a for _g, a in changes.values()))
    assert len(read) == len(set(read)) and read == sorted(read)  # no row twice, in sys_id order
    assert (rows - gone_ever - hidden) <= set(read) <= (rows | added_ever) - hidden  # nothing missed, nothing made up
    assert all(q.startswith("discovery_source=x^") and q.endswith("^ORDERBYsys_id") for q in queries)
    # it ends: each request but the last moves on by a row at least
    assert len(queries) <= len(rows) + len(added_ever) + 1
