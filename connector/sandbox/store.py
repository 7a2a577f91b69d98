"""The stand-in's records: every table, class inheritance, optional SQLite."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError
from .schema import (
    REL_TYPES, SCHEMA_TABLES, STRING_LENGTHS, SYS_FIELDS, TABLES, defining_table, descendants, field_type,
    fields_of, references_of,
)

DEFAULT_STRING_LENGTH = 255
_IDS = uuid.UUID("6c1d4ab0-5f2e-4f43-9a53-3b1f0c2d7e11")  # namespace of the dictionary's sys_ids


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


def _schema_id(*parts: str) -> str:
    return uuid.uuid5(_IDS, ":".join(parts)).hex


class Store:
    """Every record, by class; queries on a table see its child classes too.

    String fields hold at most their ``max_length`` characters: a longer value
    is cut, silently, as a real instance does. ``sys_db_object`` and
    ``sys_dictionary`` describe the classes and their fields (read-only).

    With ``db_path``, every write goes through to SQLite and a new store on
    the same file starts with what the last one held, so a sandbox that runs
    on a schedule keeps its CMDB between runs.
    """

    def __init__(self, db_path: str | Path | None = None) -> None:
        self.lock = threading.RLock()
        self.by_class: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TABLES}
        self.class_of: dict[str, str] = {}
        self.version = 0
        # (table that defines the field, field) -> max_length of a string field, where not 255
        self.lengths: dict[tuple[str, str], int] = dict(STRING_LENGTHS)
        self._limits: dict[str, dict[str, int]] = {}  # class -> {string field: max_length}
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            try:
                self._db = sqlite3.connect(str(db_path), check_same_thread=False)
                self._db.execute("CREATE TABLE IF NOT EXISTS records (sys_id TEXT PRIMARY KEY, class TEXT, data TEXT)")
                rows = self._db.execute("SELECT sys_id, class, data FROM records").fetchall()
            except sqlite3.Error as exc:  # --db names a file that is no stand-in database, or cannot be made
                raise UsageError(f"{db_path}: cannot keep the stand-in's CMDB there ({exc}); remove the file or "
                                 "choose another --db") from None
            for sys_id, cls, data in rows:
                self.by_class.setdefault(cls, {})[sys_id] = json.loads(data)
                self.class_of[sys_id] = cls
        if not self.by_class["cmdb_rel_type"]:
            for name in REL_TYPES:
                parent, child = name.split("::")
                self.insert("cmdb_rel_type", {"name": name, "parent_descriptor": parent, "child_descriptor": child}, "system")

    def set_length(self, table: str, field: str, max_length: int) -> None:
        """Change a string field's max_length, as an admin would in the dictionary."""
        with self.lock:
            self.lengths[(table, field)] = max_length
            self._limits.clear()
            self.version += 1

    def _limits_of(self, table: str) -> dict[str, int]:
        limits = self._limits.get(table)
        if limits is None:
            limits = self._limits[table] = {
                name: self.lengths.get((defining_table(table, name) or table, name), DEFAULT_STRING_LENGTH)
                for name in fields_of(table) if field_type(name) == "string"}
        return limits

    def _fit(self, table: str, values: dict[str, Any]) -> dict[str, str]:
        """Writable values as the instance stores them: strings, cut to their field's length."""
        known, limits = fields_of(table), self._limits_of(table)
        out = {k: _string(v) for k, v in values.items() if k in known and not k.startswith("sys_")}
        for name, value in out.items():
            if len(value) > limits.get(name, len(value)):
                out[name] = value[: limits[name]]
        return out

    def _schema_rows(self, table: str) -> list[dict[str, str]]:
        blank = dict.fromkeys(SYS_FIELDS, "")
        if table == "sys_db_object":
            return [{**blank, "sys_id": _schema_id("table", name), "sys_class_name": table, "name": name, "label": name,
                     "super_class": _schema_id("table", parent) if parent else ""}
                    for name, (parent, _own) in TABLES.items()]
        rows = []
        for name, (parent, own) in TABLES.items():
            for element in (*own, *(SYS_FIELDS if parent is None else ())):
                kind = field_type(element)
                length = self.lengths.get((name, element), DEFAULT_STRING_LENGTH) if kind == "string" else 40
                rows.append({**blank, "sys_id": _schema_id("field", name, element), "sys_class_name": table,
                             "name": name, "element": element, "internal_type": kind, "max_length": str(length)})
        return rows

    def _persist(self, record: dict[str, str] | None, sys_id: str) -> None:
        self.version += 1  # called on every change: cached query results are stale
        if self._db is None:
            return
        if record is None:
            self._db.execute("DELETE FROM records WHERE sys_id = ?", (sys_id,))
        else:
            self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)",
                             (sys_id, record["sys_class_name"], json.dumps(record)))
        self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            with self.lock:
                self._db.close()
                self._db = None

    def insert(self, table: str, values: dict[str, Any], user: str, sys_id: str | None = None) -> dict[str, str]:
        """A new record; ``sys_id`` as given (ServiceNow lets an insert set it), else a new one."""
        now = _now()
        sys_id = sys_id or uuid.uuid4().hex
        record = {f: "" for f in fields_of(table)}
        with self.lock:
            record.update(self._fit(table, values))
            record.update(sys_id=sys_id, sys_class_name=table, sys_created_on=now, sys_updated_on=now,
                          sys_created_by=user, sys_updated_by=user, sys_mod_count="0")
            self.by_class[table][sys_id] = record
            self.class_of[sys_id] = table
            self._persist(record, sys_id)
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
            changes = self._fit(record["sys_class_name"], values)
            if any(record.get(k) != v for k, v in changes.items()):
                record.update(changes)
                record["sys_updated_on"] = _now()
                record["sys_updated_by"] = user
                record["sys_mod_count"] = str(int(record["sys_mod_count"]) + 1)
                self._persist(record, sys_id)
            return record

    def delete(self, table: str, sys_id: str) -> bool:
        with self.lock:
            record = self.get(table, sys_id)
            if record is None:
                return False
            del self.by_class[record["sys_class_name"]][sys_id]
            del self.class_of[sys_id]
            self._persist(None, sys_id)
            return True

    def rows(self, table: str) -> list[dict[str, str]]:
        with self.lock:
            if table in SCHEMA_TABLES:
                return self._schema_rows(table)
            out: list[dict[str, str]] = []
            for cls in sorted(descendants(table)):
                out.extend(self.by_class[cls].values())
            return out

    def walker(self, field: str) -> Callable[[dict[str, str]], str | None]:
        """A function of a row: ``field``'s value, following dot-walks through reference fields
        (``parent.discovery_source``); None where a field on the way is unknown, "" where the
        reference is empty or points at nothing. Made once per query: what depends only on the
        row's class is looked up once per class, not once per row."""
        head, _, rest = field.partition(".")
        if not rest:
            return lambda row: row.get(head)
        inner = self.walker(rest)
        last = field.rsplit(".", 1)[1]
        # row class -> (the classes the reference may point at, the value of an empty or dangling one),
        # or None where the class has no such reference field
        targets: dict[str, tuple[frozenset[str], str | None] | None] = {}
        class_of, by_class = self.class_of, self.by_class

        def walk(row: dict[str, str]) -> str | None:
            cls = row["sys_class_name"]
            if cls not in targets:
                table = references_of(cls).get(head)
                targets[cls] = None if table is None else (descendants(table), "" if last in fields_of(table) else None)
            target = targets[cls]
            if target is None:
                return None  # not a reference field of this class
            ref = row.get(head, "")
            target_class = class_of.get(ref)
            record = by_class[target_class].get(ref) if target_class in target[0] else None
            return target[1] if record is None else inner(record)

        return walk

    def dump(self) -> dict[str, dict[str, dict[str, str]]]:
        with self.lock:
            return json.loads(json.dumps(self.by_class))
