"""A local ServiceNow stand-in: the Table API, Batch API and OAuth on 127.0.0.1.

It behaves the way SERVICENOW.md describes a real instance: every value is a
string, reference fields come as link objects, unknown fields are ignored on
write and their query conditions dropped, paging carries ``Link`` and
``X-Total-Count``, errors have ServiceNow's shape, and the requests of one
``JSESSIONID`` are served one at a time (a deep queue gets an empty 202).
Faults are set at start or at run time through ``POST /sandbox/faults``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import secrets
import ssl
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlencode, urlparse

import orjson

from . import encoded_query
from .ire import IdentifyReconcile
from .schema import SCHEMA_TABLES, TABLES, fields_of, references_of
from .store import Store

DEFAULT_USERS = {"admin": "admin"}
JSON_TYPE = "application/json;charset=UTF-8"
HTML_OUTAGE = (
    b"<html><head><title>Instance Hibernating</title></head><body>"
    b"<h1>Your instance is hibernating</h1><p>Log in to wake it up.</p></body></html>"
)
NOT_FOUND_DETAIL = "Record doesn't exist or ACL restricts the record retrieval"
# A request line and headers longer than this are refused, as Tomcat's default maxHttpHeaderSize does
MAX_HEAD_BYTES = 8192
HEAD_TOO_LARGE = (b"<!doctype html><html lang=\"en\"><head><title>HTTP Status 400 - Bad Request</title></head>"
                  b"<body><h1>HTTP Status 400 - Bad Request</h1><p>Request header is too large</p></body></html>")
STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
               403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = JSON_TYPE

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else orjson.dumps(self.body)


def error(status: int, message: str, detail: str = "", headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "detail": detail}, "status": "failure"}, dict(headers or {}))


class Faults:
    """What the stand-in does wrong, on purpose."""

    def __init__(self, **settings: Any):
        # Seconds of network latency per API request. An answer leaves no sooner than
        # that, plus the CPU the stand-in itself spent on the request, after the
        # request came in: the model is a server that serves its requests in
        # parallel, as an instance's nodes and API semaphore threads do. Sleeping
        # the latency first, then serving, would make the requests in flight queue
        # for this one Python process's GIL after their common wait, and add the
        # stand-in's own CPU to every round of them.
        self.latency = 0.0
        self.rate_429 = 0.0              # share of API requests answered 429
        self.retry_after = 1.0           # the Retry-After of those 429s
        self.rate_5xx = 0.0              # share answered 503
        self.rate_cancelled = 0.0        # share cancelled at the transaction time limit (500), after running
        self.html_outage = False         # every API request gets an HTML page with status 200
        self.outage_after = -1           # from this API request number on ...
        self.outage_requests = 0         # ... this many get the HTML page
        self.expire_tokens_at = -1       # at this API request number every access token expires
        self.batch_serviced_limit = 0    # at most this many items of a batch are run (0 = all)
        self.session_queue_limit = 0     # more waiting on one JSESSIONID than this: empty 202 (0 = off)
        self.acl_denied_tables: list = []  # writes to these tables: 403 from an ACL
        self.missing_tables: list = []   # tables the instance lacks (a class whose plugin is not installed): 400
        self.acl_read_denied_tables: list = []  # reads of these tables: 403 from a table-level read ACL
        self.acl_hidden_prefix = ""      # rows whose name starts with this are hidden by ACL, after paging
        # table -> n: right after the first page of a read by pages of it is served, the first n rows of
        # that page are deleted (by someone else: a CMDB Data Manager policy, say), so the later pages of
        # the read, by offset, begin n rows further on. For the next _times reads of the table (0: all; each
        # page of a read by sys_id, at offset 0, is a first page)
        self.delete_after_first_page: dict = {}
        self.delete_after_first_page_times = 1
        # table -> n: at the same moment, n rows are added to it that sort after every other (another shard's
        # creates, say: copies of the page's first rows, in account 999999999999), so that with as many
        # deleted the count stays the same; for the same reads as delete_after_first_page
        self.add_after_first_page: dict = {}
        # IRE reconciliation rules: "class.field" -> the one data source that may update it (IRE leaves the
        # field as it is on an update from any other source, and says nothing)
        self.ire_authoritative: dict = {}
        self.update(settings)

    def update(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            if key.startswith("_") or not hasattr(self, key):
                raise ValueError(f"unknown fault {key!r}")
            setattr(self, key, type(getattr(self, key))(value))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class TableApi:
    """The Table API as a function: request parts in, a ``Reply`` out."""

    def __init__(self, store: Store, base_url: str, faults: Faults):
        self.store = store
        self.base_url = base_url
        self.faults = faults
        # (table, query) -> (store version, matching rows in order): the pages of
        # one paged read cost one scan, as an index would make them on a real instance
        self._results: dict[tuple[str, str], tuple[int, list[dict[str, str]]]] = {}
        self._results_lock = threading.Lock()
        self._fault_lock = threading.Lock()
        self._copies = 0  # rows add_after_first_page has added: each new, with a sys_id after every other
        # (sysparm_fields, links) -> sys_id -> (the record, its sys_mod_count, how it was rendered): a
        # record is rendered again for a list only once it has changed (every change counts up sys_mod_count)
        self._rendered: dict[tuple[str, bool], dict[str, tuple[dict[str, str], str, dict[str, Any]]]] = {}

    def _matching(self, table: str, text: str, query, known) -> list[dict[str, str]]:
        version = self.store.version
        with self._results_lock:
            cached = self._results.get((table, text))
        if cached is not None and cached[0] == version:
            return cached[1]
        rows = list(filter(encoded_query.compile_query(query, known, self.store.walker), self.store.rows(table)))
        for name, descending in reversed(query.order):
            if name in known:
                rows.sort(key=lambda r: r.get(name, ""), reverse=descending)
        with self._results_lock:
            if len(self._results) > 64:
                self._results.clear()
            self._results[(table, text)] = (version, rows)
        return rows

    def handle(self, method: str, table: str, sys_id: str | None, version: str,
               params: dict[str, list[str]], body: bytes, user: str) -> Reply:
        if table not in TABLES or table in self.faults.missing_tables:
            return error(400, f"Invalid table {table}")
        if method == "GET" and table in self.faults.acl_read_denied_tables:
            return error(403, "User Not Authorized", "Read ACL restricts this table to other roles")
        one = lambda key: (params.get(key) or [""])[0]  # noqa: E731
        fields, links = one("sysparm_fields"), one("sysparm_exclude_reference_link").lower() != "true"
        if method == "GET" and sys_id is None:
            return self._list(table, version, params)
        if method == "GET":
            record = self.store.get(table, sys_id)
            if record is None:
                return error(404, "No Record found", NOT_FOUND_DETAIL)
            return Reply(200, {"result": self.render(record, fields, links)})
        if table in self.faults.acl_denied_tables or table in SCHEMA_TABLES:
            return error(403, "Operation Failed", "ACL Exception Insert Failed due to security constraints")
        values: dict[str, Any] = {}
        if method in ("POST", "PUT", "PATCH"):
            try:
                values = json.loads(body or b"{}")
                if not isinstance(values, dict):
                    raise ValueError("not an object")
            except ValueError:
                return error(400, "Exception while reading request", "The payload is not valid JSON.")
        if method == "POST":
            if sys_id is not None:
                return error(405, "Method not Supported", "POST takes no sys_id")
            record = self.store.insert(table, values, user)
            location = f"{self.base_url}/api/now/table/{table}/{record['sys_id']}"
            return Reply(201, {"result": self.render(record, fields, links)}, {"Location": location})
        if sys_id is None:
            return error(405, "Method not Supported", f"{method} needs a sys_id")
        if method in ("PUT", "PATCH"):
            record = self.store.update(table, sys_id, values, user)
            if record is None:
                return error(404, "No Record found", NOT_FOUND_DETAIL)
            return Reply(200, {"result": self.render(record, fields, links)})
        if method == "DELETE":
            if not self.store.delete(table, sys_id):
                return error(404, "No Record found", NOT_FOUND_DETAIL)
            return Reply(204)
        return error(405, "Method not Supported", method)

    def render(self, record: dict[str, str], fields: str, links: bool) -> dict[str, Any]:
        return self.renderer(fields, links)(record)

    def renderer(self, fields: str, links: bool) -> Callable[[dict[str, str]], dict[str, Any]]:
        """How records look in a response: the asked-for fields, references as links or not.

        Unknown names in ``sysparm_fields`` are ignored, as on a real instance.
        """
        wanted = [f for f in fields.split(",") if f] if fields else None

        def render(record: dict[str, str]) -> dict[str, Any]:
            names = wanted if wanted is not None else sorted(record)
            out = {name: record[name] for name in names if name in record}
            if links:
                refs = references_of(record["sys_class_name"])
                for name in refs.keys() & out.keys():
                    if out[name]:
                        out[name] = {"link": f"{self.base_url}/api/now/table/{refs[name]}/{out[name]}", "value": out[name]}
            return out

        return render

    def _list(self, table: str, version: str, params: dict[str, list[str]]) -> Reply:
        one = lambda key, default="": (params.get(key) or [default])[0]  # noqa: E731
        try:
            query = encoded_query.parse(one("sysparm_query"))
            limit = int(one("sysparm_limit", "10000") or 10000)
            offset = int(one("sysparm_offset", "0") or 0)
        except ValueError as exc:
            return error(400, "Invalid query parameter", str(exc))
        known = fields_of(table)

        rows = self._matching(table, one("sysparm_query"), query, known)
        total = len(rows)
        page = rows[offset : offset + limit] if limit > 0 else []
        hidden = self.faults.acl_hidden_prefix
        if hidden:
            # sysparm_limit is applied before ACLs: a page comes back short, even empty.
            page = [r for r in page if not r.get("name", "").startswith(hidden)]
        if version == "v1" and not page and one("sysparm_query"):
            return error(404, "No Record found", "Records matching query not found. Check query parameter or offset parameter")
        headers: dict[str, str] = {}
        if one("sysparm_no_count").lower() != "true":
            headers["X-Total-Count"] = str(total)
        if one("sysparm_suppress_pagination_header").lower() != "true" and limit > 0:
            headers["Link"] = self._links(table, params, offset, limit, total)
        links = one("sysparm_exclude_reference_link").lower() != "true"
        reply = Reply(200, {"result": self._rendered_rows(table, page, one("sysparm_fields"), links)}, headers)
        if offset == 0 and 0 < limit < total and (table in self.faults.delete_after_first_page
                                                  or table in self.faults.add_after_first_page):
            self._change_under_the_read(table, page)
        return reply

    def _change_under_the_read(self, table: str, page: list[dict[str, str]]) -> None:
        """The faults ``delete_after_first_page`` and ``add_after_first_page``: rows of the page just served
        deleted, and rows added after every other, before its next pages are read."""
        faults = self.faults
        with self._fault_lock:
            deleted = int(faults.delete_after_first_page.get(table, 0))
            added = int(faults.add_after_first_page.get(table, 0))
            if not deleted and not added:
                return
            if faults.delete_after_first_page_times == 1:  # the last one: the fault is over
                faults.delete_after_first_page, faults.add_after_first_page = {}, {}
            elif faults.delete_after_first_page_times > 1:
                faults.delete_after_first_page_times -= 1
            first, self._copies = self._copies, self._copies + len(page[:added])
        for n, record in enumerate(page[:added], start=first):
            copy = {k: v for k, v in record.items() if not k.startswith("sys_")}
            copy["object_id"] = f"{copy.get('object_id', '')}-copy{n}"
            arn = re.sub(r":\d{12}:", ":999999999999:", copy.get("correlation_id", ""), count=1)
            copy["correlation_id"] = f"{arn}-copy{n}"
            self.store.insert(record["sys_class_name"], copy, "another.shard", sys_id=f"{'f' * 24}{n:08d}")
        for record in page[:deleted]:
            self.store.delete(record["sys_class_name"], record["sys_id"])

    def _rendered_rows(self, table: str, page: list[dict[str, str]], fields: str, links: bool) -> list[dict[str, Any]]:
        """The page's records as ``renderer`` renders them, each rendered once per change of it."""
        render = self.renderer(fields, links)
        if table in SCHEMA_TABLES:
            return list(map(render, page))  # made anew on every read: nothing to keep
        with self._results_lock:
            # Bounded: about four renderings a record (a run asks for a field list per table, each
            # of a table's records), however many field lists are asked for and records deleted.
            if sum(map(len, self._rendered.values())) > 4 * len(self.store.class_of) + 10_000:
                self._rendered.clear()
            cache = self._rendered.setdefault((fields, links), {})
        out = []
        for record in page:
            revision = record.get("sys_mod_count")  # read before the values: a change meanwhile renders it again next time
            kept = cache.get(record["sys_id"])
            if kept is None or kept[0] is not record or kept[1] != revision:
                kept = cache[record["sys_id"]] = (record, revision, render(record))
            out.append(kept[2])
        return out

    def _links(self, table: str, params: dict[str, list[str]], offset: int, limit: int, total: int) -> str:
        def link(rel: str, at: int) -> str:
            query = {k: v[0] for k, v in params.items()}
            query.update(sysparm_offset=str(at), sysparm_limit=str(limit))
            return f'<{self.base_url}/api/now/table/{table}?{urlencode(query, quote_via=quote)}>;rel="{rel}"'

        last = ((total - 1) // limit) * limit if total else 0
        links = [link("first", 0)]
        if offset > 0:
            links.append(link("prev", max(0, offset - limit)))
        if offset + limit < total:
            links.append(link("next", offset + limit))
        links.append(link("last", last))
        return ",".join(links)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a client that opens a dozen
    # connections at once has the rest of its SYNs dropped, and waits a second
    # for the retransmission. A real instance sits behind a far deeper queue.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (killed, timed out): nothing to report
        super().handle_error(request, client_address)


def table_route(path: str) -> tuple[str, str, str | None] | None:
    """``/api/now[/v1|/v2]/table/<table>[/<sys_id>]`` -> (version, table, sys_id)."""
    parts = path.strip("/").split("/")
    version = ""
    if parts[:2] == ["api", "now"] and len(parts) > 2 and parts[2] in ("v1", "v2"):
        version = parts.pop(2)
    if parts[:3] != ["api", "now", "table"] or len(parts) not in (4, 5):
        return None
    return version, parts[3], (parts[4] if len(parts) == 5 else None)


IRE_ROUTES = ("identifyreconcile", "identifyreconcile/query")


def ire_route(path: str) -> tuple[str, str, None] | None:
    """``/api/now[/v1|/v2]/identifyreconcile[/query]`` -> (version, "identifyreconcile[/query]", None)."""
    parts = path.strip("/").split("/")
    version = parts.pop(2) if parts[:2] == ["api", "now"] and len(parts) > 2 and parts[2] in ("v1", "v2") else ""
    name = "/".join(parts[2:])
    return (version, name, None) if parts[:2] == ["api", "now"] and name in IRE_ROUTES else None


class ServiceNowStandIn:
    """Start with ``start()``; the base URL is ``url``. Bound to 127.0.0.1 only."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        oauth_clients: dict[str, str] | None = None,
        token_lifetime: float = 1800,
        db_path: str | Path | None = None,
        tls: tuple[Path, Path] | None = None,
        port: int = 0,
        **faults: Any,
    ):
        self.users = dict(users or DEFAULT_USERS)
        self.oauth_clients = dict(oauth_clients or {})
        self.token_lifetime = token_lifetime
        self.store = Store(db_path)
        self.faults = Faults(**faults)
        self.stats: Counter[str] = Counter()
        # the path and query of the latest Table API reads (GET), and how many there have been
        self.reads: deque[str] = deque(maxlen=10_000)
        self.reads_total = 0
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}      # access token -> (user, expires at)
        self._refresh: dict[str, tuple[str, str]] = {}       # refresh token -> (user, client id)
        self._sessions: dict[str, list] = {}                 # JSESSIONID -> [lock, waiting]
        self._api_requests = 0
        self._active = 0
        self.max_active = 0                 # most API requests served at once, over all sessions
        self.connections = 0                # TCP connections accepted
        self._port = port
        self._tls = tls  # (certificate, key) PEM files: serve HTTPS
        self._server: ThreadingHTTPServer | None = None
        self.table_api: TableApi | None = None
        self.ire: IdentifyReconcile | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "ServiceNowStandIn":
        handler = type("Handler", (_Handler,), {"app": self})
        self._server = _Server(("127.0.0.1", self._port), handler)
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.table_api = TableApi(self.store, self.url, self.faults)
        self.ire = IdentifyReconcile(self.store, self.faults)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="servicenow-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.store.close()

    def __enter__(self) -> "ServiceNowStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    # -- bookkeeping -------------------------------------------------------------
    def count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def log_read(self, target: str) -> None:
        with self._lock:
            self.reads.append(target)
            self.reads_total += 1

    def writes(self) -> int:
        # IRE's /query commits nothing: not a write
        return sum(v for k, v in self.stats.items()
                   if k.split(" ")[0] in ("POST", "PUT", "PATCH", "DELETE") and not k.endswith("/query"))

    def api_requests(self) -> int:
        """How many API requests came in so far: the numbers ``outage_after`` and ``expire_tokens_at`` name."""
        with self._lock:
            return self._api_requests

    def next_api_request(self) -> int:
        with self._lock:
            self._api_requests += 1
            return self._api_requests

    # -- sessions: one at a time per JSESSIONID ---------------------------------------
    def enter_session(self, session_id: str) -> threading.Lock | None:
        """The session's lock, held; ``None`` when its queue is too deep (the request is dropped)."""
        with self._lock:
            state = self._sessions.setdefault(session_id, [threading.Lock(), 0])
            limit = self.faults.session_queue_limit
            if limit and state[1] > limit:
                return None
            state[1] += 1
        state[0].acquire()
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        return state[0]

    def leave_session(self, session_id: str) -> None:
        with self._lock:
            state = self._sessions[session_id]
            state[1] -= 1
            self._active -= 1
        state[0].release()

    # -- auth ------------------------------------------------------------------------
    def issue_token(self, user: str, client_id: str) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[access] = (user, time.time() + self.token_lifetime)
            self._refresh[refresh] = (user, client_id)
        return {"access_token": access, "refresh_token": refresh, "scope": "useraccount",
                "token_type": "Bearer", "expires_in": int(self.token_lifetime)}

    def token_user(self, token: str) -> str | None:
        with self._lock:
            found = self._tokens.get(token)
        if found is None or found[1] < time.time():
            return None
        return found[0]

    def refresh_user(self, refresh_token: str, client_id: str) -> str | None:
        with self._lock:
            found = self._refresh.get(refresh_token)
        return found[0] if found and found[1] == client_id else None

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens = {t: (u, 0.0) for t, (u, _) in self._tokens.items()}


class _Handler(BaseHTTPRequestHandler):
    app: ServiceNowStandIn
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the
    # body waits for the client's delayed ACK, some 40 ms per request.
    disable_nagle_algorithm = True
    server_version = "ServiceNow"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def setup(self) -> None:
        super().setup()
        with self.app._lock:
            self.app.connections += 1  # one handler per TCP connection

    def _body(self) -> bytes | None:
        """The request's body; None when the client went away before sending all of it."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _write(self, reply: Reply) -> None:
        payload = reply.payload()
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if payload:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if user and self.app.users.get(user) == password else None
        if auth.startswith("Bearer "):
            return self.app.token_user(auth[7:].strip())
        return None

    def _session_id(self) -> tuple[str, dict[str, str]]:
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "JSESSIONID" and value:
                return value, {}
        session_id = uuid.uuid4().hex.upper()
        return session_id, {"Set-Cookie": f"JSESSIONID={session_id}; Path=/; HttpOnly"}

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        if len(self.requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items()) > MAX_HEAD_BYTES:
            # Tomcat, in front of a real instance, refuses the request before it reaches the API.
            self.close_connection = True
            return self._write(Reply(400, raw=HEAD_TOO_LARGE, content_type="text/html;charset=utf-8"))
        url = urlparse(self.path)
        body = self._body()
        if body is None:
            # A body cut short (the client was killed mid-send) is never run as an
            # empty one, which would create a blank record: the server drops it.
            self.close_connection = True
            return
        if url.path.startswith("/sandbox/"):
            return self._write(self._admin(method, url.path, body))
        if url.path == "/oauth_token.do" and method == "POST":
            return self._write(self._oauth(body))
        route = table_route(url.path) or ire_route(url.path)
        is_batch = url.path.rstrip("/") in ("/api/now/v1/batch", "/api/now/batch")
        if route is None and not is_batch:
            return self._write(error(400, "Requested URI does not represent any resource", url.path))
        self.app.count(f"{method} {'batch' if is_batch else route[1]}")
        if method == "GET" and not is_batch:
            self.app.log_read(self.path)
        session_id, cookie = self._session_id()
        held = self.app.enter_session(session_id)
        if held is None:
            self.app.count("fault 202")
            return self._write(Reply(202, headers=cookie))
        try:
            reply = self._api(method, url, body, route, is_batch)
        finally:
            self.app.leave_session(session_id)
        reply.headers.update(cookie)
        self._write(reply)

    def _fault(self) -> Reply | None:
        faults, number = self.app.faults, self.app.next_api_request()
        if number == faults.expire_tokens_at:
            self.app.expire_tokens()
        in_window = faults.outage_after >= 0 and faults.outage_after <= number < faults.outage_after + faults.outage_requests
        if faults.html_outage or in_window:
            self.app.count("fault html")
            return Reply(200, raw=HTML_OUTAGE, content_type="text/html")
        if faults.rate_429 and random.random() < faults.rate_429:
            self.app.count("fault 429")
            return error(429, "Too Many Requests", "Rate limit exceeded", {
                "Retry-After": f"{faults.retry_after:g}", "X-RateLimit-Limit": "100",
                "X-RateLimit-Rule": "sandbox", "X-RateLimit-Reset": str(int(time.time() + faults.retry_after)),
            })
        if faults.rate_5xx and random.random() < faults.rate_5xx:
            self.app.count("fault 503")
            return error(503, "Service Unavailable", "sandbox fault")
        return None

    def _api(self, method: str, url, body: bytes, route, is_batch: bool) -> Reply:
        user = self._user()
        if user is None:
            return error(401, "User Not Authenticated", "Required to provide Auth information",
                         {"WWW-Authenticate": 'Basic realm="Service-now"'})
        latency = self.app.faults.latency
        if not latency:
            return self._served(method, url, body, route, is_batch, user)
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._served(method, url, body, route, is_batch, user)
        finally:  # see Faults.latency; the session, if shared, stays held meanwhile
            time.sleep(max(0.0, started + latency + (time.thread_time() - cpu) - time.perf_counter()))

    def _served(self, method: str, url, body: bytes, route, is_batch: bool, user: str) -> Reply:
        fault = self._fault()
        if fault is not None:
            return fault
        if is_batch:
            reply = self._batch(method, body, user) if method == "POST" else error(405, "Method not Supported", method)
        elif route[1] in IRE_ROUTES:
            reply = self._identify_reconcile(method, url, body, user, commit=route[1] == IRE_ROUTES[0])
        else:
            version, table, sys_id = route
            reply = self.app.table_api.handle(method, table, sys_id, version, parse_qs(url.query), body, user)
        faults = self.app.faults
        if faults.rate_cancelled and random.random() < faults.rate_cancelled:
            # The work was done; the answer is lost, as when a transaction hits its time limit.
            self.app.count("fault cancelled")
            return error(500, "Transaction cancelled: maximum execution time exceeded",
                         "Check the logs for details")
        return reply

    def _identify_reconcile(self, method: str, url, body: bytes, user: str, commit: bool) -> Reply:
        if method != "POST":
            return error(405, "Method not Supported", method)
        if IRE_ROUTES[0] in self.app.faults.acl_denied_tables:  # a user without the itil or asset role
            return error(403, "User Not Authorized", "The Identification and Reconciliation API needs the itil or "
                                                     "asset role")
        source = (parse_qs(url.query).get("sysparm_data_source") or [""])[0]
        status, answer = self.app.ire.handle(body, source, user, commit)
        return Reply(status, answer)

    def _batch(self, method: str, body: bytes, user: str) -> Reply:
        try:
            request = json.loads(body or b"{}")
            items = request["rest_requests"]
        except (ValueError, KeyError, TypeError):
            return error(400, "Exception while reading request", "A batch needs batch_request_id and rest_requests.")
        limit = self.app.faults.batch_serviced_limit or len(items)
        serviced, unserviced = [], []
        for index, item in enumerate(items):
            if index >= limit:
                unserviced.append(str(item.get("id")))
                continue
            started = time.monotonic()
            target = urlparse(item.get("url", ""))
            route = table_route(target.path)
            if route is None:
                reply = error(400, "Requested URI does not represent any resource", target.path)
            else:
                version, table, sys_id = route
                item_body = base64.b64decode(item.get("body") or b"")
                self.app.count(f"batch {item.get('method', 'GET').upper()} {table}")
                reply = self.app.table_api.handle(item.get("method", "GET").upper(), table, sys_id, version,
                                                  parse_qs(target.query), item_body, user)
            headers = [{"name": k, "value": v} for k, v in reply.headers.items()]
            serviced.append({
                "id": str(item.get("id")), "status_code": reply.status, "status_text": STATUS_TEXT.get(reply.status, ""),
                "headers": [] if item.get("exclude_response_headers") else headers,
                "body": base64.b64encode(reply.payload()).decode(),
                "execution_time": int((time.monotonic() - started) * 1000),
            })
        return Reply(200, {"batch_request_id": str(request.get("batch_request_id", "")), "serviced_requests": serviced,
                           "unserviced_requests": unserviced})

    def _oauth(self, body: bytes) -> Reply:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        auth = self.headers.get("Authorization", "")
        if "client_secret" not in form and auth.startswith("Basic "):
            # RFC 6749 client authentication: the client's id and secret in a Basic header.
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
                form.update(client_id=client_id, client_secret=client_secret)
            except (ValueError, UnicodeDecodeError):
                pass
        denied = Reply(401, {"error_description": "access_denied", "error": "server_error"})
        client_id = form.get("client_id", "")
        if client_id not in self.app.oauth_clients or self.app.oauth_clients[client_id] != form.get("client_secret"):
            return denied
        grant = form.get("grant_type")
        if grant == "password":
            user = form.get("username", "")
            if not user or self.app.users.get(user) != form.get("password"):
                return denied
        elif grant == "client_credentials":
            user = client_id
        elif grant == "refresh_token":
            user = self.app.refresh_user(form.get("refresh_token", ""), client_id)
            if user is None:
                return denied
        else:
            return Reply(400, {"error_description": f"unsupported grant_type {grant!r}", "error": "invalid_request"})
        self.app.count(f"oauth {grant}")
        return Reply(200, self.app.issue_token(user, client_id))

    # -- test and operator hooks, outside /api --------------------------------------------
    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/sandbox/stats" and method == "GET":
            return Reply(200, {"stats": dict(self.app.stats), "writes": self.app.writes()})
        if path == "/sandbox/reads" and method == "GET":
            with self.app._lock:
                return Reply(200, {"total": self.app.reads_total, "reads": list(self.app.reads)})
        if path == "/sandbox/faults":
            if method == "POST":
                try:
                    self.app.faults.update(json.loads(body or b"{}"))
                except (ValueError, TypeError) as exc:
                    return error(400, "bad fault settings", str(exc))
            return Reply(200, self.app.faults.as_dict())
        if path == "/sandbox/expire-tokens" and method == "POST":
            self.app.expire_tokens()
            return Reply(200, {"expired": True})
        if path == "/sandbox/dump" and method == "GET":
            return Reply(200, self.app.store.dump())
        return error(404, "No such sandbox endpoint", path)


def main(argv: list[str] | None = None) -> None:
    """``python -m connector.sandbox.servicenow --port N --user NAME:PASSWORD``: serve until killed."""
    import argparse

    parser = argparse.ArgumentParser(description="the ServiceNow stand-in, on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--db", help="persist the CMDB in this SQLite file")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) or None
    server = ServiceNowStandIn(users, port=args.port, db_path=args.db, latency=args.latency).start()
    try:
        threading.Event().wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
