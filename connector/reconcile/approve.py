"""approve (pure): a fresh plan cut down to the changes of a plan someone reviewed.

``run --approved REPORT.json`` (and ``plan --approved``, to see what that run would do) plans afresh, as
every run does, with every guard and re-check, then makes only the changes that the reviewed plan's
report lists exactly as they are planned now: same action, class and identity, same new value of every
field. The reviewer's copy can be no more than a copy: a change that came since the review (AWS changed, or
the CMDB), or that now differs from the one reviewed, is held back and named in the guards; a change
reviewed that is no longer due is named in the warnings. Nothing is written that nobody saw.

Left out of the comparison: the run's own ``last_discovered`` / ``first_discovered`` stamps, which differ
from one run to the next by nature. A refresh (an unchanged CI's stamp made again) changes no content and
is made whether the reviewed plan had it or not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from ..report.json_report import SCOPE_OPTIONS, change_entry, option_flags
from .plan import CREATE, FIRST_DISCOVERED, LAST_DISCOVERED, REFRESH, CIKey, Plan

STAMPS = frozenset({LAST_DISCOVERED, FIRST_DISCOVERED})
EXAMPLES = 3  # changes named in a guard or a warning, for each kind
ApprovalKey = tuple[str, str, str, tuple[tuple[str, str], ...]]


def approval_key(entry: dict[str, Any]) -> ApprovalKey:
    """What a change must be for an approval to cover it: its report entry's action, table, identity, and
    the new value of every field but the stamps."""
    fields = entry.get("fields") or {}
    return (str(entry["action"]), str(entry["table"]), str(entry["identity"]),
            tuple(sorted((str(name), str(value.get("new", ""))) for name, value in fields.items()
                         if name not in STAMPS)))


def refusal(file: str, report: dict[str, Any], *, instance: str, options: dict[str, Any], now: datetime,
            max_age_hours: float) -> str | None:
    """Why ``report`` (read from ``file``) cannot be approved for a run of ``instance`` with ``options``
    (``json_report.run_options``) at ``now``, or None: it must be a plan's (a run's changes are made
    already), of that instance, made with the same scope and guard options (another scope would hold back
    or add whole accounts' changes), at most ``max_age_hours`` old (0: any age). ``report`` is one
    ``load_report`` read, which checked its shape (its changes, its times)."""
    mode = report.get("mode")
    if mode != "plan":
        return (f"{file}: the report of a {mode!r}, whose changes were made already: --approved takes the report of "
                "a plan (cmdb-connector plan)")
    if report.get("instance") != instance:
        return (f"{file}: a plan of {report.get('instance') or 'another instance'}, not of servicenow.instance_url "
                f"({instance})")
    planned = report.get("options")
    if not isinstance(planned, dict):
        return (f"{file}: the report does not say what options the plan was made with (no options; an older "
                "cmdb-connector wrote it): make the plan again")
    if any(planned.get(key) != options.get(key) for key in SCOPE_OPTIONS):
        want = " ".join(option_flags(planned)) or "none of --force, --shard, --account, --retire-account"
        have = " ".join(option_flags(options)) or "none"
        return (f"{file}: the plan was made with {want}, this run with {have}. A run's guards and scope are those "
                "of its options: give it the plan's")
    made = datetime.fromisoformat(report["finished_at"])
    age = now - (made if made.tzinfo else made.replace(tzinfo=timezone.utc))
    if max_age_hours and age > timedelta(hours=max_age_hours):
        return (f"{file}: a plan of {made.isoformat()}, {age.total_seconds() / 3600:.0f} hours old: "
                f"reconcile.approval_max_age_hours is {max_age_hours:g}. Review a new plan")
    return None


@dataclass(frozen=True)
class ApprovedPlan:
    """The reviewed plan, read from its JSON report (``mode = "plan"``)."""

    file: str
    run_id: str
    keys: frozenset[ApprovalKey]

    @classmethod
    def of_report(cls, file: str, report: dict[str, Any]) -> "ApprovedPlan":
        """``report``'s changes (a report ``load_report`` read)."""
        return cls(file, str(report.get("run_id", "")),
                   frozenset(approval_key(entry) for entry in report.get("changes") or []))


@dataclass(frozen=True)
class Approval:
    """What the approval did to the fresh plan, for the report (``approval``)."""

    file: str
    run_id: str
    approved: int  # changes in the reviewed plan
    kept: int  # of the fresh plan's changes, those the review covers (refreshes among them)
    held: int  # of the fresh plan's changes, those it does not: not made
    no_longer_due: int  # of the reviewed plan's changes, those the fresh plan does not have
    held_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> action -> changes held

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "run_id": self.run_id, "approved": self.approved, "kept": self.kept,
                "held": self.held, "no_longer_due": self.no_longer_due, "held_by_kind": self.held_by_kind}


def approve(plan: Plan, approved: ApprovedPlan) -> tuple[Plan, Approval]:
    """The plan with only the changes ``approved`` covers, and what became of the rest.

    A create held back holds back the relations and tags of its CI too (reviewed or not: their CI would
    not exist), as a guard's held create does."""
    held: list[dict[str, Any]] = []
    fresh_keys: set[ApprovalKey] = set()

    def covered(change) -> bool:
        entry = change_entry(change)
        key = approval_key(entry)
        fresh_keys.add(key)
        if key in approved.keys or entry["action"] == REFRESH:
            return True
        held.append(entry)
        return False

    changes = [change for change in plan.changes if covered(change)]
    not_created: set[CIKey] = {(c.table, c.identity) for c in plan.changes if c.action == CREATE} - {
        (c.table, c.identity) for c in changes if c.action == CREATE}

    def end_created(change, ends: Iterable[CIKey]) -> bool:
        if not_created.isdisjoint(ends):
            return True
        held.append(change_entry(change))
        return False

    relations = [c for c in plan.relation_changes if covered(c) and end_created(c, (c.parent, c.child))]
    key_values = [c for c in plan.key_value_changes if covered(c) and end_created(c, (c.ci,))]
    gone = sorted(approved.keys - fresh_keys)
    by_kind = Counter((entry["table"], entry["action"]) for entry in held)
    guards, warnings = list(plan.guards), list(plan.warnings)
    if held:
        guards.append(_held_guard(approved, held, by_kind, bool(not_created)))
    if gone:
        warnings.append(_gone_warning(approved, gone, bool(plan.guards)))
    approval = Approval(approved.file, approved.run_id, len(approved.keys),
                        len(changes) + len(relations) + len(key_values), len(held), len(gone),
                        _nested(by_kind))
    return replace(plan, changes=changes, relation_changes=relations, key_value_changes=key_values,
                   held=plan.held | not_created, guards=guards, warnings=warnings), approval


def _nested(by_kind: Counter) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (table, action), n in sorted(by_kind.items()):
        nested.setdefault(table, {})[action] = n
    return nested


def _held_guard(approved: ApprovedPlan, held: list[dict[str, Any]], by_kind: Counter, creates: bool) -> str:
    kinds = ", ".join(f"{n} {action} in {table}" for (table, action), n in sorted(by_kind.items()))
    examples = "; ".join(f"{e['action']} {e['table']} {e['identity']}" for e in held[:EXAMPLES])
    ends = " (a CI whose create is held back holds back its relations and tags too)" if creates else ""
    return (f"{len(held)} change(s) that the approved plan {approved.run_id} ({approved.file}) does not hold as "
            f"they are planned now, not made{ends}: {kinds} (e.g. {examples}). They came since that plan, or "
            "differ from what it showed. Review a new plan and approve that one to make them.")


def _gone_warning(approved: ApprovedPlan, gone: list[ApprovalKey], guarded: bool) -> str:
    examples = "; ".join(f"{action} {table} {identity}" for action, table, identity, _fields in gone[:EXAMPLES])
    held = " or a guard holds it back (see the guards)," if guarded else ""
    return (f"{len(gone)} change(s) of the approved plan {approved.run_id} ({approved.file}) no longer due, not "
            f"made: AWS or the CMDB changed since that plan,{held} or the change was made already (e.g. "
            f"{examples}).")
