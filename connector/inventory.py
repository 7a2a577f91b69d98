"""The inventory file: JSON Lines of scopes, resources and accounts, and one line of the ids of every
account the configuration targets, in any shard (``targeted_accounts``).

An inventory collected in one network zone can be reconciled from another.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import orjson

from .errors import InventoryError
from .models import SCOPE_STATUSES, Account, Inventory, Record, Scope
from .settings import ACCOUNT_ID


class InventoryWriter:
    """An inventory file written as it is collected: each unit's resources as soon as the unit is in
    (``resources``, a collect's sink), then the accounts, the scopes and the accounts targeted
    (``finish``). It is written beside ``path`` and put in its place once whole: a collect stopped or
    failed midway leaves the file as it was (``abort``, which leaving the ``with`` block unfinished
    does), never one with resources and no scopes."""

    def __init__(self, path: Path):
        self.path = path
        self.written = 0  # resources
        self._done = False
        if path.is_dir():  # told now, not once the collection is done
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own, as write_text_atomic's: two collects into one path never share a partial file
        fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        self._partial = Path(partial)
        self._out = os.fdopen(fd, "w", encoding="utf-8")

    def resources(self, records: list[Record]) -> None:
        self._out.writelines(json.dumps({"kind": "resource", "account_id": r.account_id, "region": r.region,
                                         "source": r.source, "resource": r.resource}, default=str) + "\n"
                             for r in records)
        self.written += len(records)

    def finish(self, inventory: Inventory) -> None:
        out = self._out
        for a in inventory.accounts:
            out.write(json.dumps({"kind": "account", "account_id": a.account_id, "name": a.name,
                                  "status": a.status, "error": a.error, "raw": a.raw}, default=str) + "\n")
        for s in inventory.scopes:
            out.write(json.dumps({"kind": "scope", "account_id": s.account_id, "region": s.region,
                                  "source": s.source, "status": s.status, "error": s.error}) + "\n")
        if inventory.targeted is not None:
            out.write(json.dumps({"kind": "targeted_accounts", "account_ids": sorted(inventory.targeted)}) + "\n")
        out.close()
        os.replace(self._partial, self.path)
        self._done = True

    def abort(self) -> None:
        self._out.close()
        self._partial.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> "InventoryWriter":
        return self

    def __exit__(self, *_exc) -> None:
        if not self._done:  # an error, a stop: the file stays as it was
            self.abort()


def write_inventory(inventory: Inventory, path: Path) -> None:
    """The whole inventory to ``path`` (``InventoryWriter``)."""
    with InventoryWriter(path) as writer:
        writer.resources(inventory.records)
        writer.finish(inventory)


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a text", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


# resources handed to read_inventory's sink at a time
SINK_BATCH = 1000


def _account_id(value: object) -> str:
    if not isinstance(value, str) or not ACCOUNT_ID.match(value):
        raise ValueError(f"account_id {value!r} is not an account id (12 digits, as a text)")
    return value


def _where(row: dict, known: set[tuple[str, str, str]]) -> tuple[str, str, str]:
    """A line's account, region and source, checked: an account id of 12 digits, a region and a source
    named by texts. ``known`` holds the ones already checked (each is checked once, not on every line)."""
    account, region, source = row["account_id"], row["region"], row["source"]
    where = (account, region, source)
    if type(account) is str and type(region) is str and type(source) is str and where in known:
        return where
    _account_id(account)
    for key, value in (("region", region), ("source", source)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} {value!r} is not a {key} name (a text)")
    known.add(where)
    return where


def read_inventory(path: Path, sink: Callable[[list[Record]], None] | None = None) -> Inventory:
    """The inventory of a file (any order of lines). With ``sink``, the resources go to it, a batch at a
    time in the file's order, and the inventory holds none: a run maps them as they are read, and never
    holds every raw item at once. A line that is not right fails the read, naming it."""
    inventory = Inventory()
    batch = inventory.records
    known: set[tuple[str, str, str]] = set()
    try:
        handle = path.open("rb")  # orjson checks the UTF-8 of each line itself
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a byte order mark, as an editor on Windows saves UTF-8
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"not a JSON object but {type(row).__name__}")
                kind = row["kind"]
                if kind == "scope":
                    if row["status"] not in SCOPE_STATUSES:
                        raise ValueError(f"unknown status {row['status']!r}")
                    error = row.get("error")
                    if error is not None and not isinstance(error, str):
                        raise ValueError(f"error is not a text but {_json_type(error)}")
                    inventory.scopes.append(Scope(*_where(row, known), row["status"], error))
                elif kind == "resource":
                    where, resource = _where(row, known), row["resource"]
                    if type(resource) is not dict:
                        raise ValueError(f"resource is not a JSON object but {_json_type(resource)}")
                    batch.append(Record(*where, resource))
                    if sink is not None and len(batch) >= SINK_BATCH:
                        sink(batch)
                        batch = inventory.records = []
                elif kind == "account":
                    account, raw = _account_id(row["account_id"]), row.get("raw") or {}
                    if type(raw) is not dict:
                        raise ValueError(f"raw is not a JSON object but {_json_type(raw)}")
                    for key in ("name", "error"):
                        if row.get(key) is not None and not isinstance(row[key], str):
                            raise ValueError(f"{key} is not a text but {_json_type(row[key])}")
                    if row.get("status", "ok") not in SCOPE_STATUSES:
                        raise ValueError(f"unknown status {row['status']!r}")
                    inventory.accounts.append(Account(account, row.get("name") or account,
                                                      row.get("status", "ok"), row.get("error"), raw))
                elif kind == "targeted_accounts":
                    ids = row["account_ids"]
                    if not isinstance(ids, list) or not all(isinstance(i, str) and ACCOUNT_ID.match(i) for i in ids):
                        raise ValueError("account_ids is not a list of account ids")
                    inventory.targeted = frozenset(ids)
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except KeyError as exc:
                raise InventoryError(f"{path}: line {number}: no {exc.args[0]!r} in this line") from None
            except (ValueError, TypeError) as exc:
                reason = "not UTF-8 text: save the file as UTF-8" if "UTF-8" in str(exc) else str(exc)
                raise InventoryError(f"{path}: line {number}: {reason}") from None
    if sink is not None:
        if batch:
            sink(batch)
        inventory.records = []
    if not inventory.accounts:
        # An inventory written by another tool may list only scopes.
        seen = dict.fromkeys(s.account_id for s in inventory.scopes)
        inventory.accounts = [Account(a, a) for a in seen]
    return inventory
