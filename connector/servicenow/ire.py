"""CI writes through the Identification and Reconciliation API (``servicenow.writer = "ire"``).

ServiceNow recommends ``POST /api/now/identifyreconcile`` for integrations:
the instance's identification rules, not the connector, decide which CI a
payload item is, and its reconciliation rules which source may write which
field. Each create, update and revive of a CI the run saw is sent as an IRE
item with every value its mapping gives (the instance writes only what
differs), ``sys_object_source_info`` (the configured ``discovery_source`` and
the CI's identity as its native key, the run's time as recency), and the CIs it depends on for its
identification, with those relations: the datacenter a resource is "Hosted on",
the account a datacenter is "Hosted on", the datacenter that "Contains" a zone
(and the CIs that contain it, as the mapping files declare them), if plan
matched them or creates them. IRE creates the relations it is given; the
connector does not write them again.

What IRE cannot do goes through the Table API as before: retires (the resource
is gone, so it has no values to identify it by; the CI is known by its sys_id),
relations other than those, deletes of relations, and tags.

An update is of the CI that plan matched by identity and checked to be the
connector's: its payload is first asked of ``/identifyreconcile/query``, and an
update that IRE would put on another CI, make a new CI of, or refuse (its host
not read in this run, say) goes through the Table API by its sys_id instead,
with a warning (see ``_send_checked``).

Without Enhanced IRE's partial commits, a payload with one bad item commits
nothing: the items of such a payload are sent again one by one, so that each
fails or succeeds on its own. A payload whose answer was lost is sent again:
IRE identifies what the first one made, and makes nothing twice.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import replace
from typing import Any, Iterable

from ..concurrency import map_in_order
from ..errors import (AmbiguousWriteError, ServiceNowBadRequest, ServiceNowBadResponse, ServiceNowError,
                      ServiceNowNotFound, ServiceNowPermissionError)
from ..mapping.functions import snow_value
from ..models import DesiredCI
from .cmdb import KV_TABLE, REL_TABLE, TableApiWriter, WriteOp, WriteResult
from .client import TableClient

log = logging.getLogger(__name__)

# relation type -> the end the dependent CI is at: those an identification may depend on
DEPENDENCY_ENDS = {"Hosted on::Hosts": "parent", "Contains::Contained by": "child"}
CIKey = tuple[str, str]  # (class, identity)
MAX_FINDINGS = 20  # lines of IRE findings in the report's warnings; the log has them all
RelationKey = tuple[str, CIKey, CIKey]  # (type, parent, child)


# The class model's identification of the AWS classes (SERVICENOW.md): an account by account_id; any other
# cloud CI by object_id, dependent on the CI it is "Hosted on" (or, a zone, "Contained by"). The
# Organization and its OUs stand alone, by object_id (the stand-in's assumption: SERVICENOW.md is silent).
ACCOUNT_CLASS = "cmdb_ci_cloud_service_account"
INDEPENDENT = {ACCOUNT_CLASS: "account_id", "cmdb_ci_cloud_org": "object_id", "cmdb_ci_aws_org_unit": "object_id"}


def mapping_warnings(tables: dict[str, list]) -> list[str]:
    """For ``validate`` with ``servicenow.writer = "ire"``: the classes (``MappingSet.tables``) whose files
    leave out what IRE identifies the AWS classes by, so that their creates would fail
    (``MISSING_MATCHING_ATTRIBUTES``, ``MISSING_DEPENDENCY``). An instance's own rules may differ: warnings."""
    warnings = []
    for table, variants in tables.items():
        for mapping in variants:
            needed = INDEPENDENT.get(table, "object_id")
            if needed not in mapping.fields:
                warnings.append(f"{mapping.file.name}: maps no {needed}, which IRE identifies {table} by: its "
                                "creates would fail (MISSING_MATCHING_ATTRIBUTES)")
            depends = any(DEPENDENCY_ENDS.get(rel.type) == rel.role for rel in mapping.relations)
            if table not in INDEPENDENT and not depends:
                warnings.append(f"{mapping.file.name}: no [[relations]] \"Hosted on::Hosts\" (or \"Contains::Contained "
                                f"by\" as child) to the CI that {table} is identified under, its datacenter: its creates "
                                "would fail (MISSING_DEPENDENCY)")
    return warnings


def check_access(tables: TableClient, data_source: str) -> None:
    """Before anything is collected: may the user use the IRE API at all? An empty payload asked of
    ``/identifyreconcile/query`` (nothing is committed). Refused (403: no itil or asset role, or the API not
    granted to an OAuth client) or absent (404), the run fails at once with the reason, not with every CI
    write failing after the collection. Any other answer (an empty payload may be a 400) is left to the writes."""
    try:
        tables.identify_reconcile({"items": [], "relations": []}, data_source, query=True)
    except ServiceNowPermissionError as exc:
        raise ServiceNowPermissionError(
            f"servicenow.writer = \"ire\", but the instance refuses the Identification and Reconciliation API "
            f"to this user ({exc.args[0]}): it needs the itil or asset role (and, for an OAuth client with "
            "scopes, the API granted); or set servicenow.writer = \"table\"", status=exc.status, method=exc.method,
            url=exc.url) from None
    except ServiceNowNotFound as exc:
        raise ServiceNowNotFound(f"servicenow.writer = \"ire\", but the instance has no Identification and "
                                 f"Reconciliation API ({exc.args[0]}); set servicenow.writer = \"table\"",
                                 status=exc.status, method=exc.method, url=exc.url) from None
    except (ServiceNowBadRequest, ServiceNowBadResponse):
        pass


class IreWriter:
    """A ``CmdbWriter``: CI creates, updates and revives through IRE, every other write through ``table_writer``."""

    def __init__(self, tables: TableClient, table_writer: TableApiWriter, data_source: str,
                 desired: Iterable[DesiredCI], sys_ids: dict[CIKey, str], creates: set[CIKey], batch_size: int = 0,
                 scanned_at: str = ""):
        self.tables = tables
        self.table_writer = table_writer
        self.data_source = data_source
        self.cis = {(ci.table, ci.identity): ci for ci in desired}
        self.key_of = {sys_id: key for key, sys_id in sys_ids.items()}
        self.sys_id_of = dict(sys_ids)  # the CIs plan matched: those the CMDB holds
        # the CIs that may be sent as another's host: those the CMDB holds and plan matched, and those plan
        # creates; never one whose create a guard held back, nor one of a class that could not be read
        self.hosts = set(sys_ids) | set(creates)
        self.batch_size = max(1, batch_size)
        # when the run saw the resources (UTC, YYYY-MM-DD hh:mm:ss): source_recency_timestamp, which an
        # instance's data refresh rules weigh
        self.source_info = {"source_name": data_source, **({"source_recency_timestamp": scanned_at} if scanned_at else {})}
        self._lock = threading.Lock()
        self.relations_done: set[RelationKey] = set()  # relations IRE made or found, by a committed payload
        # CIs plan would create that IRE identified as CIs the CMDB holds: their relations and tags may be
        # there already, so apply looks them up before it creates them
        self.identified: set[CIKey] = set()
        # what went otherwise than plan said, for the report's warnings (see findings): message -> writes
        self._findings: Counter[str] = Counter()

    def findings(self) -> list[str]:
        """For the report's warnings: the writes that went otherwise than plan said (through the Table API
        instead, a CI IRE took for another), one line each, or per CI that sent them there, with a count."""
        lines = [f"{message} ({n} writes)" if n > 1 else message for message, n in self._findings.items()]
        if len(lines) > MAX_FINDINGS:
            lines = [*lines[:MAX_FINDINGS], f"and {len(lines) - MAX_FINDINGS} more of IRE's writes that went otherwise "
                                            "than plan said (see the log)"]
        return lines

    def _found(self, logged: str, table: str, reported: str = "") -> None:
        """A write that went otherwise than plan said: ``logged`` to the log, and counted for the report under
        ``reported`` (a reason many writes share, one line for them all), or ``logged`` itself."""
        log.warning("%s", logged, extra={"table": table})
        with self._lock:
            self._findings[reported or logged] += 1

    # -- which writes go where ------------------------------------------------
    def key(self, op: WriteOp) -> CIKey | None:
        """The CI an op writes, if it goes through IRE (a create or update of a CI the run saw), else None."""
        if op.table in (REL_TABLE, KV_TABLE) or op.method not in ("POST", "PATCH"):
            return None
        key = (op.table, next(iter(op.match.values()), "")) if op.method == "POST" else self.key_of.get(op.sys_id or "")
        return key if key in self.cis else None

    def dependencies(self, key: CIKey) -> list[tuple[str, CIKey, str]]:
        """(relation type, the CI it depends on, its own end) for each dependency its mapping declares."""
        return [(ref.type, (ref.table, ref.identity), ref.role) for ref in self.cis[key].relations
                if DEPENDENCY_ENDS.get(ref.type) == ref.role]

    def hosts_of(self, key: CIKey) -> list[CIKey]:
        """The CIs a payload for ``key`` carries for its identification: its hosts, theirs, and so on."""
        out: list[CIKey] = []
        todo = [key]
        while todo:
            for _kind, host, _end in self.dependencies(todo.pop()):
                if host in self.cis and host in self.hosts and host not in out and host != key:
                    out.append(host)
                    todo.append(host)
        return out

    def waves(self, ops: list[WriteOp]) -> list[list[int]]:
        """The ops' indexes in waves: a CI after the CIs it depends on (accounts, then datacenters, then the
        rest), so that two payloads never both create one new host."""
        depth: dict[CIKey, int] = {}

        def depth_of(key: CIKey, seen: frozenset = frozenset()) -> int:
            if key not in depth:
                hosts = [host for _t, host, _e in self.dependencies(key) if host in self.cis and host not in seen]
                depth[key] = 1 + max((depth_of(h, seen | {key}) for h in hosts), default=0)
            return depth[key]

        waves: dict[int, list[int]] = {}
        for index, op in enumerate(ops):
            key = self.key(op)
            waves.setdefault(depth_of(key) if key else 0, []).append(index)
        return [waves[d] for d in sorted(waves)]

    # -- writing ---------------------------------------------------------------
    def write_many(self, ops: list[WriteOp]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(ops)
        keys = [self.key(op) for op in ops]
        through_ire = [(i, op, key) for i, (op, key) in enumerate(zip(ops, keys)) if key is not None]
        others = [i for i, key in enumerate(keys) if key is None]
        if others:
            for i, result in zip(others, self.table_writer.write_many([ops[i] for i in others])):
                results[i] = result
        for start in range(0, len(through_ire), self.batch_size):
            part = through_ire[start : start + self.batch_size]
            for (i, _op, _key), result in zip(part, self._send(part)):
                results[i] = result
        return [r if r is not None else WriteResult(error="not written") for r in results]

    def _send(self, part: list[tuple[int, WriteOp, CIKey]], checked: bool = False) -> list[WriteResult]:
        """The results of ``part``'s writes, in its order."""
        if not checked and any(op.method == "PATCH" or self.cis[key].create_only
                               or any(host in self.sys_id_of for host in self.hosts_of(key)) for _i, op, key in part):
            return self._send_checked(part)
        payload, index_of, relations = self._payload([(op, key) for _i, op, key in part])
        try:
            answer = self._post(payload)
        except ServiceNowBadRequest as exc:
            if len(part) > 1:  # an instance that refuses a payload with a bad item as a whole (400): one by one
                return [result for one in part for result in self._send([one], checked=True)]
            return [WriteResult(error=str(exc))]
        except ServiceNowError as exc:
            return [WriteResult(error=str(exc))] * len(part)
        items = _items(answer)
        if any(item.get("errors") for item in items if isinstance(item, dict)) and len(part) > 1:
            # nothing of it was committed: each one alone, so that only the bad ones fail
            return [result for one in part for result in self._send([one], checked=True)]
        results = [_result(items, index_of[key], op) for _i, op, key in part]
        for (_i, op, _key), result in zip(part, results):
            if op.method == "PATCH" and op.sys_id and result.sys_id and result.sys_id != op.sys_id:
                # identification found another CI than the one plan matched (it was asked first: the CMDB changed
                # since): said, as it is the instance's call
                self._found(f"IRE wrote {op.table} {result.sys_id} for the update planned on {op.sys_id}", op.table)
        if all(r.error is None for r in results):
            found = {key for _i, op, key in part if op.method == "POST"
                     and isinstance(items[index_of[key]], dict) and items[index_of[key]].get("operation") != "INSERT"}
            with self._lock:
                self.relations_done.update(relations)
                self.identified.update(found)
            written = {key for _i, _op, key in part}
            for host, index in index_of.items():
                if host not in written and (why := _host_astray(items, index, host, self.sys_id_of.get(host), True)):
                    self._found(why, host[0])  # the CMDB changed since it was asked
        return results

    def _send_checked(self, part: list[tuple[int, WriteOp, CIKey]]) -> list[WriteResult]:
        """An update is of the CI plan matched (by identity, and checked to be ours): the payload is first
        asked of ``/identifyreconcile/query``, which commits nothing. An update that IRE would put on another
        CI, make a new one of or refuse (a CI that lost the relation it is identified by, one made through the
        Table API before the switch to IRE, one just adopted from Discovery, its host not known this run) goes
        through the Table API by its sys_id instead, with a warning; the rest through IRE. So does a write
        whose payload carries a CI the CMDB holds (its datacenter, say) that IRE would not take for the one
        plan matched, but make a second of (that CI lacks the relation it is identified by: one made through
        the Table API, its relation to its account deleted or never made): a create is then made through the
        Table API, and plan's relation creates give the CI its relation back, for the next runs' IRE. A
        create with values for a new CI only (a mapping's known_when) that IRE would put on an existing CI
        goes without them."""
        try:
            said = self._ask(part)
        except ServiceNowError as exc:
            return [WriteResult(error=str(exc))] * len(part)
        agreed, elsewhere = [], []
        part = list(part)
        for position, ((i, op, key), (why, host)) in enumerate(zip(part, said)):
            if _through_table_api(op, why, host):
                shared = f"{why}: the writes of the CIs it hosts went through the Table API instead" if host else ""
                if op.method == "PATCH":
                    self._found(f"{why} for {op.table} {key[1]}, which plan matched to {op.sys_id}: updated through "
                                "the Table API by its sys_id instead", op.table, shared)
                else:
                    self._found(f"{why}, for the create of {op.table} {key[1]}: created through the Table API instead",
                                op.table, shared)
                elsewhere.append(position)
                continue
            create_only = self.cis[key].create_only
            if op.method == "POST" and why and create_only:  # not over the values of the CI IRE identifies
                part[position] = (i, replace(op, payload={k: v for k, v in op.payload.items() if k not in create_only}),
                                  key)
            agreed.append(position)
        results: list[WriteResult] = [WriteResult(error="not written")] * len(part)
        if elsewhere:
            for position, result in zip(elsewhere, self.table_writer.write_many([part[p][1] for p in elsewhere])):
                results[position] = result
        if agreed:
            for position, result in zip(agreed, self._send([part[p] for p in agreed], checked=True)):
                results[position] = result
        return results

    def predict(self, ops: list[WriteOp], workers: int = 1) -> list[str]:
        """For ``plan``: what IRE would make of each op where that is not what plan says ("" where it
        agrees, or where the op is not IRE's), asked of ``/identifyreconcile/query``, which commits nothing,
        up to ``workers`` payloads at once. A create that IRE would put on an existing CI, or refuse; an
        update that would go by sys_id through the Table API instead (see ``_send_checked``)."""
        through_ire = [(i, op, key) for i, op in enumerate(ops) if (key := self.key(op)) is not None]
        parts = [through_ire[start : start + self.batch_size] for start in range(0, len(through_ire), self.batch_size)]
        notes = [""] * len(ops)
        for part, said in zip(parts, map_in_order(self._predict_part, parts, workers, "plan-ire")):
            for (i, op, _key), (why, host) in zip(part, said):
                instead = "updated by its sys_id" if op.method == "PATCH" else "created"
                notes[i] = f"{why}: {instead} through the Table API instead" if _through_table_api(op, why, host) \
                    else why
        return notes

    def _predict_part(self, part: list[tuple[int, WriteOp, CIKey]]) -> list[tuple[str, bool]]:
        try:
            return self._ask(part)
        except ServiceNowError as exc:
            return [(f"IRE could not be asked what it would do: {exc}", False)] * len(part)

    def _ask(self, part: list[tuple[int, WriteOp, CIKey]]) -> list[tuple[str, bool]]:
        """``/identifyreconcile/query`` about ``part``'s writes: for each, (where IRE would not do what plan
        says, what it would do instead, else ""; whether that is of a CI its payload carries, one the CMDB
        holds that IRE would not take for the CI plan matched: the write then goes through the Table API, as an
        update does that IRE would not put on the CI plan matched). ``ServiceNowError`` when it cannot be
        asked."""
        payload, index_of, _relations = self._payload([(op, key) for _i, op, key in part])
        verdict = _items(self._post(payload, query=True))
        written = {key for _i, _op, key in part}
        astray = {host: why for host, index in index_of.items()
                  if host not in written and (why := _host_astray(verdict, index, host, self.sys_id_of.get(host)))}
        said = []
        for _i, op, key in part:
            hosts = [astray[host] for host in self.hosts_of(key) if host in astray]
            said.append((hosts[0], True) if hosts else (_disagreement(verdict, index_of[key], op), False))
        return said

    def _post(self, payload: dict[str, Any], query: bool = False) -> dict[str, Any]:
        try:
            return self.tables.identify_reconcile(payload, self.data_source, query)
        except AmbiguousWriteError as exc:
            # IRE identifies what a first send made: sending it again makes nothing twice
            log.warning("IRE answer lost (%s); sending the payload again", exc.args[0])
            return self.tables.identify_reconcile(payload, self.data_source, query)

    def _payload(self, writes: list[tuple[WriteOp, CIKey]]) -> tuple[dict[str, Any], dict[CIKey, int], set[RelationKey]]:
        """The IRE payload for ``writes``, with the CIs they depend on; (payload, CI -> its item's index,
        the relations it carries)."""
        items: list[dict[str, Any]] = []
        index_of: dict[CIKey, int] = {}
        relations: list[dict[str, Any]] = []
        carried: set[RelationKey] = set()
        written = {key: op.payload for op, key in writes}

        def add(key: CIKey) -> int:
            if key in index_of:
                return index_of[key]
            ci = self.cis[key]
            values = {name: snow_value(value) for name, value in ci.fields.items()}
            values.update(written.get(key, {}))  # the op's own: stamps, discovery_source, cut values
            index_of[key] = len(items)
            items.append({"className": key[0], "values": values,
                          "sys_object_source_info": {**self.source_info, "source_native_key": key[1]}})
            me = index_of[key]
            for kind, host, end in self.dependencies(key):
                if host not in self.cis or host not in self.hosts:
                    continue  # unknown here, held back or unread: IRE says what is missing
                other = add(host)
                parent, child = (me, other) if end == "parent" else (other, me)
                relations.append({"parent": parent, "child": child, "type": kind})
                carried.add((kind, key, host) if end == "parent" else (kind, host, key))
            return me

        for _op, key in writes:
            add(key)
        return {"items": items, "relations": relations}, index_of, carried


def _items(answer: dict[str, Any]) -> list:
    """An IRE result's items; none if they are not a list (each write then fails with no sys_id)."""
    items = answer.get("items")
    return items if isinstance(items, list) else []


def _through_table_api(op: WriteOp, why: str, host: bool) -> bool:
    """Does a checked write (``_ask``'s ``why`` and ``host`` of it) go through the Table API instead of IRE: any
    write whose payload carries a host IRE would not take for the CI plan matched, an update IRE would not put
    on the CI plan matched."""
    return host or (bool(why) and op.method == "PATCH")


def _item(items: list, index: int) -> dict[str, Any]:
    """The IRE result item of the payload item at ``index``; {} if there is none."""
    item = items[index] if index < len(items) else None
    return item if isinstance(item, dict) else {}


def _disagreement(items: list, index: int, op: WriteOp) -> str:
    """Where IRE's answer to ``op`` (from ``/query``) is not what plan says: what IRE would do, else ""."""
    item = _item(items, index)
    found = str(item.get("sysId") or "")
    refused = _result(items, index, op).error if item.get("errors") else None
    if op.method == "POST":
        if refused:
            return f"{refused}: it would not be created"
        return f"IRE would update the CI {found} it identifies, rather than create one" if found not in ("", "Unknown") else ""
    if found == op.sys_id:
        return ""
    return refused or (f"IRE would write {found}" if found not in ("", "Unknown") else "IRE would create a new CI")


def _host_astray(items: list, index: int, host: CIKey, sys_id: str | None, committed: bool = False) -> str:
    """Where IRE's answer for a CI a payload carries for another's identification (``host``) does not take
    it for the CI plan matched (``sys_id``; None: one plan creates, not checked): what IRE would do (or,
    ``committed``, did) instead, else "". An item with errors is left to the payload's own failure."""
    item = _item(items, index)
    found = str(item.get("sysId") or "")
    if sys_id is None or found == sys_id or item.get("errors"):
        return ""
    if found in ("", "Unknown"):
        instead = "made a second CI of" if committed else "would make a second CI of"
    else:
        instead = f"{'took' if committed else 'would take'} {found} for"
    return (f"IRE {instead} the {host[0]} {host[1]} that it identifies others by, which plan matched to {sys_id} "
            "(does that CI lack the relation IRE identifies it by, to its own host?)")


def _result(items: list, index: int, op: WriteOp) -> WriteResult:
    item = _item(items, index)
    errors = [e for e in item.get("errors") or [] if isinstance(e, dict)]
    if errors:
        return WriteResult(error="IRE: " + "; ".join(f"{e.get('error', '')}: {e.get('message', '')}".strip(": ")
                                                       for e in errors) + f" | {op.table}")
    sys_id = str(item.get("sysId") or "")
    if not sys_id or sys_id == "Unknown":
        return WriteResult(error=f"IRE: no sys_id in the answer (operation {item.get('operation') or 'none'}) | {op.table}")
    return WriteResult(sys_id=sys_id)
