"""check-access, the ServiceNow side: may the connector's user read everything a run reads?

The login first; then one read of one row of each table a run reads (each mapped class, the relations
and their types, the dictionary, our CIs in other classes through cmdb_ci, the tags when they are
managed, the tables the lookups read), and, with servicenow.writer = "ire", the IRE API asked an empty
question. Each says ok, denied (an ACL, a missing role), missing (the instance lacks the table: a
plugin not installed) or error. Writes are not tried: nothing is written to find out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..concurrency import map_in_order
from ..errors import (ServiceNowAuthError, ServiceNowBadRequest, ServiceNowError, ServiceNowNotFound,
                      ServiceNowPermissionError, did_you_mean)
from .cmdb import CI_TABLE, CLASS_TABLE, DICTIONARY_TABLE, KV_TABLE, REL_TABLE, REL_TYPE_TABLE, CmdbReader
from .ire import check_access as check_ire_access

OK, DENIED, MISSING, ERROR = "ok", "denied", "missing", "error"
IRE_API = "identifyreconcile"
HINTS = {
    DENIED: "grant the user read on it (the itil or cmdb_read role, or the ACLs of a custom role)",
    MISSING: "the instance lacks it (the plugin that brings the class is not installed): a run leaves the class as "
             "it is and exits 1, until the class exists or its mapping file is removed",
}


@dataclass(frozen=True)
class TableAccess:
    table: str
    need: str  # what a run reads it for
    status: str
    reason: str = ""
    read: bool = False  # a read of the table itself (the HINTS are for those)


def _status(exc: ServiceNowError) -> str:
    if isinstance(exc, (ServiceNowPermissionError, ServiceNowAuthError)):
        return DENIED
    if isinstance(exc, (ServiceNowBadRequest, ServiceNowNotFound)):
        return MISSING if "invalid table" in str(exc).lower() or isinstance(exc, ServiceNowNotFound) else ERROR
    return ERROR


def needs_of(classes: Iterable[str], tags: bool, lookup_tables: Iterable[str]) -> list[tuple[str, str]]:
    """(table, what a run reads it for), in the order they are checked."""
    needs = [(table, "its CIs") for table in sorted(set(classes))]
    needs += [(REL_TABLE, "the relations between our CIs"), (REL_TYPE_TABLE, "the relation types"),
              (CI_TABLE, "our CIs in classes no mapping covers"),
              (CLASS_TABLE, "the classes' parents, for their fields"),
              (DICTIONARY_TABLE, "the fields' lengths, and which fields a class has")]
    if tags:
        needs.append((KV_TABLE, "the tags (reconcile.tags)"))
    needs += [(table, "the records the lookups name") for table in sorted(set(lookup_tables))]
    return needs


def check_servicenow(reader: CmdbReader, needs: list[tuple[str, str]], relation_types: set[str], ire: bool,
                     written: dict[str, set[str]] | None = None) -> list[TableAccess]:
    """The login, then each need, each relation type, the fields ``written`` (table -> the fields a run
    writes or looks up in it: do the classes have them?), and the IRE API when ``ire``."""
    try:
        reader.check_login(needs[0][0] if needs else CI_TABLE)
    except ServiceNowError as exc:
        return [TableAccess("(login)", "the user's login", _status(exc), str(exc))]
    rows = [TableAccess("(login)", "the user's login", OK, "logged in")]

    def probe(need: tuple[str, str]) -> TableAccess:
        table, why = need
        try:
            total = reader.tables.count(table, "")
        except ServiceNowError as exc:
            return TableAccess(table, why, _status(exc), str(exc), read=True)
        return TableAccess(table, why, OK, "readable" if total is None else f"readable, {total} row(s)", read=True)

    rows += map_in_order(probe, needs, reader.workers, "check")
    if relation_types and all(row.status == OK for row in rows if row.table == REL_TYPE_TABLE):
        rows.append(_relation_types(reader, relation_types))
    if written and all(row.status == OK for row in rows if row.table in (CLASS_TABLE, DICTIONARY_TABLE)):
        rows += _fields(reader, written)
    if ire:
        try:
            check_ire_access(reader.tables, reader.discovery_source)
            rows.append(TableAccess(IRE_API, 'the IRE API (servicenow.writer = "ire")', OK, "may be used"))
        except ServiceNowError as exc:
            rows.append(TableAccess(IRE_API, 'the IRE API (servicenow.writer = "ire")', _status(exc), str(exc)))
    return rows


def _relation_types(reader: CmdbReader, names: set[str]) -> TableAccess:
    """Are the relation types the mappings name all in cmdb_rel_type? (A missing one is left unmanaged.)"""
    need = "the relation types the mappings name"
    try:
        found = reader.relation_types(names)
    except ServiceNowError as exc:
        return TableAccess(REL_TYPE_TABLE, need, _status(exc), str(exc))
    missing = sorted(names - set(found))
    if missing:
        try:  # the nearest the instance has, for a misspelled descriptor
            known = reader.relation_type_names()
        except ServiceNowError:
            known = []
        return TableAccess(REL_TYPE_TABLE, need, MISSING, "not in cmdb_rel_type: " + ", ".join(
            name + did_you_mean(name, known) for name in missing) + " (those relations would be left unmanaged)")
    return TableAccess(REL_TYPE_TABLE, need, OK, f"all {len(names)} found")


def _fields(reader: CmdbReader, written: dict[str, set[str]]) -> list[TableAccess]:
    """One row per table with fields its class lacks (a run leaves them unwritten, with a warning), or one
    row saying that every field is there."""
    need = "the fields the mappings write or look up"
    try:
        missing = reader.dictionary(written).missing
    except ServiceNowError as exc:
        return [TableAccess(DICTIONARY_TABLE, need, _status(exc), str(exc))]
    rows = [TableAccess(table, need, MISSING, f"no field {', '.join(sorted(names))} on this instance (sys_dictionary): "
                        "a misspelled name in the mapping, or a field to add to the class")
            for table, names in sorted(missing.items()) if names]
    return rows or [TableAccess(DICTIONARY_TABLE, need, OK,
                                f"all {sum(len(names) for names in written.values())} found")]


def render_servicenow(rows: list[TableAccess], where: str) -> str:
    headers = ("TABLE", "STATUS", "NEEDED FOR", "REASON")
    cells = [(r.table, r.status, r.need, r.reason) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])
    lines = [f"servicenow: {where}", "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, cell in zip(rows, cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip())
        hint = HINTS.get(row.status) if row.read else None
        if hint:
            lines.append(f"    hint: {hint}")
    failed = sum(r.status != OK for r in rows)
    lines.append(f"{len(rows)} check(s): {len(rows) - failed} ok, {failed} failed. Writes are not tried (nothing is "
                 "written to find out): the user also needs to create and update the mapped classes, "
                 "cmdb_rel_ci, and cmdb_key_value with reconcile.tags.")
    return "\n".join(lines)
