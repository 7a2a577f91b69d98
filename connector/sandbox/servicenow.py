"""A local ServiceNow stand-in: the Table API over HTTP on 127.0.0.1.

It behaves the way SERVICENOW.md describes a real instance: every value is a
string, reference fields come as link objects, unknown fields are ignored on
write and their query conditions dropped, paging carries ``Link`` and
``X-Total-Count``, errors have ServiceNow's shape, and the requests of one
``JSESSIONID`` are served one at a time. Faults (latency, 429 with
``Retry-After``, HTML outage pages, 5xx) can be set at start or at run time
through ``/sandbox/faults``.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlparse

from . import encoded_query
from .schema import REL_TYPES, TABLES, descendants, fields_of, references_of

DEFAULT_USERS = {"admin": "admin"}
HTML_OUTAGE = (
    b"<html><head><title>Instance Hibernating</title></head><body>"
    b"<h1>Your instance is hibernating</h1><p>Log in to wake it up.</p></body></html>"
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and "value" in value:
        return str(value["value"])
    return str(value)


class Faults:
    """What the stand-in does wrong, on purpose. Changed at run time too."""

    def __init__(self, **settings: Any):
        self.latency = 0.0          # seconds added to every API request
        self.rate_429 = 0.0         # share of API requests answered 429
        self.retry_after = 1.0      # the Retry-After those 429s carry
        self.rate_5xx = 0.0         # share answered 503
        self.html_outage = False    # every API request gets an HTML page with 200
        self.update(settings)

    def update(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown fault {key!r}")
            setattr(self, key, type(getattr(self, key))(value))

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Store:
    """Every record, by class; queries on a table see its child classes too."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.by_class: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TABLES}
        self.class_of: dict[str, str] = {}
        for name in REL_TYPES:
            parent, child = name.split("::")
            self.insert("cmdb_rel_type", {"name": name, "parent_descriptor": parent, "child_descriptor": child}, "system")

    def insert(self, table: str, values: dict[str, Any], user: str) -> dict[str, str]:
        known = fields_of(table)
        now = _now()
        sys_id = uuid.uuid4().hex
        record = {f: "" for f in known}
        record.update({k: _string(v) for k, v in values.items() if k in known and not k.startswith("sys_")})
        record.update(sys_id=sys_id, sys_class_name=table, sys_created_on=now, sys_updated_on=now,
                      sys_created_by=user, sys_updated_by=user, sys_mod_count="0")
        with self.lock:
            self.by_class[table][sys_id] = record
            self.class_of[sys_id] = table
        return record

    def get(self, table: str, sys_id: str) -> dict[str, str] | None:
        with self.lock:
            cls = self.class_of.get(sys_id)
            if cls is None or cls not in descendants(table):
                return None
            return self.by_class[cls][sys_id]

    def update(self, table: str, sys_id: str, values: dict[str, Any], user: str) -> dict[str, str] | None:
        with self.lock:
            record = self.get(table, sys_id)
            if record is None:
                return None
            known = fields_of(record["sys_class_name"])
            changes = {k: _string(v) for k, v in values.items() if k in known and not k.startswith("sys_")}
            if any(record.get(k) != v for k, v in changes.items()):
                record.update(changes)
                record["sys_updated_on"] = _now()
                record["sys_updated_by"] = user
                record["sys_mod_count"] = str(int(record["sys_mod_count"]) + 1)
            return record

    def delete(self, table: str, sys_id: str) -> bool:
        with self.lock:
            record = self.get(table, sys_id)
            if record is None:
                return False
            del self.by_class[record["sys_class_name"]][sys_id]
            del self.class_of[sys_id]
            return True

    def rows(self, table: str) -> list[dict[str, str]]:
        with self.lock:
            out: list[dict[str, str]] = []
            for cls in sorted(descendants(table)):
                out.extend(self.by_class[cls].values())
            return out

    def resolve(self, row: dict[str, str], field: str) -> str | None:
        """A field's value, following dot-walks through reference fields."""
        head, _, rest = field.partition(".")
        if not rest:
            return row.get(head)
        target_table = references_of(row["sys_class_name"]).get(head)
        if target_table is None:
            return None
        target = self.get(target_table, row.get(head, ""))
        if target is None:
            return "" if field.split(".")[-1] in fields_of(target_table) else None
        return self.resolve(target, rest)

    def dump(self) -> dict[str, dict[str, dict[str, str]]]:
        with self.lock:
            return json.loads(json.dumps(self.by_class))


class ServiceNowStandIn:
    """Start with ``start()``; the base URL is ``url``. Bound to 127.0.0.1 only."""

    def __init__(self, users: dict[str, str] | None = None, port: int = 0, **faults: Any):
        self.users = dict(users or DEFAULT_USERS)
        self.store = Store()
        self.faults = Faults(**faults)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._session_locks: dict[str, threading.Lock] = {}
        self._sessions_lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "ServiceNowStandIn":
        handler = type("Handler", (_Handler,), {"app": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="servicenow-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ServiceNowStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- bookkeeping -------------------------------------------------------------
    def count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def writes(self) -> int:
        return sum(v for k, v in self.stats.items() if k.split(" ")[0] in ("POST", "PUT", "PATCH", "DELETE"))

    def session_lock(self, session_id: str) -> threading.Lock:
        with self._sessions_lock:
            return self._session_locks.setdefault(session_id, threading.Lock())


class _Handler(BaseHTTPRequestHandler):
    app: ServiceNowStandIn
    protocol_version = "HTTP/1.1"
    server_version = "ServiceNow"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return

    # -- plumbing ------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, content_type: str = "application/json;charset=UTF-8") -> None:
        payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if payload or status not in (204,):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _error(self, status: int, message: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "detail": detail}, "status": "failure"}, headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if self.app.users.get(user) == password and user:
                return user
        return None

    def _session(self) -> tuple[str, dict[str, str]]:
        cookie = self.headers.get("Cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "JSESSIONID" and value:
                return value, {}
        session_id = uuid.uuid4().hex.upper()
        return session_id, {"Set-Cookie": f"JSESSIONID={session_id}; Path=/; HttpOnly"}

    # -- dispatch ---------------------------------------------------------------------
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
        url = urlparse(self.path)
        body = self._body()
        if url.path.startswith("/sandbox/"):
            return self._admin(method, url.path, body)
        parts = url.path.strip("/").split("/")
        # /api/now[/v1|/v2]/table/<table>[/<sys_id>]
        version = ""
        if parts[:2] == ["api", "now"] and len(parts) > 2 and parts[2] in ("v1", "v2"):
            version = parts.pop(2)
        if parts[:3] != ["api", "now", "table"] or len(parts) not in (4, 5):
            return self._error(400, "Requested URI does not represent any resource", url.path)
        table = parts[3]
        sys_id = parts[4] if len(parts) == 5 else None
        self.app.count(f"{method} {table}")
        session_id, cookie = self._session()
        with self.app.session_lock(session_id):
            self._api(method, table, sys_id, version, parse_qs(url.query), body, cookie)

    def _fault(self, cookie: dict[str, str]) -> bool:
        faults = self.app.faults
        if faults.latency:
            time.sleep(faults.latency)
        if faults.html_outage:
            self._send(200, raw=HTML_OUTAGE, headers=cookie, content_type="text/html")
            return True
        if faults.rate_429 and random.random() < faults.rate_429:
            self.app.count("fault 429")
            self._error(429, "Too Many Requests", "Rate limit exceeded", {
                **cookie, "Retry-After": f"{faults.retry_after:g}",
                "X-RateLimit-Limit": "100", "X-RateLimit-Rule": "sandbox",
                "X-RateLimit-Reset": str(int(time.time() + faults.retry_after)),
            })
            return True
        if faults.rate_5xx and random.random() < faults.rate_5xx:
            self.app.count("fault 503")
            self._error(503, "Service Unavailable", "sandbox fault", cookie)
            return True
        return False

    def _api(self, method, table, sys_id, version, params, body, cookie) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "User Not Authenticated", "Required to provide Auth information",
                               {**cookie, "WWW-Authenticate": 'Basic realm="Service-now"'})
        if self._fault(cookie):
            return
        if table not in TABLES:
            return self._error(400, f"Invalid table {table}", "", cookie)
        store = self.app.store
        one = lambda key: (params.get(key) or [""])[0]  # noqa: E731
        if method == "GET" and sys_id is None:
            return self._list(table, version, params, cookie)
        if method == "GET":
            record = store.get(table, sys_id)
            if record is None:
                return self._error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval", cookie)
            return self._send(200, {"result": self._render(record, one("sysparm_fields"), one("sysparm_exclude_reference_link"))}, cookie)
        if method in ("POST", "PUT", "PATCH"):
            try:
                values = json.loads(body or b"{}")
                if not isinstance(values, dict):
                    raise ValueError("not an object")
            except ValueError:
                return self._error(400, "Exception while reading request", "The payload is not valid JSON.", cookie)
        if method == "POST":
            if sys_id is not None:
                return self._error(405, "Method not Supported", "POST takes no sys_id", cookie)
            record = store.insert(table, values, user)
            location = f"{self.app.url}/api/now/table/{table}/{record['sys_id']}"
            return self._send(201, {"result": self._render(record, "", one("sysparm_exclude_reference_link"))},
                              {**cookie, "Location": location})
        if sys_id is None:
            return self._error(400, "Method not Supported", f"{method} needs a sys_id", cookie)
        if method in ("PUT", "PATCH"):
            record = store.update(table, sys_id, values, user)
            if record is None:
                return self._error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval", cookie)
            return self._send(200, {"result": self._render(record, "", one("sysparm_exclude_reference_link"))}, cookie)
        if method == "DELETE":
            if not store.delete(table, sys_id):
                return self._error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval", cookie)
            return self._send(204, None, cookie)
        return self._error(405, "Method not Supported", method, cookie)

    def _render(self, record: dict[str, str], fields: str, exclude_links: str) -> dict[str, Any]:
        wanted = [f for f in fields.split(",") if f] if fields else None
        out: dict[str, Any] = {}
        refs = references_of(record["sys_class_name"])
        for name in wanted if wanted is not None else sorted(record):
            if name not in record:
                continue  # unknown fields in sysparm_fields are ignored
            value = record[name]
            if name in refs and value and exclude_links.lower() != "true":
                out[name] = {"link": f"{self.app.url}/api/now/table/{refs[name]}/{value}", "value": value}
            else:
                out[name] = value
        return out

    def _list(self, table, version, params, cookie) -> None:
        one = lambda key, default="": (params.get(key) or [default])[0]  # noqa: E731
        try:
            query = encoded_query.parse(one("sysparm_query"))
            limit = int(one("sysparm_limit", "10000"))
            offset = int(one("sysparm_offset", "0") or 0)
        except ValueError as exc:
            return self._error(400, "Invalid query parameter", str(exc), cookie)
        store = self.app.store
        known = fields_of(table)

        def resolve(row: dict[str, str], name: str) -> str | None:
            if "." not in name and name not in known:
                return None  # a condition on an unknown field is dropped
            return store.resolve(row, name)

        rows = [row for row in store.rows(table) if encoded_query.matches(query, row, resolve)]
        for name, descending in reversed(query.order):
            if name in known:
                rows.sort(key=lambda r: r.get(name, ""), reverse=descending)
        total = len(rows)
        page = rows[offset : offset + limit] if limit > 0 else []
        if version == "v1" and not page and one("sysparm_query"):
            return self._error(404, "No Record found", "Records matching query not found. Check query parameter or offset parameter", cookie)
        headers = dict(cookie)
        if one("sysparm_no_count").lower() != "true":
            headers["X-Total-Count"] = str(total)
        if one("sysparm_suppress_pagination_header").lower() != "true" and limit > 0:
            headers["Link"] = self._links(table, params, offset, limit, total)
        fields, exclude = one("sysparm_fields"), one("sysparm_exclude_reference_link")
        self._send(200, {"result": [self._render(r, fields, exclude) for r in page]}, headers)

    def _links(self, table: str, params: dict[str, list[str]], offset: int, limit: int, total: int) -> str:
        def link(rel: str, at: int) -> str:
            query = {k: v[0] for k, v in params.items()}
            query.update(sysparm_offset=str(at), sysparm_limit=str(limit))
            return f'<{self.app.url}/api/now/table/{table}?{urlencode(query, quote_via=quote)}>;rel="{rel}"'

        last = max(0, ((total - 1) // limit) * limit) if total else 0
        links = [link("first", 0)]
        if offset > 0:
            links.append(link("prev", max(0, offset - limit)))
        if offset + limit < total:
            links.append(link("next", offset + limit))
        links.append(link("last", last))
        return ",".join(links)

    # -- test and operator hooks, outside /api --------------------------------------------
    def _admin(self, method: str, path: str, body: bytes) -> None:
        if path == "/sandbox/stats" and method == "GET":
            return self._send(200, {"stats": dict(self.app.stats), "writes": self.app.writes()})
        if path == "/sandbox/faults":
            if method == "POST":
                try:
                    self.app.faults.update(json.loads(body or b"{}"))
                except (ValueError, TypeError) as exc:
                    return self._error(400, "bad fault settings", str(exc))
            return self._send(200, self.app.faults.as_dict())
        if path == "/sandbox/dump" and method == "GET":
            return self._send(200, self.app.store.dump())
        return self._error(404, "No such sandbox endpoint", path)
