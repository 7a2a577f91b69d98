"""apply: carry out a plan through a ``CmdbWriter``, with bounded concurrency.

CIs first, then relations, so that a relation is written after both of its
ends exist. Writes go in chunks (one write each, or a Batch API request's
worth) spread over the workers. A failed write is recorded with its reason
and the rest go on; a run killed half-way is finished by the next one,
because plan starts again from what the CMDB holds.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..ops import stop_requested
from ..progress import bar
from ..servicenow.cmdb import REL_TABLE, CmdbWriter, WriteOp, WriteResult, create_ci_op, create_relation_op
from .plan import CREATE, CIChange, CIKey, Plan, RelationChange, TablePolicy

log = logging.getLogger(__name__)


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


def describe(change: CIChange | RelationChange) -> str:
    if isinstance(change, CIChange):
        return f"{change.action} {change.table} {change.identity}"
    return f"{change.action} {REL_TABLE} {change.parent[1]} [{change.type}] {change.child[1]}"


def _write_all(writer: CmdbWriter, ops: list[WriteOp], chunk: int, workers: int, label: str) -> list[WriteResult]:
    """Every op, in chunks over the workers; results in the order of ``ops``."""
    if not ops:
        return []
    chunks = [ops[i : i + chunk] for i in range(0, len(ops), chunk)]

    with bar(label, len(ops)) as progress:
        def run(part: list[WriteOp]) -> list[WriteResult]:
            if stop_requested():  # in-flight writes finish; new ones are left for the next run
                return [WriteResult(error="not attempted: the run was interrupted")] * len(part)
            try:
                results = writer.write_many(part)
            except Exception as exc:  # noqa: BLE001 - one chunk's bug must not lose the others
                log.error("writes failed: unexpected %s: %s", type(exc).__name__, exc)
                results = [WriteResult(error=f"unexpected {type(exc).__name__}: {exc}")] * len(part)
            progress.advance(len(part))
            return results

        with ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="apply") as executor:
            return [result for part in executor.map(run, chunks) for result in part]


def _ci_op(change: CIChange, policies: dict[str, TablePolicy]) -> WriteOp:
    if change.action == CREATE:
        return create_ci_op(change.table, change.payload, policies[change.table].identity_field)
    return WriteOp("PATCH", change.table, change.sys_id, change.payload)


def _record(result: ApplyResult, changes, ops_results) -> None:
    for change, outcome in zip(changes, ops_results):
        if outcome.error:
            table = change.table if isinstance(change, CIChange) else REL_TABLE
            log.error("%s: %s", describe(change), outcome.error, extra={"table": table})
        result.outcomes.append(Outcome(change, outcome.sys_id, outcome.error))


def apply_plan(
    plan: Plan,
    writer: CmdbWriter,
    policies: dict[str, TablePolicy],
    rel_types: dict[str, str],
    workers: int,
    batch_size: int = 0,
) -> ApplyResult:
    result = ApplyResult()
    chunk = max(1, batch_size)
    sys_ids: dict[CIKey, str] = dict(plan.sys_ids)

    ci_results = _write_all(writer, [_ci_op(c, policies) for c in plan.changes], chunk, workers, "apply CIs")
    _record(result, plan.changes, ci_results)
    for change, outcome in zip(plan.changes, ci_results):
        if outcome.sys_id:
            sys_ids[(change.table, change.identity)] = outcome.sys_id

    ready: list[RelationChange] = []
    ops: list[WriteOp] = []
    for change in plan.relation_changes:
        if change.action == "delete":
            ready.append(change)
            ops.append(WriteOp("DELETE", REL_TABLE, change.sys_id))
            continue
        parent, child = sys_ids.get(change.parent), sys_ids.get(change.child)
        if not parent or not child:
            missing = change.parent if not parent else change.child
            result.outcomes.append(Outcome(change, error=f"end {missing[0]} {missing[1]} was not created"))
            continue
        ready.append(change)
        ops.append(create_relation_op(parent, child, rel_types[change.type]))
    _record(result, ready, _write_all(writer, ops, chunk, workers, "apply relations"))
    return result
