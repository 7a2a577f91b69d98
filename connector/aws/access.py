"""check-access: assume the role in every target account and say what happened.

For each account: its status, the reason, a hint at the likely cause when it
failed, and whether the role's trust policy requires an ExternalId (read with
iam:GetRole through the role itself, which ReadOnlyAccess allows).

With ``--calls``, each listing the mappings name is also called once in each
account whose role was assumed, in each region, and so is each call their
``[source.join]`` tables make (describe_volumes, describe_instance_types):
what a service control policy or a role edited by hand refuses is then named
before a run, rather than as failed scopes in its report.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..models import DENIED, OK, SKIPPED, Account
from .collect import regions_for
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


@dataclass(frozen=True)
class CallRow:
    account_id: str
    region: str
    call: str  # service:operation
    status: str
    reason: str


def check_calls(pool: SessionPool, account_ids: list[str], sources: dict[str, Any], regions: list[str],
                max_workers: int) -> list[CallRow]:
    """Each API listing of ``sources`` called once (its first page) in each of ``account_ids`` (their roles
    assumed in ``pool``): a regional one in each of ``regions`` (``aws.regions``; ``["all"]``: those enabled
    for the account), a global one in the pool's default region; ``max_workers`` at a time. An account whose
    enabled regions cannot be listed is one row, for that call. As many calls as the first page of each
    listing a run makes: a service control policy that denies a service, or a region, shows here."""
    api = [s for s in sources.values() if s.kind == "api" and s.service and s.operation]
    calls = sorted({(s.service, s.operation, s.scope, json.dumps(s.params, sort_keys=True, default=str)) for s in api}
                   | {(s.service, join.operation, s.scope, json.dumps(_probe_params(join), sort_keys=True, default=str))
                      for s in api for join in s.joins})
    pool.warm({service for service, *_rest in calls} | ({"ec2"} if regions == ["all"] else set()))

    def one(job: tuple[str, str, tuple]) -> CallRow:
        account_id, where, (service, operation, _scope, params) = job
        try:
            client = pool.client(account_id, service, where)
            getattr(client, operation)(**json.loads(params))
        except Exception as exc:  # noqa: BLE001 - each refusal is a row of the report
            status, reason = classify_error(exc)
            return CallRow(account_id, where, f"{service}:{operation}", status if status != OK else "error", reason)
        return CallRow(account_id, where, f"{service}:{operation}", OK, "")

    rows: list[CallRow] = []
    jobs: list[tuple[str, str, tuple]] = []
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="check-calls") as executor:
        found = executor.map(lambda account_id: regions_for(pool, account_id, regions), account_ids)
        for account_id, (account_regions, failure) in zip(account_ids, found):
            if failure is not None:
                rows.append(CallRow(account_id, pool.default_region, "ec2:describe_regions", *failure))
                continue
            for call in calls:
                places = [pool.default_region] if call[2] == "global" else account_regions
                jobs.extend((account_id, where, call) for where in places)
        rows.extend(executor.map(one, jobs))
    return rows


def joined_calls(sources: dict[str, Any]) -> frozenset[str]:
    """The calls (service:operation) that ``sources`` make for their ``[source.join]`` tables alone."""
    api = [s for s in sources.values() if s.kind == "api"]
    return frozenset(f"{s.service}:{j.operation}" for s in api for j in s.joins) - {
        f"{s.service}:{s.operation}" for s in api}


def _probe_params(join: Any) -> dict[str, Any]:
    """The parameters a ``[source.join]``'s call is tried with: its own, and where its values go in a
    filter, that filter with a value no resource has (the answer is empty, the call the run's own); where
    they go in a parameter of ids, none (the call's first page: an id that does not exist may fail it)."""
    if join.filter is None:
        return dict(join.params)
    return join.call_params(["cmdb-connector-check-access"])


def render_calls(rows: list[CallRow], joined: frozenset[str] = frozenset()) -> str:
    """The calls refused or failed, one line each, then the count; ``joined``: the calls (service:operation)
    that are a ``[source.join]``'s, counted apart from the listings."""
    bad = [r for r in rows if r.status != OK]
    lines = [f"  {r.account_id} {r.region} {r.call}: {r.status}: {r.reason}" for r in bad]
    accounts = len({r.account_id for r in rows})
    names = {r.call for r in rows}
    calls = len(names - joined)
    joins = f" and {len(names & joined)} joined call(s)" if names & joined else ""
    regions = len({r.region for r in rows})
    lines.append(f"calls: {calls} listing(s){joins} in {accounts} account(s) and {regions} region(s): "
                 f"{len(rows) - len(bad)} allowed, {len(bad)} "
                 "refused or failed" + (" (their scopes would not be collected, so nothing in them retired)"
                                        if bad else ""))
    return "\n".join(lines)
