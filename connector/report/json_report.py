"""report: the run's JSON report (DESIGN.md's contract) and the summary line."""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from ..models import OK, SKIPPED, Inventory, MappingProblem
from ..reconcile.apply import ApplyResult
from ..reconcile.plan import LAST_DISCOVERED, CIChange, KeyValueChange, Plan, RelationChange
from ..servicenow.cmdb import KV_TABLE, REL_TABLE

ACTIONS_COUNTED = {"create": "created", "update": "updated", "retire": "retired", "revive": "revived",
                   "refresh": "refreshed"}
# per table: each CI once (a refreshed CI is unchanged but for its last_discovered stamp)
COUNTS = ("created", "updated", "retired", "revived", "refreshed", "unchanged")
FIELDS_SHOWN = 5  # on the terminal, per class: the fields most updated
KV_COUNTED = {"create": "created", "update": "updated", "delete": "deleted"}


def _ci_change(change: CIChange) -> dict[str, Any]:
    return {
        "action": change.action,
        "table": change.table,
        "identity": change.identity,
        "sys_id": change.sys_id,
        "fields": {name: {"old": old, "new": new} for name, (old, new) in sorted(change.diff.items())},
        "note": change.note,
    }


def _relation_change(change: RelationChange) -> dict[str, Any]:
    ends = {"parent": f"{change.parent[0]}:{change.parent[1]}", "child": f"{change.child[0]}:{change.child[1]}",
            "type": change.type}
    if change.action == "delete":
        fields = {k: {"old": v, "new": ""} for k, v in ends.items()}
    else:
        fields = {k: {"old": "", "new": v} for k, v in ends.items()}
    return {
        "action": change.action,
        "table": REL_TABLE,
        "identity": f"{change.parent[1]} [{change.type}] {change.child[1]}",
        "sys_id": change.sys_id,
        "fields": fields,
        "note": "",
    }


def _key_value_change(change: KeyValueChange) -> dict[str, Any]:
    if change.action == "update":
        fields = {"value": {"old": change.old, "new": change.new}}
    else:
        fields = {"key": {"old": change.key if change.action == "delete" else "",
                          "new": change.key if change.action == "create" else ""},
                  "value": {"old": change.old, "new": change.new}}
    return {
        "action": change.action,
        "table": KV_TABLE,
        "identity": f"{change.ci[0]}:{change.ci[1]} tag {change.key}",
        "sys_id": change.sys_id,
        "fields": fields,
        "note": "",
    }


def change_entry(change: CIChange | RelationChange | KeyValueChange) -> dict[str, Any]:
    """A change as the report lists it (and as ``run --approved`` compares it with a reviewed plan's)."""
    if isinstance(change, CIChange):
        return _ci_change(change)
    return _key_value_change(change) if isinstance(change, KeyValueChange) else _relation_change(change)


def account_statuses(inventory: Inventory) -> list[dict[str, Any]]:
    """Each account, with the worst status of its scopes and the first reason."""
    scopes_by_account = defaultdict(list)
    for scope in inventory.scopes:
        scopes_by_account[scope.account_id].append(scope)
    out = []
    for account in inventory.accounts:
        status, error = account.status, account.error
        if status == OK:
            failed = [s for s in scopes_by_account[account.account_id] if s.status not in (OK, SKIPPED)]
            if failed:
                status = failed[0].status
                error = f"{len(failed)} scope(s) not collected; first: {failed[0].region} {failed[0].source}: {failed[0].error}"
        out.append({"account_id": account.account_id, "name": account.name, "status": status, "error": error})
    return out


def run_options(*, force: bool = False, shard: tuple[int, int] | None = None,
                only_accounts: frozenset[str] = frozenset(), retire_accounts: frozenset[str] = frozenset(),
                inventory: Path | None = None) -> dict[str, Any]:
    """The command-line options a run or plan was made with, for its report (``options``): those that set
    its scope and guards (``option_flags`` gives them back as the command line), and the saved inventory."""
    return {"force": force, "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "accounts": sorted(only_accounts), "retire_accounts": sorted(retire_accounts),
            "inventory": str(inventory) if inventory else None}


SCOPE_OPTIONS = ("force", "shard", "accounts", "retire_accounts")  # those of run_options that set scope and guards


def option_flags(options: dict[str, Any]) -> list[str]:
    """A report's ``options`` that set the scope and guards, as the command-line options that give them."""
    flags = ["--force"] if options.get("force") else []
    if options.get("shard"):
        flags += ["--shard", str(options["shard"])]
    for account in options.get("accounts") or []:
        flags += ["--account", str(account)]
    for account in options.get("retire_accounts") or []:
        flags += ["--retire-account", str(account)]
    return flags


def build_report(
    *,
    run_id: str,
    mode: str,
    started_at: str,
    finished_at: str,
    exit_code: int,
    inventory: Inventory | None,
    plan: Plan | None,
    applied: ApplyResult | None,
    problems: list[MappingProblem],
    errors: list[str],
    tables: list[str],
    timings: dict[str, float] | None = None,
    cpu_timings: dict[str, float] | None = None,
    instance: str = "",
    unresolved_lookups: list[dict[str, str]] | None = None,
    approval: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {
        t: dict.fromkeys(COUNTS, 0) for t in tables
    }
    relations = {"created": 0, "deleted": 0, "unchanged": 0}
    key_values = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    changes: list[dict[str, Any]] = []
    drifted: dict[str, Counter] = defaultdict(Counter)  # table -> field -> CIs updated for it
    errors = list(errors)
    if plan is not None:
        for table, n in plan.unchanged.items():
            counts.setdefault(table, dict.fromkeys(COUNTS, 0))
            counts[table]["unchanged"] += n
        relations["unchanged"] = plan.relations_unchanged
        key_values["unchanged"] = plan.key_values_unchanged
        outcomes = applied.outcomes if applied is not None else None
        pairs = (
            [(o.change, o.sys_id, o.error) for o in outcomes]
            if outcomes is not None
            else [(c, c.sys_id, None) for c in [*plan.changes, *plan.relation_changes, *plan.key_value_changes]]
        )
        for change, sys_id, error in pairs:
            entry = change_entry(change)
            entry["sys_id"] = sys_id or entry["sys_id"]
            entry["status"] = "failed" if error else ("applied" if outcomes is not None else "planned")
            if error:
                entry["error"] = error
                errors.append(f"{change.action} {entry['table']} {entry['identity']}: {error}")
            else:
                if isinstance(change, CIChange):
                    counts[change.table][ACTIONS_COUNTED[change.action]] += 1
                    if change.action == "update":  # the run's stamp of each CI written is not drift
                        drifted[change.table].update(name for name in change.diff if name != LAST_DISCOVERED)
                elif isinstance(change, KeyValueChange):
                    key_values[KV_COUNTED[change.action]] += 1
                else:
                    relations["created" if change.action == "create" else "deleted"] += 1
            changes.append(entry)
    scopes = [
        {"account_id": s.account_id, "region": s.region, "source": s.source, "status": s.status, "error": s.error}
        for s in (inventory.scopes if inventory else [])
    ]
    return {
        "run_id": run_id,
        "mode": mode,
        "started_at": started_at,
        "finished_at": finished_at,
        "exit_code": exit_code,
        "instance": instance,  # the ServiceNow instance reconciled (its URL)
        # the command-line options it was made with (run_options): --force, --shard, --account, ...
        "options": dict(options or run_options()),
        "accounts": account_statuses(inventory) if inventory else [],
        "scopes": scopes,
        "tables": counts,
        "relations": relations,
        # tags in cmdb_key_value (reconcile.tags); all zero when tags are not managed
        "key_values": key_values,
        "changes": changes,
        # per class, each field the updates set, with how many CIs had it differ from AWS: most first
        "drifted_fields": {table: dict(sorted(fields.items(), key=lambda kv: (-kv[1], kv[0])))
                           for table, fields in sorted(drifted.items()) if fields},
        # CIs gone from AWS, kept active until they have been gone reconcile.retire_after_hours
        "retire_pending": [{"table": table, "identity": identity, "sys_id": plan.absent[(table, identity)][0],
                            "gone_since": plan.absent[(table, identity)][1], "retire_from": retire_from}
                           for (table, identity), retire_from in sorted(plan.retire_pending.items())] if plan else [],
        "duplicates": plan.duplicates if plan else [],
        # accounts the configuration no longer targets that still hold active CIs of ours (left as they are)
        "untargeted_accounts": [{"account_id": account, "cis": dict(sorted(tables.items()))}
                                for account, tables in sorted(plan.untargeted.items())] if plan else [],
        "guards": plan.guards if plan else [],
        "warnings": plan.warnings if plan else [],
        # run/plan --approved: the reviewed plan, and how many of its changes were made, held, no longer due
        "approval": approval,
        "mapping_problems": [{"scope": list(p.scope), "table": p.table, "message": p.message} for p in problems],
        # each reference field's value that named no record, or several (mapping lookups): left as it was
        "unresolved_lookups": list(unresolved_lookups or []),
        "errors": errors,
        # seconds per stage (collect, map, read the CMDB, plan, apply): wall, and CPU
        "timings": dict(timings or {}),
        "cpu_timings": dict(cpu_timings or {}),
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: dict[str, Any], output_dir: Path) -> Path:
    """``<output_dir>/report-<run_id>.json``, and ``latest.json`` beside it.

    Serialised once and compactly: a first run's report lists tens of thousands
    of changes, and pretty-printing them twice cost more CPU than the run's own
    work.
    """
    text = orjson.dumps(report, option=orjson.OPT_APPEND_NEWLINE).decode()
    path = output_dir / f"report-{report['run_id']}.json"
    write_text_atomic(path, text)
    write_text_atomic(output_dir / "latest.json", text)
    return path


def tag_totals(report: dict[str, Any]) -> str:
    """"7 created, 0 updated, 0 deleted, 2 unchanged" for cmdb_key_value; "" when no tag was managed."""
    tags = report.get("key_values") or {}  # reports before tags were managed have none
    return ", ".join(f"{n} {k}" for k, n in tags.items()) if any(tags.values()) else ""


def change_lines(report: dict[str, Any]) -> list[str]:
    """One line per class with writes (planned, for a plan), with the fields its updates set most, then
    relations and tags: the drift at a glance on the terminal. Nothing for a run that writes nothing."""
    lines = []
    drifted = report.get("drifted_fields") or {}
    for table, counts in report["tables"].items():
        done = [f"{counts[k]} {k}" for k in COUNTS if k != "unchanged" and counts.get(k)]
        if done:
            fields = list((drifted.get(table) or {}).items())
            shown = ", ".join(f"{name} {n}" for name, n in fields[:FIELDS_SHOWN])
            more = f", {len(fields) - FIELDS_SHOWN} more" if len(fields) > FIELDS_SHOWN else ""
            lines.append(f"  {table}: {', '.join(done)}" + (f" ({shown}{more})" if fields else ""))
    for name, counts in (("relations", report["relations"]), ("tags", report.get("key_values") or {})):
        done = [f"{n} {k}" for k, n in counts.items() if k != "unchanged" and n]
        if done:
            lines.append(f"  {name}: {', '.join(done)}")
    if lines:
        lines.insert(0, "would change:" if report["mode"] == "plan" else "changed:")
    return lines


def summary_line(report: dict[str, Any]) -> str:
    totals = defaultdict(int)
    for counts in report["tables"].values():
        for key, value in counts.items():
            totals[key] += value
    accounts = report["accounts"]
    failed = sum(1 for a in accounts if a["status"] not in (OK, SKIPPED))
    rel = report["relations"]
    verb = "would be" if report["mode"] == "plan" else ""
    # refreshed (last_discovered stamped again) only when some were: it is no drift from AWS
    parts = ", ".join(f"{totals[k]} {k}" for k in COUNTS if k != "refreshed" or totals[k])
    tags = tag_totals(report)
    return (
        f"run {report['run_id']} {report['mode']}: exit {report['exit_code']}; "
        f"accounts {len(accounts) - failed}/{len(accounts)} ok; CIs {verb + ' ' if verb else ''}{parts}; "
        f"relations {rel['created']} created, {rel['deleted']} deleted, {rel['unchanged']} unchanged; "
        + (f"tags {tags}; " if tags else "")
        + f"{len(report['errors'])} error(s)"
        # guards and warnings only when there are some: each is a reason to open the report
        + (f", {len(report['guards'])} guard(s)" if report.get("guards") else "")
        + (f", {len(report['warnings'])} warning(s)" if report.get("warnings") else "")
    )
