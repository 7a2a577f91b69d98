"""apply: carry out a plan through a ``CmdbWriter``, with bounded concurrency.

CIs first, then relations, so that a relation is written after both of its
ends exist. A failed write is recorded with its reason and the rest go on; a
run killed half-way is finished by the next one, because plan starts again
from what the CMDB holds.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from ..errors import ConnectorError
from ..servicenow.cmdb import CmdbWriter
from .plan import CREATE, CIChange, CIKey, Plan, RelationChange, TablePolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Outcome:
    change: CIChange | RelationChange
    sys_id: str | None = None
    error: str | None = None


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]


def _run_all(items: Iterable[T], work: Callable[[T], Outcome], workers: int) -> list[Outcome]:
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apply") as executor:
        return list(executor.map(work, items))


def describe(change: CIChange | RelationChange) -> str:
    if isinstance(change, CIChange):
        return f"{change.action} {change.table} {change.identity}"
    return f"{change.action} cmdb_rel_ci {change.parent[1]} [{change.type}] {change.child[1]}"


def _guarded(change, action: Callable[[], str | None]) -> Outcome:
    try:
        return Outcome(change, sys_id=action())
    except ConnectorError as exc:
        log.error("%s: %s", describe(change), exc)
        return Outcome(change, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one write's bug must not lose the others
        log.error("%s: unexpected %s: %s", describe(change), type(exc).__name__, exc)
        return Outcome(change, error=f"unexpected {type(exc).__name__}: {exc}")


def apply_plan(
    plan: Plan,
    writer: CmdbWriter,
    policies: dict[str, TablePolicy],
    rel_types: dict[str, str],
    workers: int,
) -> ApplyResult:
    result = ApplyResult()
    sys_ids: dict[CIKey, str] = dict(plan.sys_ids)

    def write_ci(change: CIChange) -> Outcome:
        if change.action == CREATE:
            policy = policies[change.table]
            return _guarded(change, lambda: writer.create_ci(change.table, change.payload, policy.identity_field))

        def update() -> str | None:
            writer.update_ci(change.table, change.sys_id, change.payload)
            return change.sys_id

        return _guarded(change, update)

    ci_outcomes = _run_all(plan.changes, write_ci, workers)
    for outcome in ci_outcomes:
        if outcome.sys_id and isinstance(outcome.change, CIChange):
            sys_ids[(outcome.change.table, outcome.change.identity)] = outcome.sys_id
    result.outcomes.extend(ci_outcomes)

    def write_relation(change: RelationChange) -> Outcome:
        if change.action == "delete":
            return _guarded(change, lambda: writer.delete_relation(change.sys_id) or change.sys_id)
        parent, child = sys_ids.get(change.parent), sys_ids.get(change.child)
        if not parent or not child:
            missing = change.parent if not parent else change.child
            return Outcome(change, error=f"end {missing[0]} {missing[1]} was not created")
        return _guarded(change, lambda: writer.create_relation(parent, child, rel_types[change.type]))

    result.outcomes.extend(_run_all(plan.relation_changes, write_relation, workers))
    return result
