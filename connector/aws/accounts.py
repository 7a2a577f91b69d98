"""accounts: which AWS accounts this run targets.

From Organizations (every ACTIVE account, optionally under some OUs), or from
the explicit list in the config; minus the excluded ones. A non-ACTIVE
account is reported as skipped, not failed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from ..concurrency import map_in_order
from ..errors import ConnectorError
from ..models import OK, SKIPPED, Account, OrganizationTree
from .sessions import classify_error

log = logging.getLogger(__name__)

ORG_NOT_USABLE = {
    "AccessDeniedException",
    "AccessDenied",
    "AWSOrganizationsNotInUseException",
}


class OrganizationsError(ConnectorError):
    """Organizations could not list the accounts: the run cannot know its scope."""


def account_state(raw: dict[str, Any]) -> str:
    """``State`` (the current field), falling back to the older ``Status``."""
    return str(raw.get("State") or raw.get("Status") or "UNKNOWN")


def _paginate(client, operation: str, key: str, **params) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in client.get_paginator(operation).paginate(**params):
        items.extend(page.get(key, []))
    return items


def _accounts_under(client, parent_id: str) -> list[dict[str, Any]]:
    found = _paginate(client, "list_accounts_for_parent", "Accounts", ParentId=parent_id)
    for ou in _paginate(client, "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent_id):
        found.extend(_accounts_under(client, ou["Id"]))
    return found


def _summary(organization: dict[str, Any]) -> dict[str, Any]:
    """What an account's or an OU's item carries of its Organization (``Organization``)."""
    return {k: organization.get(k) for k in ("Id", "Arn", "MasterAccountId") if organization.get(k)}


def management_account(accounts: list[Account]) -> str | None:
    """The Organization's management account, as the accounts' items name it; None without Organizations."""
    return next((a.raw["Organization"]["MasterAccountId"] for a in accounts
                 if a.raw.get("Organization", {}).get("MasterAccountId")), None)


def list_organization_accounts(client, organizational_units: list[str], where: str) -> list[dict[str, Any]]:
    """Raw Organizations account items, each with the organization attached."""
    try:
        organization = client.describe_organization().get("Organization", {})
        if organizational_units:
            raw: list[dict[str, Any]] = []
            for ou in organizational_units:
                raw.extend(_accounts_under(client, ou))
        else:
            raw = _paginate(client, "list_accounts", "Accounts")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ORG_NOT_USABLE:
            raise OrganizationsError(
                f"Organizations refused to list accounts through {where} ({code}). "
                "ListAccounts works only in the management account or a delegated-admin "
                "account: set aws.organization_account_id to that account (its CMDBReadRole "
                "needs organizations:List*), or list the accounts in aws.accounts."
            ) from None
        raise OrganizationsError(f"Organizations failed through {where}: {exc}") from None
    except BotoCoreError as exc:
        raise OrganizationsError(f"Organizations unreachable through {where}: {exc}") from None
    if not raw:
        raise OrganizationsError(
            f"Organizations listed no accounts through {where}: this is not the management "
            "or a delegated-admin account. Set aws.organization_account_id, or aws.accounts."
        )
    org = _summary(organization)
    unique = {item["Id"]: {**item, "Organization": org} for item in raw}
    return [unique[k] for k in sorted(unique)]


# Organizations allows few requests a second: the nodes of one level of the tree are listed this many at once
TREE_WIDTH = 4


def walk_organization(client, where: str, management_account: str) -> OrganizationTree:
    """The Organization's tree, root first: the Organization (with its roots), every OU with its
    ``Parent`` ({Id, Type: ROOT | ORGANIZATIONAL_UNIT, Arn}), and each account's parent in
    ``parents``. Two listings per node (its accounts, its OUs), as many pages as they take; the nodes
    of one level ``TREE_WIDTH`` at once.

    A refusal or a failure is kept in ``failure``, not raised: the run goes on without the tree, and
    nothing that depends on it is retired or deleted (see ``known_when`` in the account's mapping).
    """
    try:
        organization = client.describe_organization().get("Organization", {})
        roots = _paginate(client, "list_roots", "Roots")
        summary = _summary(organization)
        units: list[dict[str, Any]] = []
        parents: dict[str, dict[str, str]] = {}

        def children(node: tuple[dict[str, Any], str, str]) -> tuple[list[dict], list[dict]]:
            return (_paginate(client, "list_accounts_for_parent", "Accounts", ParentId=node[0]["Id"]),
                    _paginate(client, "list_organizational_units_for_parent", "OrganizationalUnits",
                              ParentId=node[0]["Id"]))

        level = [(root, "ROOT", root["Id"]) for root in roots]
        while level:
            below = []
            for (node, kind, root_id), (accounts, found) in zip(level, map_in_order(children, level, TREE_WIDTH, "tree")):
                parent = {"Id": node["Id"], "Type": kind, "Arn": node.get("Arn", "")}
                parents.update((account["Id"], parent) for account in accounts)
                for unit in found:
                    units.append({**unit, "Parent": parent, "RootId": root_id, "Organization": summary})
                    below.append((unit, "ORGANIZATIONAL_UNIT", root_id))
            level = below
    except (ClientError, BotoCoreError) as exc:
        status, reason = classify_error(exc)
        log.warning("organization: cannot read its OUs through %s: %s", where, reason)
        return OrganizationTree(management_account, {}, [], failure=(status, f"cannot read the Organization's "
                                                                              f"OUs through {where}: {reason}"))
    return OrganizationTree(management_account, {**organization, "Roots": roots},
                            sorted(units, key=lambda u: u["Id"]), parents=parents)


def discover_accounts(
    explicit: list[str],
    excluded: list[str],
    organizational_units: list[str],
    org_client_factory: Callable[[], tuple[Any, str]],
) -> list[Account]:
    """The target accounts, each ``ok`` or ``skipped`` with the reason."""
    if explicit:
        raws = [{"Id": a} for a in dict.fromkeys(explicit)]  # its name and Organization: not known here
    else:
        client, where = org_client_factory()
        raws = list_organization_accounts(client, organizational_units, where)
    accounts = []
    for raw in raws:
        account_id = raw["Id"]
        name = raw.get("Name") or account_id
        state = account_state(raw) if not explicit else "ACTIVE"
        if account_id in excluded:
            accounts.append(Account(account_id, name, SKIPPED, "excluded by aws.exclude_accounts", raw))
        elif state != "ACTIVE":
            accounts.append(Account(account_id, name, SKIPPED, f"account state is {state}", raw, closed=True))
        else:
            accounts.append(Account(account_id, name, OK, None, raw))
    log.info("accounts: %d targeted, %d skipped", sum(a.status == OK for a in accounts),
             sum(a.status == SKIPPED for a in accounts))
    return accounts
