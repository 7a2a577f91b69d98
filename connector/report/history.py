"""The report folder's history: writes that do not stick, and old reports pruned.

Writes that do not stick: this run's changes set against the previous run's.

A convergent connector writes a value once. When a run writes again exactly
what the previous run wrote (the same action on the same record, the same
field, the same new value), something in the instance undid it in between:
a business rule, a reconciliation rule that gives another data source
precedence, a field shorter than the value, or a person. Each such write would
then be made on every run, for ever; the report says so, once per table,
action and field, with an example, so that an admin can find the cause.

A CI created again that the previous run created is worse: the CMDB no
longer shows it under its identity, so a duplicate is likely.

``repeated_writes`` is pure. ``previous_run_report`` reads the report files.

``prune_reports`` keeps the folder from growing for ever under a schedule:
each run's own files (``report-<run_id>.json``, ``.html``, ``.csv``) older than
``report.keep_days`` go; ``latest.json``, the Prometheus textfile and anything
else in the folder stay.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import orjson

log = logging.getLogger(__name__)

# Reports of `plan` runs may sit between two `run` reports: look this far back.
LOOK_BACK = 5
# A run's own files, and nothing else: report-<run_id>.json|html|csv
RUN_FILE = re.compile(r"report-\d{8}T\d{6}Z-[0-9a-f]+\.(json|html|csv)")


def previous_run_report(output_dir: Path, instance: str | None = None) -> dict[str, Any] | None:
    """The newest report of a `run` (not a `plan`) in ``output_dir`` against ``instance``, or None.

    Called before this run's report is written. Newest by the time the file
    was written (two runs may start within one second). Never fails the run:
    an unreadable report is skipped, with a log line. A run against another
    instance (the demo's stand-in of a previous demo, a dev instance and then
    prod in one folder) is no history of this one: its creates are not made
    again here; nor is a report that names no instance (from before reports did).
    """
    try:
        written = sorted(((p.stat().st_mtime_ns, p) for p in output_dir.glob("report-*.json")), reverse=True)
    except OSError:
        return None  # a report removed while listed: no history this time
    for _when, path in written[:LOOK_BACK]:
        try:
            report = orjson.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("previous report %s cannot be read (%s); skipped", path, type(exc).__name__)
            continue
        if isinstance(report, dict) and report.get("mode") == "run" and (
                instance is None or report.get("instance") == instance):
            return report
    return None


def _written(changes: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, str]]:
    """(action, table, identity) -> field -> the new value, of the writes that were applied."""
    written: dict[tuple[str, str, str], dict[str, str]] = {}
    for entry in changes:
        # another version's report, or one edited by hand, may hold anything: what is not understood is left out
        if isinstance(entry, dict) and entry.get("status") == "applied" and isinstance(entry.get("fields"), dict):
            written[(str(entry.get("action")), str(entry.get("table")), str(entry.get("identity")))] = {
                name: value.get("new") for name, value in entry["fields"].items() if isinstance(value, dict)
            }
    return written


def repeated_writes(previous: dict[str, Any], changes: list[dict[str, Any]]) -> list[str]:
    """Warnings for the writes of ``changes`` that repeat one the ``previous`` run applied."""
    before = _written(previous.get("changes") if isinstance(previous.get("changes"), list) else [])
    if not before:
        return []
    # (table, action, field) -> [count, an example]; field "" for a whole record
    found: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, None])
    for entry in changes:
        key = (entry["action"], entry["table"], entry["identity"])
        earlier = before.get(key)
        if earlier is None:
            continue
        if entry["action"] == "update":
            for name, value in entry["fields"].items():
                if name in earlier and earlier[name] == value["new"]:
                    seen = found[(entry["table"], "update", name)]
                    seen[0] += 1
                    seen[1] = seen[1] or (entry["identity"], value["old"], value["new"])
        else:
            seen = found[(entry["table"], entry["action"], "")]
            seen[0] += 1
            seen[1] = seen[1] or (entry["identity"], "", "")
    run = previous.get("run_id", "?")
    return [_warning(table, action, name, count, example, run) for (table, action, name), (count, example) in sorted(found.items())]


def _shown(value: str, limit: int = 60) -> str:
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def _warning(table: str, action: str, name: str, count: int, example: tuple[str, str, str], run: str) -> str:
    identity, old, new = example
    if action == "update":
        if old and len(old) < len(new) and new.startswith(old):
            cause = (f"The instance keeps only its first {len(old)} characters: the field is likely {len(old)} "
                     f"long; cut the value in the mapping (transform truncate:{len(old)}) or lengthen the field")
        else:
            cause = ("Something in the instance changes it back (a business rule, a reconciliation rule giving "
                     "another source precedence, or a field shorter than the value)")
        return (f"{table}.{name}: written again on {count} record(s) with the value the previous run ({run}) "
                f"wrote, e.g. {identity}: it reads {_shown(old)} again, written {_shown(new)}. {cause}, so each "
                "run will write it again.")
    if action == "create":
        return (f"{table}: {count} record(s) created again that the previous run ({run}) created, e.g. {identity}. "
                "The CMDB no longer shows them under their identity (changed, or no longer ours): look for "
                "duplicates before the next run.")
    return (f"{table}: {action} repeated on {count} record(s) as in the previous run ({run}), e.g. {identity}: "
            "something in the instance undoes it between runs.")


def prune_reports(output_dir: Path, keep_days: int, now: float | None = None) -> int:
    """Remove the run files older than ``keep_days`` (0: none); returns how many.

    Never fails the run: a file that cannot be removed stays, with a log line.
    """
    if keep_days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - keep_days * 86400
    removed = 0
    for path in output_dir.glob("report-*"):
        if not RUN_FILE.fullmatch(path.name):
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # another process pruned it first
        except OSError as exc:
            log.warning("old report %s not removed: %s", path, exc)
    if removed:
        log.info("removed %d report file(s) older than report.keep_days = %d", removed, keep_days)
    return removed
