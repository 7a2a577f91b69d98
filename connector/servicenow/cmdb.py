"""CMDB reads and writes in CMDB terms: CIs, relation types, relations.

The rest of the connector talks to this module, never to pysnow. The writer
is an interface (``CmdbWriter``) so that an IRE writer can be added beside the
Table API one.
"""

from __future__ import annotations

import logging
from typing import Iterable, Protocol

from ..errors import AmbiguousWriteError, ServiceNowError
from ..models import ExistingCI, ExistingRelation
from .client import TableClient

log = logging.getLogger(__name__)

REL_TABLE = "cmdb_rel_ci"
REL_TYPE_TABLE = "cmdb_rel_type"
# Fields every CI read carries, whatever the mapping uses.
BASE_FIELDS = ("sys_id", "sys_class_name", "discovery_source", "correlation_id", "object_id",
               "install_status", "operational_status")
IN_CHUNK = 100


def _chunks(values: list[str], size: int = IN_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _ref(value) -> str:
    """A reference value as a plain sys_id, whether or not it came as a link object."""
    if isinstance(value, dict):
        return str(value.get("value", ""))
    return str(value or "")


class CmdbReader:
    def __init__(self, tables: TableClient, discovery_source: str):
        self.tables = tables
        self.discovery_source = discovery_source

    def _cis(self, table: str, query: str, fields: Iterable[str]) -> list[ExistingCI]:
        wanted = sorted(set(BASE_FIELDS) | set(fields))
        return [
            ExistingCI(table, row["sys_id"], {k: _ref(v) if isinstance(v, dict) else str(v) for k, v in row.items()})
            for row in self.tables.query(table, query, wanted)
        ]

    def owned_cis(self, table: str, fields: Iterable[str]) -> list[ExistingCI]:
        """One paged query for the table's CIs stamped with our discovery_source."""
        return self._cis(table, f"discovery_source={self.discovery_source}^sys_class_name={table}", fields)

    def cis_where_in(self, table: str, field: str, values: list[str], fields: Iterable[str], extra: str = "") -> list[ExistingCI]:
        """CIs whose ``field`` is one of ``values`` (for adoption), in chunks."""
        found: list[ExistingCI] = []
        for chunk in _chunks(sorted(set(values))):
            found.extend(self._cis(table, f"{field}IN{','.join(chunk)}^sys_class_name={table}{extra}", fields))
        return found

    def relation_types(self, names: Iterable[str]) -> dict[str, str]:
        names = sorted(set(names))
        if not names:
            return {}
        rows = self.tables.query(REL_TYPE_TABLE, f"nameIN{','.join(names)}", ["sys_id", "name"])
        # Re-check in code: a dropped condition would return every type.
        return {row["name"]: row["sys_id"] for row in rows if row.get("name") in names}

    def relations(self, type_ids: Iterable[str]) -> list[ExistingRelation]:
        """Relations of the managed types whose parent is one of our CIs."""
        type_ids = sorted(set(type_ids))
        if not type_ids:
            return []
        query = f"parent.discovery_source={self.discovery_source}^typeIN{','.join(type_ids)}"
        return [
            ExistingRelation(row["sys_id"], _ref(row.get("parent")), _ref(row.get("child")), _ref(row.get("type")))
            for row in self.tables.query(REL_TABLE, query, ["sys_id", "parent", "child", "type"])
        ]


class CmdbWriter(Protocol):
    def create_ci(self, table: str, fields: dict[str, str], identity_field: str) -> str: ...
    def update_ci(self, table: str, sys_id: str, fields: dict[str, str]) -> None: ...
    def create_relation(self, parent: str, child: str, type_id: str) -> str: ...
    def delete_relation(self, sys_id: str) -> None: ...


class TableApiWriter:
    """Writes through the Table API. A lost create is looked up, never re-sent blindly."""

    def __init__(self, tables: TableClient):
        self.tables = tables

    def _create(self, table: str, payload: dict[str, str], match: dict[str, str]) -> str:
        try:
            return self.tables.create(table, payload)["sys_id"]
        except AmbiguousWriteError as exc:
            log.warning("table %s: create answer lost (%s); checking before re-sending", table, exc.args[0])
            query = "^".join(f"{k}={v}" for k, v in match.items())
            for row in self.tables.query(table, query, ["sys_id", *match]):
                # Re-check in code: ServiceNow drops conditions it does not understand.
                if all(_ref(row.get(k)) == v for k, v in match.items()):
                    return row["sys_id"]
            return self.tables.create(table, payload)["sys_id"]

    def create_ci(self, table: str, fields: dict[str, str], identity_field: str) -> str:
        identity = fields.get(identity_field)
        if not identity:
            raise ServiceNowError(f"table {table}: refusing to create a CI without {identity_field}")
        return self._create(table, fields, {identity_field: identity})

    def update_ci(self, table: str, sys_id: str, fields: dict[str, str]) -> None:
        self.tables.update(table, sys_id, fields)

    def create_relation(self, parent: str, child: str, type_id: str) -> str:
        payload = {"parent": parent, "child": child, "type": type_id}
        return self._create(REL_TABLE, payload, payload)

    def delete_relation(self, sys_id: str) -> None:
        self.tables.delete(REL_TABLE, sys_id)
