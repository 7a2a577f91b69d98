"""The stand-in's Identification and Reconciliation API: ``POST /api/now/identifyreconcile``.

As SERVICENOW.md has it for the AWS classes:

- an account (``cmdb_ci_cloud_service_account``) is identified by ``account_id``;
- a datacenter by ``object_id`` and ``region``, and it depends on its account
  through "Hosted on::Hosts" (the datacenter is the parent);
- an availability zone by ``object_id``, contained by its datacenter
  ("Contains::Contained by", the datacenter is the parent);
- the Organization (``cmdb_ci_cloud_org``) and an OU (``cmdb_ci_aws_org_unit``)
  by ``object_id``, on their own (SERVICENOW.md does not say: an assumption);
- any other CI by ``object_id``, and it depends on its datacenter through
  "Hosted on::Hosts".

A dependent item must come with that relation, to another item of the
payload, or IRE refuses it (``MISSING_DEPENDENCY``). An item is identified by
its ``sys_object_source_info`` first (source name and native key, in
``sys_object_source``), then by its rule: among the class's CIs (and its
child classes') with those values, the one related so to the CI its host item
was identified as. Two such CIs are ``MULTI_MATCH``, an error. Then INSERT,
UPDATE or NO_CHANGE; the payload's relations are created where missing. On an
update, a field that a reconciliation rule (the ``ire_authoritative`` fault)
gives to another data source is left as it is, without a word, as IRE does.

A payload with an error in any item commits nothing (IRE without Enhanced
IRE's partial commits): every item answers with its errors, or with the
operation it would have had, and ``/identifyreconcile/query`` answers the
same, committing nothing in any case.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .schema import TABLES, ancestors, descendants
from .store import Store

HOSTED_ON = "Hosted on::Hosts"
CONTAINS = "Contains::Contained by"
SOURCE_TABLE = "sys_object_source"


@dataclass(frozen=True)
class Rule:
    name: str
    attributes: tuple[str, ...]
    # (relation type, the class of the other end, the item's end: "parent" or "child"), or None: independent
    depends_on: tuple[str, str, str] | None


ACCOUNT_RULE = Rule("Cloud Service Account", ("account_id",), None)
DATACENTER_RULE = Rule("Logical Datacenter", ("object_id", "region"),
                       (HOSTED_ON, "cmdb_ci_cloud_service_account", "parent"))
ZONE_RULE = Rule("Availability Zone", ("object_id",), (CONTAINS, "cmdb_ci_logical_datacenter", "child"))
CLOUD_RULE = Rule("Cloud Resource", ("object_id",), (HOSTED_ON, "cmdb_ci_logical_datacenter", "parent"))
ORGANIZATION_RULE = Rule("Cloud Organization", ("object_id",), None)


def rule_for(table: str) -> Rule:
    line = ancestors(table)
    if "cmdb_ci_cloud_service_account" in line:
        return ACCOUNT_RULE
    if "cmdb_ci_logical_datacenter" in line:
        return DATACENTER_RULE
    if "cmdb_ci_availability_zone" in line:
        return ZONE_RULE
    if "cmdb_ci_cloud_org" in line or "cmdb_ci_aws_org_unit" in line:
        return ORGANIZATION_RULE
    return CLOUD_RULE


def _error(kind: str, message: str) -> dict[str, str]:
    return {"error": kind, "message": message}


class IdentifyReconcile:
    def __init__(self, store: Store, faults: Any = None):
        self.store = store
        self.faults = faults  # Faults.ire_authoritative: the reconciliation rules
        # Lookups kept from payload to payload while nothing else writes (the store's version says): by
        # source key, by relation, and by a rule's attributes for a class; so that a run of thousands of
        # payloads is not one scan of the CMDB per item.
        self._version = -1
        self._sources: dict[tuple[str, str], dict[str, str]] = {}
        self._relations: dict[tuple[str, str, str], str] = {}  # (parent, child, type) -> the relation's sys_id
        self._by_attributes: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], list[dict[str, str]]]] = {}

    def _fresh(self) -> None:
        if self._version != self.store.version:
            self._sources = {(row["name"], row["id"]): row for row in self.store.rows(SOURCE_TABLE)}
            self._relations = {(r["parent"], r["child"], r["type"]): r["sys_id"] for r in self.store.rows("cmdb_rel_ci")}
            self._by_attributes = {}
            self._version = self.store.version

    def _candidates(self, table: str, attributes: tuple[str, ...], values: dict[str, str]) -> list[dict[str, str]]:
        """The CIs of ``table`` (and its child classes) with those ``values`` of ``attributes``."""
        index = self._by_attributes.get((table, attributes))
        if index is None:
            index = {}
            for row in self.store.rows(table):
                index.setdefault(tuple(row.get(a, "") for a in attributes), []).append(row)
            self._by_attributes[(table, attributes)] = index
        return list(index.get(tuple(values.get(a, "") for a in attributes), ()))

    def _added(self, record: dict[str, str]) -> None:
        """A CI this payload inserted, into the lookups made so far."""
        line = ancestors(record["sys_class_name"])
        for (table, attributes), index in self._by_attributes.items():
            if table in line:
                index.setdefault(tuple(record.get(a, "") for a in attributes), []).append(record)

    def _reconciled(self, table: str, values: dict[str, str], data_source: str) -> dict[str, str]:
        """``values`` less those of fields that a reconciliation rule gives to another source (a rule on
        the class or on one of its ancestors)."""
        rules = getattr(self.faults, "ire_authoritative", None) or {}
        if not rules:
            return values
        line = ancestors(table)
        return {k: v for k, v in values.items() if all(rules.get(f"{c}.{k}", data_source) == data_source for c in line)}

    def handle(self, body: bytes, data_source: str, user: str, commit: bool) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer). Status 400 only for a body that is no payload at all."""
        try:
            payload = json.loads(body or b"{}")
            items = payload["items"]
            relations = payload.get("relations") or []
            if not isinstance(items, list) or not isinstance(relations, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return 400, {"error": {"message": "Invalid payload", "detail": "The payload needs an items array."},
                         "status": "failure"}
        with self.store.lock:  # one payload at a time: two payloads naming one new CI make one CI
            return 200, {"result": self._run(items, relations, data_source, user, commit)}

    # -- one payload ------------------------------------------------------------
    def _run(self, items: list, relations: list, data_source: str, user: str, commit: bool) -> dict[str, Any]:
        answers = [{"className": item.get("className", "") if isinstance(item, dict) else "", "operation": "",
                    "sysId": "Unknown", "identifierEntrySysId": "Unknown", "identificationAttempts": [],
                    "inputIndices": [index], "errors": [], "warnings": [], "markers": []}
                   for index, item in enumerate(items)]
        rel_types = {row["name"]: row["sys_id"] for row in self.store.rows("cmdb_rel_type")}
        self._fresh()  # the store is locked meanwhile
        self._rel_types = rel_types
        self._data_source = data_source
        # index -> (insert?, the values to write), as _identify decided them: what _commit writes
        self._writes: dict[int, tuple[bool, dict[str, str]]] = {}
        links = self._links(items, relations, rel_types, answers)
        if not data_source:
            for answer in answers:
                answer["errors"].append(_error("INVALID_INPUT_DATA", "No data source given (sysparm_data_source)"))
        for index, item in enumerate(items):
            if not answers[index]["errors"]:
                self._check_item(index, item, items, links, answers)
        # identify in dependency order: an item once the item it depends on is identified
        pending = [i for i, a in enumerate(answers) if not a["errors"]]
        while pending:
            progressed = False
            for index in list(pending):
                rule = rule_for(items[index]["className"])
                host = self._host(index, rule, links, items)
                if host is not None and answers[host]["sysId"] == "Unknown" and not answers[host]["errors"] \
                        and host in pending:
                    continue  # its host first
                pending.remove(index)
                progressed = True
                self._identify(index, items[index], rule, host, answers)
            if not progressed:  # a loop of dependencies
                for index in pending:
                    answers[index]["errors"].append(_error("INVALID_INPUT_DATA", "Circular dependency in payload"))
                break
        failed = any(a["errors"] for a in answers)
        if failed:
            for answer in answers:
                if not answer["errors"]:
                    answer["warnings"].append(_error("ABANDONED", "Not committed: other items of the payload "
                                                                  "have errors"))
        out_relations: list[dict[str, Any]] = []
        if commit and not failed:
            self._commit(items, answers, data_source, user)
            out_relations = self._commit_relations(relations, rel_types, answers, user)
            if self._version != -1:
                self._version = self.store.version  # the lookups were kept current: still good
        for answer in answers:
            answer["errorCount"] = len(answer["errors"])
        return {"items": answers, "relations": out_relations, "additionalCommittedItems": [],
                "additionalCommittedRelations": []}

    def _links(self, items: list, relations: list, rel_types: dict[str, str], answers: list) -> list[tuple[int, int, str]]:
        """The payload's relations as (parent index, child index, type), those that are no relation named."""
        links = []
        for relation in relations:
            parent, child, kind = (relation.get(k) if isinstance(relation, dict) else None
                                   for k in ("parent", "child", "type"))
            ends_ok = all(isinstance(end, int) and 0 <= end < len(items) for end in (parent, child))
            if not ends_ok or kind not in rel_types:
                for end in (parent, child):
                    if isinstance(end, int) and 0 <= end < len(items):
                        answers[end]["errors"].append(_error("INVALID_INPUT_DATA", (
                            f"Relation type {kind!r} is not in cmdb_rel_type" if ends_ok
                            else f"Relation {relation!r} does not name two items of the payload")))
                continue
            links.append((parent, child, kind))
        return links

    def _check_item(self, index: int, item: Any, items: list, links: list, answers: list) -> None:
        errors = answers[index]["errors"]
        if not isinstance(item, dict) or not isinstance(item.get("values", {}), dict):
            errors.append(_error("INVALID_INPUT_DATA", "An item needs className and values"))
            return
        table = item.get("className", "")
        if table not in TABLES or "cmdb_ci" not in ancestors(table):
            errors.append(_error("INVALID_INPUT_DATA", f"Invalid className {table!r}: not a CMDB class"))
            return
        if self._source_match(item) is not None:
            return  # identified by its source's key: no rule needed
        rule = rule_for(table)
        missing = [name for name in rule.attributes if not str(item.get("values", {}).get(name) or "")]
        if missing:
            errors.append(_error("MISSING_MATCHING_ATTRIBUTES", (
                f"In payload no matching attributes found for identification rule '{rule.name}' of {table}: "
                f"{', '.join(missing)}")))
        if rule.depends_on is not None and self._host(index, rule, links, items) is None:
            kind, host_class, _end = rule.depends_on
            errors.append(_error("MISSING_DEPENDENCY", (
                f"In payload missing a dependent relation '{kind}' to a {host_class} item for {table}: it is "
                "identified dependent on it")))

    @staticmethod
    def _host(index: int, rule: Rule, links: list, items: list) -> int | None:
        """The payload item that ``items[index]`` depends on, by its rule's relation, or None."""
        if rule.depends_on is None:
            return None
        kind, host_class, end = rule.depends_on
        for parent, child, k in links:
            me, other = (parent, child) if end == "parent" else (child, parent)
            if k == kind and me == index and other != index and isinstance(items[other], dict):
                table = items[other].get("className", "")
                if table in TABLES and host_class in ancestors(table):
                    return other
        return None

    def _source_match(self, item: dict) -> dict[str, str] | None:
        info = item.get("sys_object_source_info") or {}
        name, key = info.get("source_name"), info.get("source_native_key")
        if not name or not key:
            return None
        row = self._sources.get((name, key))
        record = self.store.get("cmdb_ci", row["target_sys_id"]) if row else None
        if record is not None and record["sys_class_name"] in descendants(item.get("className", "cmdb_ci")):
            return record
        return None

    def _identify(self, index: int, item: dict, rule: Rule, host: int | None, answers: list) -> None:
        answer = answers[index]
        table, values = item["className"], {k: "" if v is None else str(v) for k, v in item.get("values", {}).items()}
        found = self._source_match(item)
        if found is not None:
            answer["identificationAttempts"].append({"identifierName": "sys_object_source", "attemptResult": "MATCHED",
                                                     "searchOnTable": SOURCE_TABLE, "attributes": ["source_native_key"]})
        else:
            if host is not None and answers[host]["errors"]:
                answer["errors"].append(_error("ABANDONED", "The item it depends on has errors"))
                return
            candidates = self._candidates(table, rule.attributes, values)
            if host is not None and answers[host]["sysId"] != "Unknown":
                candidates = [row for row in candidates if self._related(row["sys_id"], answers[host]["sysId"], rule)]
            elif host is not None:
                candidates = []  # its host is new: so is it
            attempt = {"identifierName": rule.name, "searchOnTable": table, "attributes": list(rule.attributes),
                       "attemptResult": "NO_MATCH" if not candidates else "MATCHED" if len(candidates) == 1
                       else "MULTI_MATCH"}
            answer["identificationAttempts"].append(attempt)
            if len(candidates) > 1:
                answer["errors"].append(_error("MULTI_MATCH", (
                    f"Found duplicate records in table {table} for identification rule '{rule.name}': "
                    f"{', '.join(sorted(row['sys_id'] for row in candidates))}")))
                return
            found = candidates[0] if candidates else None
        if found is None:
            answer["operation"] = "INSERT"
            self._writes[index] = (True, values)
        else:
            answer["sysId"] = found["sys_id"]
            answer["identifierEntrySysId"] = rule.name
            values = self._reconciled(found["sys_class_name"], values, self._data_source)
            changed = any(found.get(k, "") != v for k, v in values.items() if k != "sys_class_name")
            answer["operation"] = "UPDATE" if changed else "NO_CHANGE"
            if changed:
                self._writes[index] = (False, values)

    def _related(self, sys_id: str, host: str, rule: Rule) -> bool:
        kind, _host_class, end = rule.depends_on or ("", "", "")
        parent, child = (sys_id, host) if end == "parent" else (host, sys_id)
        return (parent, child, self._rel_types.get(kind)) in self._relations

    # -- commit -----------------------------------------------------------------
    def _commit(self, items: list, answers: list, data_source: str, user: str) -> None:
        for index, (item, answer) in enumerate(zip(items, answers)):
            insert, values = self._writes.get(index, (False, None))
            if insert:
                record = self.store.insert(item["className"], {"discovery_source": data_source, **values}, user)
                answer["sysId"] = record["sys_id"]
                self._added(record)
            elif values is not None:
                record = self.store.get("cmdb_ci", answer["sysId"])
                before = dict(record)
                self.store.update("cmdb_ci", answer["sysId"], values, user)
                if any(before.get(a) != record.get(a) for _t, attributes in self._by_attributes for a in attributes):
                    self._version = -1  # a value a lookup is keyed by changed: made again for the next payload
            info = item.get("sys_object_source_info") or {}
            if info.get("source_name") and info.get("source_native_key"):
                self._remember_source(info, answer["sysId"], item["className"], user)

    def _remember_source(self, info: dict, sys_id: str, table: str, user: str) -> None:
        now = info.get("source_recency_timestamp") or time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        key = (info["source_name"], info["source_native_key"])
        row = self._sources.get(key)
        if row is not None:
            self.store.update(SOURCE_TABLE, row["sys_id"], {"target_sys_id": sys_id, "target_table": table,
                                                            "last_scan": now}, user)
            return
        self._sources[key] = self.store.insert(SOURCE_TABLE, {"name": key[0], "id": key[1], "target_sys_id": sys_id,
                                                              "target_table": table, "last_scan": now}, user)

    def _commit_relations(self, relations: list, rel_types: dict[str, str], answers: list,
                          user: str) -> list[dict[str, Any]]:
        existing = self._relations
        out = []
        for index, relation in enumerate(relations):
            parent, child = answers[relation["parent"]]["sysId"], answers[relation["child"]]["sysId"]
            key = (parent, child, rel_types[relation["type"]])
            if key in existing:
                out.append({"className": "cmdb_rel_ci", "operation": "NO_CHANGE", "sysId": existing[key],
                            "inputIndices": [index], "errors": [], "errorCount": 0})
                continue
            record = self.store.insert("cmdb_rel_ci", {"parent": parent, "child": child, "type": key[2]}, user)
            existing[key] = record["sys_id"]
            out.append({"className": "cmdb_rel_ci", "operation": "INSERT", "sysId": record["sys_id"],
                        "inputIndices": [index], "errors": [], "errorCount": 0})
        return out
