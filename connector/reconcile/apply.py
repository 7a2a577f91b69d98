"""apply: carry out a plan through a ``CmdbWriter``, with bounded concurrency.

CIs first, then relations and tags, so that a relation or a tag is written
after the CIs it points to exist. Writes go in chunks (one write each, or a
Batch API request's worth) spread over the workers. A failed write is
recorded with its reason and the rest go on; a run killed half-way is
finished by the next one, because plan starts again from what the CMDB holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from ..concurrency import map_in_order
from ..ops import stop_requested
from ..progress import bar
from ..servicenow.cmdb import (
    KV_TABLE,
    REL_TABLE,
    CmdbWriter,
    WriteOp,
    WriteResult,
    create_ci_op,
    create_key_value_op,
    create_relation_op,
)
from .plan import CREATE, CIChange, CIKey, KeyValueChange, Plan, RelationChange, TablePolicy

Change = CIChange | RelationChange | KeyValueChange

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    change: Change
    sys_id: str | None = None
    error: str | None = None


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]


def table_of(change: Change) -> str:
    if isinstance(change, CIChange):
        return change.table
    return KV_TABLE if isinstance(change, KeyValueChange) else REL_TABLE


def describe(change: Change) -> str:
    if isinstance(change, CIChange):
        return f"{change.action} {change.table} {change.identity}"
    if isinstance(change, KeyValueChange):
        return f"{change.action} {KV_TABLE} {change.ci[1]} tag {change.key!r}"
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

        return [result for part in map_in_order(run, chunks, workers, "apply") for result in part]


def _ci_op(change: CIChange, policies: dict[str, TablePolicy]) -> WriteOp:
    if change.action == CREATE:
        return create_ci_op(change.table, change.payload, policies[change.table].identity_field)
    return WriteOp("PATCH", change.table, change.sys_id, change.payload)


def predict_with(plan: Plan, writer, policies: dict[str, TablePolicy], workers: int = 1) -> None:
    """For ``plan`` (no write): a writer that can tell what the instance would make of the CI writes (IRE's
    identification, asked without committing) adds it to each change's note where it differs."""
    notes = writer.predict([_ci_op(c, policies) for c in plan.changes], workers)
    plan.changes = [replace(c, note="; ".join(filter(None, (c.note, note)))) if note else c
                    for c, note in zip(plan.changes, notes)]


def _record(result: ApplyResult, changes, ops_results) -> None:
    for change, outcome in zip(changes, ops_results):
        if outcome.error:
            log.error("%s: %s", describe(change), outcome.error, extra={"table": table_of(change)})
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

    ops = [_ci_op(c, policies) for c in plan.changes]
    # A writer that identifies CIs by those they depend on (IRE) says in which waves to write them
    waves = writer.waves(ops) if hasattr(writer, "waves") else [list(range(len(ops)))]
    ci_results: list[WriteResult] = [WriteResult(error="not written")] * len(ops)
    for wave in waves:
        for index, outcome in zip(wave, _write_all(writer, [ops[i] for i in wave], chunk, workers, "apply CIs")):
            ci_results[index] = outcome
    _record(result, plan.changes, ci_results)
    for change, outcome in zip(plan.changes, ci_results):
        if outcome.sys_id:
            sys_ids[(change.table, change.identity)] = outcome.sys_id

    ready: list[RelationChange] = []
    ops = []
    made = getattr(writer, "relations_done", set())  # relations a writer made with the CIs (IRE)
    identified = getattr(writer, "identified", set())  # creates that found a CI there already (IRE)
    for change in plan.relation_changes:
        if change.action == "create" and (change.type, change.parent, change.child) in made:
            result.outcomes.append(Outcome(change))  # written with its CIs, in their IRE payload
            continue
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
        op = create_relation_op(parent, child, rel_types[change.type])
        ops.append(replace(op, check_first=True) if {change.parent, change.child} & identified else op)
    _record(result, ready, _write_all(writer, ops, chunk, workers, "apply relations"))
    _apply_key_values(plan.key_value_changes, sys_ids, writer, chunk, workers, result, identified)
    return result


def _apply_key_values(changes: list[KeyValueChange], sys_ids: dict[CIKey, str], writer: CmdbWriter,
                      chunk: int, workers: int, result: ApplyResult, identified: set[CIKey]) -> None:
    ready: list[KeyValueChange] = []
    ops: list[WriteOp] = []
    for change in changes:
        if change.action == "delete":
            ops.append(WriteOp("DELETE", KV_TABLE, change.sys_id))
        elif change.action == "update":
            ops.append(WriteOp("PATCH", KV_TABLE, change.sys_id, {"value": change.new}))
        elif sys_ids.get(change.ci):
            op = create_key_value_op(sys_ids[change.ci], change.key, change.new)
            ops.append(replace(op, check_first=True) if change.check_first or change.ci in identified else op)
        else:
            result.outcomes.append(Outcome(change, error=f"CI {change.ci[0]} {change.ci[1]} was not created"))
            continue
        ready.append(change)
    _record(result, ready, _write_all(writer, ops, chunk, workers, "apply tags"))
