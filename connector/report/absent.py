"""The CIs gone from AWS and not yet retired (reconcile.retire_after_hours), from one run to the next.

With a wait before retiring, a run must know since when each CI has been gone: it
is kept in ``report.output_dir``, beside the reports, one file per shard, written by
each ``run`` (never by a ``plan``, which reads it as the next run will). Plan itself
stays pure: the file's content goes in through ``PlanOptions.absent_since`` and
comes back out as ``Plan.absent``.

A file that is missing, unreadable, or for another instance or discovery source
reads as empty: the wait starts again, which delays a retire and never hastens one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from ..mapping.functions import snow_time
from ..reconcile.plan import CIKey
from .json_report import write_text_atomic

log = logging.getLogger(__name__)


def absent_state_path(output_dir: Path, shard: tuple[int, int] | None) -> Path:
    """One file per shard: shards that share a folder keep their own CIs' times."""
    return output_dir / ("absent.json" if shard is None else f"absent-shard-{shard[0]}-of-{shard[1]}.json")


def load_absent(path: Path, instance: str, discovery_source: str) -> dict[CIKey, str]:
    """(table, identity) -> since when the CI has been gone, as the last run left it."""
    try:
        state = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: not read (%s): the wait before retiring starts again for every CI gone from AWS",
                    path, exc)
        return {}
    if not isinstance(state, dict) or (state.get("instance"), state.get("discovery_source")) != (
            instance, discovery_source):
        return {}  # another instance's (a dev instance, then prod, in one folder), or another connector's
    return {(row["table"], row["identity"]): row["since"] for row in state.get("absent") or []
            if isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("table", "identity", "since"))
            and snow_time(row["since"]) is not None}  # edited by hand into something else: its wait starts again


def save_absent(path: Path, instance: str, discovery_source: str, absent: dict[CIKey, tuple[str, str]]) -> None:
    rows = [{"table": table, "identity": identity, "sys_id": sys_id, "since": since}
            for (table, identity), (sys_id, since) in sorted(absent.items())]
    write_text_atomic(path, orjson.dumps({"instance": instance, "discovery_source": discovery_source,
                                          "absent": rows}, option=orjson.OPT_INDENT_2).decode() + "\n")
