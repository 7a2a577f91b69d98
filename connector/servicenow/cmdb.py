"""CMDB reads and writes in CMDB terms: CIs, relation types, relations.

The rest of the connector talks to this module, never to pysnow. The writer
is an interface (``CmdbWriter``) so that an IRE writer can be added beside the
Table API one.
"""

from __future__ import annotations

import logging
import base64
import json
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Callable, Iterable, NamedTuple, Protocol
from urllib.parse import quote

from ..concurrency import map_in_order
from ..errors import (AmbiguousWriteError, ServiceNowBadRequest, ServiceNowError, ServiceNowNotFound,
                      ServiceNowPermissionError)
from ..mapping.functions import all_strings
from ..mapping.schema import DEFAULT_RETIRE
from ..models import ExistingCI, ExistingKeyValue, ExistingRelation, Lookup
from .client import TableClient

log = logging.getLogger(__name__)

CI_TABLE = "cmdb_ci"  # the base class: a query on it sees every class
REL_TABLE = "cmdb_rel_ci"
REL_TYPE_TABLE = "cmdb_rel_type"
KV_TABLE = "cmdb_key_value"
CLASS_TABLE = "sys_db_object"  # the classes, each with its parent (super_class)
DICTIONARY_TABLE = "sys_dictionary"  # the fields of each class, with type and max_length
MAX_CLASS_DEPTH = 20  # sys_db_object reads at most, walking up from the mapped classes
# Fields every CI read carries, whatever the mapping uses.
BASE_FIELDS = ("sys_id", "sys_class_name", "discovery_source", "correlation_id", "object_id",
               "install_status", "operational_status", "last_discovered")
IN_CHUNK = 100
# The most bytes of values, URL-encoded, that one IN query carries. Instances refuse a request whose
# request line and headers pass 8 KB (Tomcat: 400 "Request header is too large"); 100 ARNs, encoded,
# are some 8 KB alone. This leaves room for the rest of the URL and the headers.
IN_QUERY_BYTES = 4000


def _chunks(values: list[str], size: int = IN_CHUNK, budget: int = IN_QUERY_BYTES) -> Iterable[list[str]]:
    """``values`` in chunks of at most ``size`` values and ``budget`` bytes once URL-encoded (a value
    longer than that alone goes in a chunk of its own)."""
    chunk: list[str] = []
    used = 0
    for value in values:
        cost = len(quote(value, safe="")) + 3  # and the comma after it, %2C
        if chunk and (len(chunk) >= size or used + cost > budget):
            yield chunk
            chunk, used = [], 0
        chunk.append(value)
        used += cost
    if chunk:
        yield chunk


def _row_fields(row: dict[str, Any]) -> dict[str, str]:
    """A row in ServiceNow's string form; references as plain sys_ids."""
    if all_strings(row.values()):
        return row  # what sysparm_exclude_reference_link gives: nothing to convert
    return {k: _ref(v) if isinstance(v, dict) else ("" if v is None else str(v)) for k, v in row.items()}


def _string_rows(page: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A page of rows in ServiceNow's string form (``_row_fields``), checked in
    one pass over the page's values: the usual page has nothing to convert."""
    if all_strings(chain.from_iterable(map(dict.values, page))):
        return page
    return list(map(_row_fields, page))


def _ref(value) -> str:
    """A reference value as a plain sys_id, whether or not it came as a link object."""
    if isinstance(value, dict):
        return str(value.get("value", ""))
    return str(value or "")


class CmdbReader:
    def __init__(self, tables: TableClient, discovery_source: str, workers: int = 1):
        self.tables = tables
        self.discovery_source = discovery_source
        self.workers = workers  # sessions that may read pages of one query at once

    def _cis(self, table: str, query: str, fields: Iterable[str]) -> list[ExistingCI]:
        wanted = sorted(set(BASE_FIELDS) | set(fields))

        def cis(page: list[dict[str, Any]]) -> list[ExistingCI]:
            rows = _string_rows(page)
            # ExistingCI(table, sys_id, row), built in C: tuple.__new__ skips the named tuple's Python __new__
            return list(map(tuple.__new__, repeat(ExistingCI), zip(repeat(table), map(itemgetter("sys_id"), rows), rows)))

        return self._read(table, query, wanted, cis)

    def _read(self, table: str, query: str, fields: list[str], convert: Callable[[list[dict[str, Any]]], list]) -> list:
        """Every row of the query, each page made by ``convert`` in the thread that fetched it."""
        return self.tables.read(table, query, fields, workers=self.workers, convert=convert)

    def owned_cis(self, table: str, fields: Iterable[str]) -> list[ExistingCI]:
        """One paged query for the table's CIs stamped with our discovery_source."""
        return self._cis(table, f"discovery_source={self.discovery_source}^sys_class_name={table}", fields)

    def owned_in_other_classes(self, tables: Iterable[str]) -> list[ExistingCI]:
        """Our active CIs in any class but ``tables`` (one paged query on cmdb_ci): those of
        a class whose mapping file was removed or renamed. Each CI's table is its class."""
        query = (f"discovery_source={self.discovery_source}^sys_class_nameNOT IN{','.join(sorted(set(tables)))}"
                 f"^install_status!={DEFAULT_RETIRE['install_status']}")
        return [ExistingCI(row.get("sys_class_name", ""), row["sys_id"], row)
                for row in _string_rows(self.tables.read(CI_TABLE, query, list(BASE_FIELDS), workers=self.workers))]

    def check_login(self, table: str) -> None:
        """One row of one class (``table``) counted in cmdb_ci, before anything else is done: an instance
        out of reach or asleep, or a login it refuses, fails the run at once rather than after the
        collection (minutes of AWS calls, all for nothing). A refusal of this one read (an ACL on
        cmdb_ci, a class not installed) is not the run's: each class's own read deals with it."""
        try:
            self.tables.count(CI_TABLE, f"sys_class_name={table}")
        except (ServiceNowBadRequest, ServiceNowPermissionError, ServiceNowNotFound):
            pass

    def others_exist(self, table: str) -> bool:
        """Does the class hold any CI that is not ours? (If not, there is nothing to adopt.)"""
        query = f"sys_class_name={table}^discovery_source!={self.discovery_source}^ORdiscovery_sourceISEMPTY"
        count = self.tables.count(table, query)
        return count is None or count > 0

    def cis_where_in(self, table: str, field: str, values: list[str], fields: Iterable[str], extra: str = "") -> list[ExistingCI]:
        """CIs whose ``field`` is one of ``values`` (for adoption), in chunks of
        ``IN_CHUNK`` values and ``IN_QUERY_BYTES``, up to ``workers`` chunks at once (a first run into a CMDB
        that Discovery filled asks for every CI of a class)."""
        chunks = list(_chunks(sorted(set(values))))
        wanted = list(fields)

        def read(chunk: list[str]) -> list[ExistingCI]:
            return self._cis(table, f"{field}IN{','.join(chunk)}^sys_class_name={table}{extra}", wanted)

        return [ci for found in map_in_order(read, chunks, self.workers, "adopt") for ci in found]

    def look_up(self, lookup: Lookup, values: Iterable[str]) -> dict[str, list[str]]:
        """The records of ``lookup.table`` whose ``lookup.field`` holds one of ``values`` and that match
        ``lookup.where``: each value, in lower case -> the sys_ids of those records.

        Compared without case, as an instance's queries usually compare; each value is asked for as
        given and in lower case, so that an instance that compares with case still finds a record kept in
        lower case (an e-mail address, most often). Each row is checked again here against the values
        asked for: the instance drops a condition it cannot use (a misspelled field) and would then return
        every record. A value with ``^`` is never asked for (an encoded query cannot escape it:
        "x^NQactive=true" would be a query of its own); one with a comma, which an IN list would split, is
        asked for alone.
        """
        asked = {form for value in values if value and "^" not in value for form in (value, value.lower())}
        wanted = {value.lower() for value in asked}
        queries = [f"{lookup.field}IN{','.join(chunk)}" for chunk in _chunks(sorted(v for v in asked if "," not in v))]
        queries += [f"{lookup.field}={value}" for value in sorted(asked) if "," in value]
        narrowed = f"^{lookup.where}" if lookup.where else ""

        def read(query: str) -> list[dict[str, Any]]:
            return list(self.tables.query(lookup.table, query + narrowed, ["sys_id", lookup.field]))

        found: dict[str, list[str]] = {}
        for rows in map_in_order(read, queries, self.workers, "lookup"):
            for row in _string_rows(rows):
                key = row.get(lookup.field, "").lower()
                if key in wanted and row["sys_id"] not in found.get(key, ()):
                    found.setdefault(key, []).append(row["sys_id"])
        return found

    def field_lengths(self, fields: dict[str, Iterable[str]]) -> dict[str, dict[str, int]]:
        """Each table's string fields among ``fields[table]`` -> their ``max_length`` (see ``dictionary``)."""
        return self.dictionary(fields).lengths

    def dictionary(self, fields: dict[str, Iterable[str]]) -> "Dictionary":
        """What the instance's dictionary says of ``fields[table]``, for each table: the ``max_length``
        of its string fields, and which of them the class does not have at all.

        A field's dictionary entry is on the class that defines it: the table
        itself or one of its ancestors, found by walking ``super_class`` up
        ``sys_db_object`` (one read per level). Then one read of
        ``sys_dictionary``; the nearest class's entry wins. What the instance
        does not say (a class not found, or an ancestor, a length that is not a
        number) is left out: such a value is compared uncut, such a field taken
        to exist.
        """
        tables = sorted(fields)
        if not tables:
            return Dictionary({}, {})
        name_of: dict[str, str] = {}  # sys_db_object sys_id -> class name
        parent_of: dict[str, str] = {}  # class name -> its super_class's sys_id ("" for a root)
        query = f"nameIN{','.join(tables)}"
        for _level in range(MAX_CLASS_DEPTH):
            for row in self.tables.query(CLASS_TABLE, query, ["sys_id", "name", "super_class"]):
                name_of[row["sys_id"]] = row.get("name", "")
                parent_of[row.get("name", "")] = _ref(row.get("super_class"))
            unknown = sorted({parent for parent in parent_of.values() if parent and parent not in name_of})
            if not unknown:
                break
            query = f"sys_idIN{','.join(unknown)}"

        def lineage(table: str) -> list[str]:  # the table, then its ancestors, nearest first
            line: list[str] = []
            while table in parent_of and table not in line:
                line.append(table)
                table = name_of.get(parent_of[table], "")
            return line

        lineages = {table: lineage(table) for table in tables}
        # a class whose line of ancestors reaches a root: only there can a field be known to be missing
        whole = {table for table, line in lineages.items() if line and parent_of.get(line[-1]) == ""}
        classes = sorted({c for line in lineages.values() for c in line})
        names = sorted({f for table in tables for f in fields[table]})
        if not classes or not names:
            return Dictionary({}, {})
        entries: dict[tuple[str, str], dict[str, str]] = {}
        query = f"nameIN{','.join(classes)}^elementIN{','.join(names)}"
        wanted = ["sys_id", "name", "element", "internal_type", "max_length"]  # sys_id: see TableClient.read
        for row in self.tables.query(DICTIONARY_TABLE, query, wanted):
            entries[(row.get("name", ""), row.get("element", ""))] = row  # re-checked below: only asked-for pairs count
        lengths: dict[str, dict[str, int]] = {}
        missing: dict[str, set[str]] = {}
        for table in tables:
            for name in fields[table]:
                entry = next((entries[(c, name)] for c in lineages[table] if (c, name) in entries), None)
                if entry is None and table in whole:  # neither the class nor any of its ancestors has it
                    missing.setdefault(table, set()).add(name)
                length = str(entry.get("max_length", "")) if entry else ""
                if entry and _ref(entry.get("internal_type")) == "string" and length.isdigit() and int(length) > 0:
                    lengths.setdefault(table, {})[name] = int(length)
        return Dictionary(lengths, missing)

    def relation_types(self, names: Iterable[str]) -> dict[str, str]:
        names = sorted(set(names))
        if not names:
            return {}
        rows = self.tables.query(REL_TYPE_TABLE, f"nameIN{','.join(names)}", ["sys_id", "name"])
        # Re-check in code: a dropped condition would return every type.
        return {row["name"]: row["sys_id"] for row in rows if row.get("name") in names}

    def relation_type_names(self) -> list[str]:
        """Every relation type the instance has, by name (a hundred or so: one page)."""
        rows = self.tables.query(REL_TYPE_TABLE, "", ["sys_id", "name"])  # sys_id: see TableClient.read
        return sorted({row.get("name", "") for row in rows} - {""})

    def relations(self, type_names: Iterable[str]) -> list[ExistingRelation]:
        """Relations of the managed types (by name) whose parent is one of our CIs.

        The types are named through the reference (``type.name``), so that this
        query need not wait for ``relation_types``: the two run at once. Plan
        keeps only the relations whose type is one of those it found."""
        type_names = sorted(set(type_names))
        if not type_names:
            return []
        query = f"parent.discovery_source={self.discovery_source}^type.nameIN{','.join(type_names)}"
        fields = ("sys_id", "parent", "child", "type")

        def relations(page: list[dict[str, Any]]) -> list[ExistingRelation]:
            rows = _string_rows(page)
            try:  # the usual page, every field there: built in C, as in _cis
                return list(map(tuple.__new__, repeat(ExistingRelation), map(itemgetter(*fields), rows)))
            except KeyError:  # a field left out of a row (an ACL on the field, say): "" for it
                return [ExistingRelation(*(row.get(name, "") for name in fields)) for row in rows]

        return self._read(REL_TABLE, query, list(fields), relations)

    def key_values(self) -> list[ExistingKeyValue]:
        """The cmdb_key_value rows (tags) of our CIs."""
        query = f"configuration_item.discovery_source={self.discovery_source}"
        fields = ["sys_id", "configuration_item", "key", "value"]

        def rows(page: list[dict[str, Any]]) -> list[ExistingKeyValue]:
            return [ExistingKeyValue(row["sys_id"], row.get("configuration_item", ""), row.get("key", ""),
                                     row.get("value", "")) for row in _string_rows(page)]

        return self._read(KV_TABLE, query, fields, rows)


class Dictionary(NamedTuple):
    """What ``CmdbReader.dictionary`` found."""

    lengths: dict[str, dict[str, int]]  # table -> string field -> max_length
    missing: dict[str, set[str]]  # table -> fields asked for that the class does not have


@dataclass(frozen=True)
class WriteOp:
    """One write. ``match`` identifies the record a POST makes, should its answer be lost."""

    method: str  # POST | PATCH | DELETE
    table: str
    sys_id: str | None = None
    payload: dict[str, str] = field(default_factory=dict)
    match: dict[str, str] = field(default_factory=dict)
    # a create looked up by ``match`` first (its record may be there already): a relation or a tag of a CI
    # that plan took for new but the instance's identification (IRE) found; a record found gets the values of
    # ``payload`` it lacks
    check_first: bool = False


@dataclass(frozen=True)
class WriteResult:
    sys_id: str | None = None
    error: str | None = None


class CmdbWriter(Protocol):
    """Writes ops, results in their order. A writer that identifies CIs by the CIs they depend on (IRE,
    ``servicenow/ire.py``) may also have ``waves(ops)`` (the order apply writes CIs in), ``relations_done``
    (relations it made with the CIs) and ``identified`` (creates that found a CI there already); apply
    reads them where they are, and a writer without them is written in one wave."""

    def write_many(self, ops: list[WriteOp]) -> list[WriteResult]: ...


def create_ci_op(table: str, fields: dict[str, str], identity_field: str) -> WriteOp:
    identity = fields.get(identity_field)
    if not identity:
        raise ValueError(f"table {table}: refusing to create a CI without {identity_field}")
    return WriteOp("POST", table, None, fields, {identity_field: identity})


def create_relation_op(parent: str, child: str, type_id: str) -> WriteOp:
    payload = {"parent": parent, "child": child, "type": type_id}
    return WriteOp("POST", REL_TABLE, None, payload, payload)


def create_key_value_op(ci: str, key: str, value: str) -> WriteOp:
    return WriteOp("POST", KV_TABLE, None, {"configuration_item": ci, "key": key, "value": value},
                   {"configuration_item": ci, "key": key})


class TableApiWriter:
    """Writes through the Table API, one request per write or through the Batch API.

    A create whose answer was lost is looked up, never re-sent blindly. With
    the Batch API, every item's status is checked and unserviced items are
    sent again; the results are the same as without it.
    """

    MAX_BATCH_ROUNDS = 5

    def __init__(self, tables: TableClient, batch_size: int = 0):
        self.tables = tables
        self.batch_size = batch_size

    def write_many(self, ops: list[WriteOp]) -> list[WriteResult]:
        if any(op.check_first for op in ops):  # those one by one, each looked up first
            rest = [i for i, op in enumerate(ops) if not op.check_first]
            results = dict(zip(rest, self.write_many([ops[i] for i in rest]))) if rest else {}
            results.update({i: self._guarded(op, check_first=True) for i, op in enumerate(ops) if op.check_first})
            return [results[i] for i in range(len(ops))]
        if self.batch_size > 1 and len(ops) > 1:
            return self._batch(ops)
        return [self._guarded(op) for op in ops]

    # -- one request per write -------------------------------------------------
    def _guarded(self, op: WriteOp, check_first: bool = False) -> WriteResult:
        try:
            return WriteResult(sys_id=self._one(op, check_first))
        except ServiceNowError as exc:
            return WriteResult(error=str(exc))

    def _one(self, op: WriteOp, check_first: bool = False) -> str | None:
        if op.method == "PATCH":
            self.tables.update(op.table, op.sys_id, op.payload)
            return op.sys_id
        if op.method == "DELETE":
            try:
                self.tables.delete(op.table, op.sys_id)
            except ServiceNowNotFound:
                pass  # already gone: the goal is met
            return op.sys_id
        if check_first:
            found = self._lookup(op, settle=op.check_first)  # not after a lost batch answer: ours, as sent
            if found:
                return found
        try:
            return self.tables.create(op.table, op.payload)["sys_id"]
        except AmbiguousWriteError as exc:
            log.warning("table %s: create answer lost (%s); checking before re-sending", op.table, exc.args[0])
            return self._lookup(op) or self.tables.create(op.table, op.payload)["sys_id"]

    def _lookup(self, op: WriteOp, settle: bool = False) -> str | None:
        """The record a create would make, if it is there already: its sys_id. With ``settle``, a record
        found (one the create did not make: a tag row of a CI that IRE identified) is given the create's
        values it lacks, its value for one."""
        query = "^".join(f"{k}={v}" for k, v in op.match.items())
        fields = list(dict.fromkeys(["sys_id", *op.match, *(op.payload if settle else ())]))
        for row in self.tables.query(op.table, query, fields):
            # Re-check in code: ServiceNow drops conditions it does not understand.
            if all(_ref(row.get(k)) == v for k, v in op.match.items()):
                stale = {k: v for k, v in op.payload.items() if k not in op.match and _ref(row.get(k)) != v}
                if settle and stale:
                    self.tables.update(op.table, row["sys_id"], stale)
                return row["sys_id"]
        return None

    # -- the Batch API ------------------------------------------------------------
    def _batch(self, ops: list[WriteOp]) -> list[WriteResult]:
        results: dict[int, WriteResult] = {}
        for start in range(0, len(ops), self.batch_size):
            chunk = dict(enumerate(ops[start : start + self.batch_size], start))
            results.update(self._batch_chunk(chunk))
        return [results[i] for i in range(len(ops))]

    def _batch_chunk(self, pending: dict[int, WriteOp]) -> dict[int, WriteResult]:
        results: dict[int, WriteResult] = {}
        for _round in range(self.MAX_BATCH_ROUNDS):
            try:
                answer = self.tables.batch([_rest_request(i, op) for i, op in pending.items()])
            except AmbiguousWriteError as exc:
                # Some items may have run: one by one now, creates looked up first.
                log.warning("batch answer lost (%s); finishing %d writes one by one", exc.args[0], len(pending))
                results.update({i: self._guarded(op, check_first=True) for i, op in pending.items()})
                return results
            except ServiceNowError as exc:
                results.update({i: WriteResult(error=str(exc)) for i in pending})
                return results
            items = _serviced(answer, pending)
            if items is None:  # an answer not the Batch API's: which items ran is not known
                log.warning("batch answer unreadable; finishing %d writes one by one", len(pending))
                results.update({i: self._guarded(op, check_first=True) for i, op in pending.items()})
                return results
            for index, item in items:
                op = pending.pop(index)
                result = _item_result(op, item)
                # a create answered without its sys_id may have been made: looked up before it is sent again
                results[index] = self._guarded(op, check_first=True) if result is None else result
            if not pending:
                return results
            log.info("batch: %d item(s) unserviced; sending them again", len(pending))
        results.update({i: WriteResult(error=f"not serviced after {self.MAX_BATCH_ROUNDS} batch requests")
                        for i in pending})
        return results


def _rest_request(index: int, op: WriteOp) -> dict[str, Any]:
    # Only the sys_id back: the rest of the record is what we just sent.
    url = f"/api/now/table/{op.table}" + (f"/{op.sys_id}" if op.sys_id else "") + "?sysparm_fields=sys_id"
    request: dict[str, Any] = {
        "id": str(index),
        "method": op.method,
        "url": url,
        "headers": [{"name": "Content-Type", "value": "application/json"},
                    {"name": "Accept", "value": "application/json"}],
        "exclude_response_headers": True,
    }
    if op.method != "DELETE":
        request["body"] = base64.b64encode(json.dumps(op.payload).encode()).decode()
    return request


def _serviced(answer: Any, pending: dict[int, WriteOp]) -> list[tuple[int, dict[str, Any]]] | None:
    """The serviced items of a Batch API answer, by the index of their write in ``pending``; None when the
    answer is not one (not an object, an item that is not, or that names no write sent)."""
    items = answer.get("serviced_requests", []) if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return None
    found = []
    for item in items:
        index = str(item.get("id")) if isinstance(item, dict) else ""
        if not index.isdigit() or int(index) not in pending:
            return None
        found.append((int(index), item))
    return found


def _item_result(op: WriteOp, item: dict[str, Any]) -> WriteResult | None:
    """One serviced item's result; None for a create answered without the sys_id it made (it may have
    been made: to be looked up)."""
    status = int(code) if str(code := item.get("status_code", 0)).isdigit() else 0
    try:
        body = json.loads(base64.b64decode(item.get("body") or b"") or b"{}")
    except (ValueError, TypeError):
        body = {}
    body = body if isinstance(body, dict) else {}
    if status in (200, 201) and isinstance(body.get("result"), dict):
        made = body["result"].get("sys_id")
        if op.method == "POST" and not (isinstance(made, str) and made):
            return None
        return WriteResult(sys_id=made if isinstance(made, str) and made else op.sys_id)
    if status == 204 or (status == 404 and op.method == "DELETE"):
        return WriteResult(sys_id=op.sys_id)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = error.get("message") or item.get("error_message") or item.get("status_text") or "failed"
    detail = f" | detail: {error['detail']}" if error.get("detail") else ""
    return WriteResult(error=f"ServiceNow: {message}{detail} | HTTP {status} | batch {op.method} {op.table}")
