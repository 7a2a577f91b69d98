"""The JSON report's shape, as ``report FILE.json`` and ``run --approved`` read a report back.

A report read back may come from another version of the connector, or have been edited by hand: what the
outputs render is checked here, key by key, so that a report not of this shape is an error naming the file
and the keys, not a traceback from deep in a renderer. Keys added later (``drifted_fields``, ...) may be
missing, as in reports written before them; keys this version does not know are let through.

``json_report.build_report`` writes this shape; a test holds the two together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Diff(_Part):
    old: str | None = None
    new: str | None = None


class _Change(_Part):
    action: str
    table: str
    identity: str
    sys_id: str | None = None
    status: str = ""
    fields: dict[str, _Diff] = {}
    note: str | None = None
    error: str | None = None


class _Account(_Part):
    account_id: str
    name: str
    status: str
    error: str | None = None


class _Scope(_Account):
    name: str = ""
    region: str
    source: str


class _Relations(_Part):
    created: int
    deleted: int
    unchanged: int


class _Options(_Part):
    force: bool = False
    shard: str | None = None
    accounts: list[str] = []
    retire_accounts: list[str] = []
    inventory: str | None = None


class _Approval(_Part):
    run_id: str
    kept: int
    held: int
    no_longer_due: int


class _MappingProblem(_Part):
    scope: list[str]
    table: str
    message: str


class _Lookup(_Part):
    table: str
    field: str
    identity: str
    value: Any
    reason: str
    lookup: str


class _Pending(_Part):
    table: str
    identity: str
    gone_since: Any
    retire_from: Any


class _Untargeted(_Part):
    account_id: str
    cis: dict[str, int]


class ReportShape(_Part):
    run_id: str
    mode: str
    started_at: str
    finished_at: str
    exit_code: int
    instance: str = ""
    options: _Options = _Options()
    accounts: list[_Account]
    scopes: list[_Scope] = []
    tables: dict[str, dict[str, int]]
    relations: _Relations
    key_values: dict[str, int] = {}
    changes: list[_Change]
    drifted_fields: dict[str, dict[str, int]] = {}
    retire_pending: list[_Pending] = []
    duplicates: list[Any] = []
    untargeted_accounts: list[_Untargeted] = []
    guards: list[str] = []
    warnings: list[str] = []
    approval: _Approval | None = None
    mapping_problems: list[_MappingProblem] = []
    unresolved_lookups: list[_Lookup] = []
    errors: list[str]

    @field_validator("started_at", "finished_at")
    @classmethod
    def _a_time(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 time") from None
        return value


PROBLEMS_SHOWN = 5


def shape_problems(report: Any) -> list[str]:
    """What in ``report`` is not of the report's shape: ``tables.cmdb_ci_x.created: ...``, the first few."""
    try:
        ReportShape.model_validate(report)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
            value = error.get("input")
            if error["type"] in ("model_type", "dict_type"):  # pydantic's names the model, one of ours
                error["msg"] = "Input should be a JSON object"
            shown = f" (got {value!r:.60})" if error["type"] != "missing" and not isinstance(value, (dict, list)) else ""
            problems.append(f"{where or '(top level)'}: {error['msg'].removeprefix('Value error, ')}{shown}")
        more = len(problems) - PROBLEMS_SHOWN
        return problems[:PROBLEMS_SHOWN] + ([f"... and {more} more"] if more > 0 else [])
    return []
