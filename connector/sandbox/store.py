"""The stand-in's records: every table, class inheritance, optional SQLite."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .schema import REL_TYPES, TABLES, descendants, fields_of, references_of


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


class Store:
    """Every record, by class; queries on a table see its child classes too.

    With ``db_path``, every write goes through to SQLite and a new store on
    the same file starts with what the last one held, so a sandbox that runs
    on a schedule keeps its CMDB between runs.
    """

    def __init__(self, db_path: str | Path | None = None) -> None:
        self.lock = threading.RLock()
        self.by_class: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TABLES}
        self.class_of: dict[str, str] = {}
        self.version = 0
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            self._db = sqlite3.connect(str(db_path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS records (sys_id TEXT PRIMARY KEY, class TEXT, data TEXT)")
            for sys_id, cls, data in self._db.execute("SELECT sys_id, class, data FROM records"):
                self.by_class.setdefault(cls, {})[sys_id] = json.loads(data)
                self.class_of[sys_id] = cls
        if not self.by_class["cmdb_rel_type"]:
            for name in REL_TYPES:
                parent, child = name.split("::")
                self.insert("cmdb_rel_type", {"name": name, "parent_descriptor": parent, "child_descriptor": child}, "system")

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
            known = fields_of(record["sys_class_name"])
            changes = {k: _string(v) for k, v in values.items() if k in known and not k.startswith("sys_")}
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
