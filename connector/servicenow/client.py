"""Table API client: pysnow for CRUD and query building, our session underneath.

Sessions are pooled: a request takes an idle session (its own ``JSESSIONID``
and its kept-alive connection) and gives it back when done. No two requests in
flight ever share a session, because ServiceNow serialises the requests of one
session, and threads that come and go reuse the connections already open
rather than paying a TCP (and TLS) handshake each. Paging is ours: pysnow does
not follow ``rel="next"``.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, pairwise, repeat
from operator import itemgetter
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import pysnow
import requests

from ..concurrency import FairSlots
from ..errors import AmbiguousWriteError, ServiceNowBadResponse, ServiceNowShiftedRead
from ..settings import ServiceNowSettings
from .auth import make_auth
from .transport import ServiceNowSession

API_BASE = "/api/now"
# A read whose table changed meanwhile is made again by sys_id (``TableClient.keyset_pages``), which rows
# added or removed cannot shift. A read that cannot be (one without sys_id among its fields) is made again
# twice by offset, the second time one page after another (a shorter window for the table to change in),
# before it fails.
READ_ATTEMPTS = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Page:
    """One page of a read: ``rows`` (converted), the count it told, whether it came back with every row it
    asked for (none hidden by ACLs, not the table's end), its first row, unconverted, where it began one row
    early (``TableClient.pages``), and the ``sys_id`` of its last row."""
    rows: list
    total: str | None
    full: bool
    head_row: dict[str, Any] | None
    last: str | None


def _shifted(table: str, how: str) -> ServiceNowShiftedRead:
    """The error of a read whose table changed under its pages; ``how``: what told it."""
    return ServiceNowShiftedRead(f"{table}: rows were added or removed while it was read ({how}): its pages by offset "
                                 "skipped or repeated rows")


def _one_record(response: Any, method: str, table: str) -> dict[str, Any]:
    """The one record of a create's or an update's answer (pysnow's ``one``), or the typed error: a create's
    is ambiguous (it may have been made), an update's a bad answer (the next run compares again)."""
    try:
        return response.one()
    except (pysnow.exceptions.NoResults, pysnow.exceptions.MultipleResults) as exc:
        error = AmbiguousWriteError if method == "POST" else ServiceNowBadResponse
        raise error(f"ServiceNow answered a {'create' if method == 'POST' else 'write'} in {table} with "
                    f"{'no record' if isinstance(exc, pysnow.exceptions.NoResults) else 'several records'}, "
                    "not the one written", status=_status(response), method=method,
                    url=f"{API_BASE}/table/{table}") from None


def _keyed(query: str, fields: list[str]) -> bool:
    """Can the read be made by sys_id (``TableClient.keyset_pages``)? Its rows must carry their sys_id, and
    its query take one more condition ANDed to all of it (``^NQ`` would bind it to the last query only)."""
    return "sys_id" in fields and "^NQ" not in query


def _in_sys_id_order(*conditions: str) -> str:
    """An encoded query of the ``conditions`` given (empty ones left out), in ``sys_id`` order, as every paged
    read asks."""
    return "^".join([*filter(None, conditions), "ORDERBYsys_id"])


def _status(response: Any) -> int | None:
    """The HTTP status of a pysnow response (of the requests response it wraps)."""
    return getattr(getattr(response, "_response", None), "status_code", None)


class TableClient:
    def __init__(self, settings: ServiceNowSettings, *, sleep=None):
        self._settings = settings
        url = urlparse(settings.instance_url)
        self._host = url.netloc
        self._use_ssl = url.scheme == "https"
        self._base_path = (url.path.rstrip("/") + API_BASE) if url.path.strip("/") else API_BASE
        self._batch_url = f"{url.scheme}://{url.netloc}{self._base_path}/v1/batch"
        self._ire_url = f"{url.scheme}://{url.netloc}{self._base_path}/identifyreconcile"
        self._verify: bool | str = str(settings.ca_bundle) if (settings.verify_tls and settings.ca_bundle) else settings.verify_tls
        # One auth for every session: basic credentials, or one shared OAuth token.
        self._auth = make_auth(settings, self._verify)
        self._sleep = sleep
        self._sessions: list[ServiceNowSession] = []
        self._idle: list[pysnow.Client] = []
        self._lock = threading.Lock()
        # servicenow.workers is the most requests in flight at once, over every
        # table and page: an instance has only so many API semaphores.
        self._in_flight = FairSlots(settings.workers)

    # -- sessions ---------------------------------------------------------
    def _new_session(self) -> ServiceNowSession:
        s = self._settings
        kwargs: dict[str, Any] = dict(
            timeout=s.timeout_seconds, max_attempts=s.max_attempts,
            max_retry_seconds=s.max_retry_seconds, verify=self._verify,
        )
        if self._sleep is not None:
            kwargs["sleep"] = self._sleep
        session = ServiceNowSession(**kwargs)
        session.auth = self._auth
        # Proxies from the environment, read once here rather than on every
        # request (requests scans the whole environment each time).
        session.proxies.update(requests.utils.get_environ_proxies(s.instance_url))
        session.trust_env = False
        return session

    @contextmanager
    def _client(self) -> Iterator[pysnow.Client]:
        """An idle pysnow client (and session) for one request, returned afterwards.

        Waits while ``workers`` requests are already in flight; waiters go first come, first served.
        """
        with self._in_flight:
            with self._lock:
                client = self._idle.pop() if self._idle else None
            if client is None:
                session = self._new_session()
                client = pysnow.Client(host=self._host, use_ssl=self._use_ssl, session=session)
                # pysnow overwrites the headers of the session it is given.
                session.headers["User-Agent"] = "cmdb-connector"
                with self._lock:
                    self._sessions.append(session)
            try:
                yield client
            finally:
                with self._lock:
                    self._idle.append(client)  # last in, first out: the warmest connection next

    def _resource(self, client: pysnow.Client, table: str):
        resource = client.resource(
            api_path=f"/table/{table}", base_path=self._base_path, timeout=self._settings.timeout_seconds
        )
        # Raw values for comparisons, and references as plain sys_ids, spelled
        # as ServiceNow documents them (pysnow would send Python's "True").
        resource.parameters.add_custom(
            {"sysparm_display_value": "false", "sysparm_exclude_reference_link": "true"}
        )
        return resource

    @property
    def retries(self) -> int:
        return sum(s.retries for s in self._sessions)

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    # -- reads --------------------------------------------------------------
    def _page(self, table: str, ordered: str, fields: list[str], limit: int, offset: int,
              convert: Callable[[list[dict]], list] | None = None, overlap: bool = False,
              after: str | None = None) -> _Page:
        """One page; with ``overlap``, it begins one row early, on the row the page before should have
        ended on: that row is left out of ``rows`` and kept, unconverted, in ``head_row``. With ``after``
        (a read by sys_id: ``keyset_pages``), its rows must come in ``sys_id`` order, each after ``after``."""
        with self._client() as client:
            response = self._resource(client, table).get(query=ordered, limit=limit, offset=offset, fields=list(fields))
            raw, total = response.all(), response.headers.get("X-Total-Count")
        if "sys_id" in fields and None in map(dict.get, raw, repeat("sys_id")):  # no row of ours is keyless
            raise ServiceNowBadResponse(f"ServiceNow answered rows of {table} without the sys_id asked for",
                                        status=200, method="GET", url=f"{API_BASE}/table/{table}")
        if after is not None:
            keys = [after, *map(itemgetter("sys_id"), raw)]
            if any(a >= b for a, b in pairwise(keys)):  # the condition dropped, or another order: not to be trusted
                asked = f"rows after {after}" if after else "its first rows"
                raise ServiceNowBadResponse(
                    f"ServiceNow answered a read of {table} by sys_id ({asked}, in sys_id order) with rows out of "
                    "that order", status=200, method="GET", url=f"{API_BASE}/table/{table}")
        head_row = raw[0] if overlap and raw else None
        last = raw[-1].get("sys_id") if raw else None
        rows = raw[1:] if head_row is not None else raw
        return _Page(rows if convert is None else convert(rows), total, len(raw) == limit, head_row, last)

    def query(self, table: str, query: str, fields: list[str], page_size: int | None = None,
              workers: int = 1) -> Iterator[dict[str, Any]]:
        """Every matching row (``read``), row by row."""
        return iter(self.read(table, query, fields, page_size, workers))

    def read(self, table: str, query: str, fields: list[str], page_size: int | None = None,
             workers: int = 1, convert: Callable[[list[dict]], list] | None = None) -> list:
        """Every matching row, as ``convert`` makes each page (``pages``), complete: when rows were added or
        removed while the pages were read (someone else's writes: another shard's creates, Discovery's, a
        CMDB Data Manager policy deleting retired CIs), the read is made again by sys_id (``keyset_pages``),
        which such writes cannot shift. An offset read of a table that changed meanwhile skips rows, or
        repeats them: one of our CIs skipped would be created again, a duplicate. The pages by offset come
        first, as many at once as ``workers``: a read by sys_id is one page after another. A read without
        sys_id among its fields is made again by offset, the last time one page after another; if the table
        changed every time, ``ServiceNowShiftedRead``."""
        def read(at_once: int) -> list:
            return list(chain.from_iterable(self.pages(table, query, fields, page_size, at_once, convert)))

        for attempt in range(1, READ_ATTEMPTS):
            try:
                return read(workers)
            except ServiceNowShiftedRead as exc:
                if _keyed(query, fields):
                    log.warning("%s; reading it again by sys_id, each page from the last row of the page before "
                                "(rows added or removed meanwhile cannot shift that read)", exc, extra={"table": table})
                    return list(chain.from_iterable(self.keyset_pages(table, query, fields, page_size, convert)))
                log.warning("%s; reading it again (%d of %d)", exc, attempt + 1, READ_ATTEMPTS, extra={"table": table})
        return read(1)

    def keyset_pages(self, table: str, query: str, fields: list[str], page_size: int | None = None,
                     convert: Callable[[list[dict]], list] | None = None) -> Iterator[list]:
        """Every matching row, a page at a time, each page the rows after the last row of the page before
        (``sys_id>LAST^ORDERBYsys_id``), one page after another; ``fields`` must hold ``sys_id``.

        Rows added or removed meanwhile cannot shift such a read, as they shift
        pages by offset: every row there throughout the read comes once, and a
        row added or removed during it comes or not, as it would had it been
        made after the read or removed before it. Each page's rows are checked
        to come in that order, after that row (an instance that dropped the
        condition would answer the first rows again). The count in
        ``X-Total-Count`` (of the rows after that row) says where the read
        ends; without it, an empty page does. ``sysparm_limit`` applies before
        ACLs: a page whose rows they hid in part is short, and the next page
        begins after its last row; one whose rows they hid all, where the count
        says more rows follow, gives no row to go on from, and fails the read
        (``ServiceNowShiftedRead``): only an offset would go past it, and
        offsets are what the changes shift.
        """
        if not _keyed(query, fields):
            raise ValueError(f"a read of {table} by sys_id needs sys_id among its fields and a query without ^NQ")
        limit = page_size or self._settings.page_size
        cursor = ""
        while True:
            ordered = _in_sys_id_order(query, f"sys_id>{cursor}" if cursor else "")
            page = self._page(table, ordered, fields, limit, 0, convert, after=cursor)
            yield page.rows
            total = int(page.total) if page.total is not None and page.total.isdigit() else None
            if total is not None and limit >= total:
                return
            if page.last is None and total is None:
                return  # no count told, and an empty page: the end
            if page.last is None:  # ACLs hid every row of the page: past them only by offset, which changes shift
                raise ServiceNowShiftedRead(
                    f"{table}: rows were added or removed while it was read, and ACLs hide every row of a page of it "
                    f"(the {limit} after {cursor or 'its start'}, in sys_id order): the rows after those cannot be "
                    "read but by an offset, which such changes shift")
            cursor = page.last

    def pages(self, table: str, query: str, fields: list[str], page_size: int | None = None,
              workers: int = 1, convert: Callable[[list[dict]], list] | None = None) -> Iterator[list]:
        """Every matching row, a page at a time, paged by offset in ``sys_id`` order.

        A short page is not the end: ``sysparm_limit`` applies before ACLs, so
        the count in ``X-Total-Count`` decides; without it, an empty page does.
        Once the first page has given the count, the other pages are fetched
        by up to ``workers`` sessions at once, and yielded in order.

        Each page tells whether the table changed since the page before it was
        read, twice over, and raises ``ServiceNowShiftedRead`` once every page
        is yielded if it did (the pages then skipped rows or repeated them):
        it carries the count again, which must be the first's; and (where
        ``sys_id`` is among ``fields``) it begins one row early, on the row
        the page before ended on, which must be that very row. Counts alone
        miss a row added and another removed between two pages; the seams miss
        nothing that shifted a page. Where ACLs hid rows of the page before
        (its rows fewer than it asked for), its last row is not known to stand
        where the next page begins, and only a seam that goes back is told.

        ``convert``, if given, makes each page into what is yielded, in the
        thread that fetched it, as soon as it is in: pages come in out of order,
        and a page's work is then done while the pages before it are still on
        their way, not all at once after the last one.
        """
        limit = page_size or self._settings.page_size
        ordered = _in_sys_id_order(query)
        overlap = "sys_id" in fields

        def page(at: int) -> _Page:
            if overlap:
                return self._page(table, ordered, fields, limit + 1, at - 1, convert, overlap=True)
            return self._page(table, ordered, fields, limit, at, convert)

        before = self._page(table, ordered, fields, limit, 0, convert)
        total = before.total
        yield before.rows
        shifts: list[str] = []

        def seam(at: int, after: _Page) -> list:
            """``after``'s rows, with its first row where it is not the one ``before`` ended on but ACLs
            leave that unknown; a seam that shows a change goes to ``shifts``."""
            nonlocal before
            previous, before = before, after
            if not overlap:
                return after.rows
            head = after.head_row.get("sys_id") if after.head_row is not None else None
            if head == previous.last:
                return after.rows
            if previous.full or (head is not None and previous.last is not None and head < previous.last):
                shifts.append(f"the page at offset {at} began on {head or 'no row'}, not on {previous.last}, "
                              "the row the page before ended on")
                return after.rows
            if after.head_row is None:
                return after.rows
            return (convert([after.head_row]) if convert is not None else [after.head_row]) + after.rows

        if total is not None and total.isdigit():
            offsets = list(range(limit, int(total), limit))
            counts = set()
            if workers > 1 and len(offsets) > 1:
                with ThreadPoolExecutor(max_workers=min(workers, len(offsets)), thread_name_prefix="read") as pool:
                    for at, after in zip(offsets, pool.map(page, offsets)):
                        counts.add(after.total)
                        yield seam(at, after)
            else:
                for at in offsets:
                    after = page(at)
                    counts.add(after.total)
                    yield seam(at, after)
            other = sorted({int(c) for c in counts if c is not None and c.isdigit()} - {int(total)})
            if other:  # (a page without the count tells nothing either way)
                told = ", then ".join(map(str, other))
                raise _shifted(table, f"{total} rows when the first page was read, then {told}")
            if shifts:
                raise _shifted(table, shifts[0] + (f"; {len(shifts) - 1} other page(s) too" if len(shifts) > 1 else ""))
            return
        offset, rows = limit, before.rows
        while rows:  # no count told: until a page comes back empty
            after = page(offset)
            rows = seam(offset, after)
            yield rows
            offset += limit
        if shifts:
            raise _shifted(table, shifts[0])

    def count(self, table: str, query: str) -> int | None:
        """How many rows match, from ``X-Total-Count`` (one row fetched), or None if not told."""
        total = self._page(table, query, ["sys_id"], 1, 0).total
        return int(total) if total is not None and total.isdigit() else None

    # -- writes -------------------------------------------------------------
    def _writer(self, client: pysnow.Client, table: str):
        resource = self._resource(client, table)
        resource.parameters.add_custom({"sysparm_fields": "sys_id"})  # only the sys_id back
        return resource

    def create(self, table: str, payload: dict[str, str]) -> dict[str, Any]:
        """The record made. An answer that names no one record with a sys_id is an ``AmbiguousWriteError``:
        the create may have been made, so the caller looks for it before sending it again."""
        with self._client() as client:
            response = self._writer(client, table).create(payload=payload)
            record = _one_record(response, "POST", table)
        if not isinstance(record.get("sys_id"), str) or not record["sys_id"]:
            raise AmbiguousWriteError(f"ServiceNow answered a create in {table} with a record without its sys_id",
                                      status=_status(response), method="POST", url=f"{API_BASE}/table/{table}")
        return record

    def update(self, table: str, sys_id: str, payload: dict[str, str]) -> dict[str, Any]:
        """PATCH with only the given (changed) fields."""
        with self._client() as client:
            response = self._writer(client, table).request("PATCH", path_append=f"/{sys_id}", data=json.dumps(payload))
            return _one_record(response, "PATCH", table)

    def delete(self, table: str, sys_id: str) -> None:
        with self._client() as client:
            self._resource(client, table).request("DELETE", path_append=f"/{sys_id}").all()

    def batch(self, rest_requests: list[dict[str, Any]]) -> dict[str, Any]:
        """One Batch API request (pysnow has no Batch API; our session sends it)."""
        body = {"batch_request_id": uuid.uuid4().hex, "rest_requests": rest_requests}
        with self._client() as client:
            return client.session.post(self._batch_url, json=body).json()

    def identify_reconcile(self, payload: dict[str, Any], data_source: str, query: bool = False) -> dict[str, Any]:
        """One Identification and Reconciliation API request: its ``result`` (items, relations). With
        ``query``, ``/identifyreconcile/query``: what IRE would do, committing nothing."""
        url = f"{self._ire_url}/query" if query else self._ire_url
        with self._client() as client:
            answer = client.session.post(url, params={"sysparm_data_source": data_source}, json=payload).json()
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise ServiceNowBadResponse("the Identification and Reconciliation API answered without a result",
                                        method="POST", url=urlparse(url).path)
        return result
