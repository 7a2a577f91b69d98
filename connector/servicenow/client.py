"""Table API client: pysnow for CRUD and query building, our session underneath.

Each thread gets its own session (and so its own ``JSESSIONID``): ServiceNow
serialises the requests of one session, so sharing one would undo the
concurrency. Paging is ours: pysnow does not follow ``rel="next"``.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Iterator
from urllib.parse import urlparse

import pysnow

from ..settings import ServiceNowSettings
from .auth import make_auth
from .transport import ServiceNowSession

API_BASE = "/api/now"


class TableClient:
    def __init__(self, settings: ServiceNowSettings, *, sleep=None):
        self._settings = settings
        url = urlparse(settings.instance_url)
        self._host = url.netloc
        self._use_ssl = url.scheme == "https"
        self._base_path = (url.path.rstrip("/") + API_BASE) if url.path.strip("/") else API_BASE
        self._batch_url = f"{url.scheme}://{url.netloc}{self._base_path}/v1/batch"
        self._verify: bool | str = str(settings.ca_bundle) if (settings.verify_tls and settings.ca_bundle) else settings.verify_tls
        # One auth for every session: basic credentials, or one shared OAuth token.
        self._auth = make_auth(settings, self._verify)
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: list[ServiceNowSession] = []
        self._lock = threading.Lock()

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
        return session

    def _pysnow(self) -> pysnow.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            session = self._new_session()
            with self._lock:
                self._sessions.append(session)
            client = pysnow.Client(host=self._host, use_ssl=self._use_ssl, session=session)
            # pysnow overwrites the headers of the session it is given.
            session.headers["User-Agent"] = "cmdb-connector"
            self._local.client = client
        return client

    def _resource(self, table: str):
        resource = self._pysnow().resource(
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
    def query(self, table: str, query: str, fields: list[str], page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every matching row, paged by offset in ``sys_id`` order.

        A short page is not the end: ``sysparm_limit`` applies before ACLs, so
        the count in ``X-Total-Count`` decides; without it, an empty page does.
        """
        limit = page_size or self._settings.page_size
        ordered = f"{query}^ORDERBYsys_id" if query else "ORDERBYsys_id"
        offset = 0
        while True:
            response = self._resource(table).get(
                query=ordered, limit=limit, offset=offset, fields=list(fields),
            )
            rows = response.all()
            yield from rows
            total = response.headers.get("X-Total-Count")
            offset += limit
            if total is not None and total.isdigit():
                if offset >= int(total):
                    return
            elif not rows:
                return

    # -- writes -------------------------------------------------------------
    def create(self, table: str, payload: dict[str, str]) -> dict[str, Any]:
        return self._resource(table).create(payload=payload).one()

    def update(self, table: str, sys_id: str, payload: dict[str, str]) -> dict[str, Any]:
        """PATCH with only the given (changed) fields."""
        return self._resource(table).request("PATCH", path_append=f"/{sys_id}", data=json.dumps(payload)).one()

    def delete(self, table: str, sys_id: str) -> None:
        self._resource(table).request("DELETE", path_append=f"/{sys_id}").all()

    def batch(self, rest_requests: list[dict[str, Any]]) -> dict[str, Any]:
        """One Batch API request (pysnow has no Batch API; our session sends it)."""
        body = {"batch_request_id": uuid.uuid4().hex, "rest_requests": rest_requests}
        return self._pysnow().session.post(self._batch_url, json=body).json()
