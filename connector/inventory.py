"""The inventory file: JSON Lines of scopes, resources and accounts, and one line of the ids of every
account the configuration targets, in any shard (``targeted_accounts``).

An inventory collected in one network zone can be reconciled from another.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from .errors import InventoryError
from .models import SCOPE_STATUSES, Account, Inventory, Record, Scope


def write_inventory(inventory: Inventory, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for a in inventory.accounts:
            out.write(json.dumps({"kind": "account", "account_id": a.account_id, "name": a.name,
                                  "status": a.status, "error": a.error, "raw": a.raw}, default=str) + "\n")
        for s in inventory.scopes:
            out.write(json.dumps({"kind": "scope", "account_id": s.account_id, "region": s.region,
                                  "source": s.source, "status": s.status, "error": s.error}) + "\n")
        for r in inventory.records:
            out.write(json.dumps({"kind": "resource", "account_id": r.account_id, "region": r.region,
                                  "source": r.source, "resource": r.resource}, default=str) + "\n")
        if inventory.targeted is not None:
            out.write(json.dumps({"kind": "targeted_accounts", "account_ids": sorted(inventory.targeted)}) + "\n")


def read_inventory(path: Path) -> Inventory:
    inventory = Inventory()
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
                    inventory.scopes.append(Scope(row["account_id"], row["region"], row["source"], row["status"], row.get("error")))
                elif kind == "resource":
                    inventory.records.append(Record(row["account_id"], row["region"], row["source"], row["resource"]))
                elif kind == "account":
                    inventory.accounts.append(Account(row["account_id"], row.get("name") or row["account_id"],
                                                      row.get("status", "ok"), row.get("error"), row.get("raw") or {}))
                elif kind == "targeted_accounts":
                    ids = row["account_ids"]
                    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                        raise ValueError("account_ids is not a list of account ids")
                    inventory.targeted = frozenset(ids)
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except KeyError as exc:
                raise InventoryError(f"{path}: line {number}: no {exc.args[0]!r} in this line") from None
            except (ValueError, TypeError) as exc:
                reason = "not UTF-8 text: save the file as UTF-8" if "UTF-8" in str(exc) else str(exc)
                raise InventoryError(f"{path}: line {number}: {reason}") from None
    if not inventory.accounts:
        # An inventory written by another tool may list only scopes.
        seen = dict.fromkeys(s.account_id for s in inventory.scopes)
        inventory.accounts = [Account(a, a) for a in seen]
    return inventory
