"""check-access: assume the role in every target account and say what happened.

For each account: its status, the reason, a hint at the likely cause when it
failed, and whether the role's trust policy requires an ExternalId (read with
iam:GetRole through the role itself, which ReadOnlyAccess allows).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import unquote

from ..models import DENIED, OK, SKIPPED, Account
from .sessions import SessionPool, classify_error

log = logging.getLogger(__name__)

HINT_DENIED = (
    "the role is missing (is the StackSet instance deployed to this account?), "
    "the ExternalId does not match the role's trust policy, or this host's IP is "
    "outside the role's AllowedSourceIps"
)
HINT_MANAGEMENT = (
    "service-managed StackSets never deploy to the management account: deploy "
    "deploy/cmdb-read-role.yaml there as a plain stack"
)


@dataclass(frozen=True)
class AccessRow:
    account_id: str
    name: str
    status: str
    reason: str
    external_id_required: str  # "yes", "NO", or "unknown"
    hint: str = ""


def _external_id_required(pool: SessionPool, account_id: str, role_name: str) -> str:
    try:
        role = pool.client(account_id, "iam", pool.default_region).get_role(RoleName=role_name)["Role"]
    except Exception as exc:  # noqa: BLE001 - only a detail of the report
        return f"unknown ({classify_error(exc)[1].split(':')[0]})"
    document = role.get("AssumeRolePolicyDocument", {})
    if isinstance(document, str):
        document = json.loads(unquote(document))
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    allows = [s for s in statements if s.get("Effect") == "Allow"]
    needs = [
        any("sts:externalid" in key.lower() for cond in (s.get("Condition") or {}).values() for key in cond)
        for s in allows
    ]
    return "yes" if needs and all(needs) else "NO"


def check_access(pool: SessionPool, accounts: list[Account], role_name: str, management_account: str | None) -> list[AccessRow]:
    rows = []
    for account in accounts:
        if account.status != OK:
            rows.append(AccessRow(account.account_id, account.name, account.status, account.error or "", "-"))
            continue
        status, reason = pool.open(account.account_id)
        if status != OK:
            hint = HINT_MANAGEMENT if account.account_id == management_account else (HINT_DENIED if status == DENIED else "")
            rows.append(AccessRow(account.account_id, account.name, status, reason or "", "-", hint))
            continue
        rows.append(AccessRow(account.account_id, account.name, OK, "role assumed",
                              _external_id_required(pool, account.account_id, role_name)))
    return rows


def render_table(rows: list[AccessRow]) -> str:
    headers = ("ACCOUNT", "NAME", "STATUS", "EXTERNAL_ID", "REASON")
    cells = [(r.account_id, r.name, r.status, r.external_id_required, r.reason) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, cell in zip(rows, cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip())
        if row.hint:
            lines.append(f"    hint: {row.hint}")
        if row.external_id_required == "NO":
            lines.append("    warning: the role's trust policy does not require an ExternalId (confused deputy)")
    failed = sum(1 for r in rows if r.status not in (OK, SKIPPED))
    lines.append(f"{len(rows)} account(s): {sum(r.status == OK for r in rows)} ok, "
                 f"{sum(r.status == SKIPPED for r in rows)} skipped, {failed} failed")
    return "\n".join(lines)
