"""Which accounts a run targets, and their sessions: the start of the pipeline.

accounts (Organizations or the config, minus exclusions, in this shard) ->
sessions (one assumed role per account, opened now so a refusal is known).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cache
from typing import Any, NamedTuple

import boto3

from ..errors import ConnectorError, UsageError
from ..models import OK, Account, OrganizationTree
from ..settings import ACCOUNT_ID, Settings
from .accounts import discover_accounts, management_account, walk_organization
from .sessions import RoleSettings, SessionPool

log = logging.getLogger(__name__)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    if not text:
        return None
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, for example 2/4") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


def parse_account_ids(values: list[str], option: str) -> frozenset[str]:
    """Account ids given on the command line (``option`` names them in an error): 12 digits each."""
    bad = [value for value in values if not ACCOUNT_ID.match(value)]
    if bad:
        raise UsageError(f"{option} {bad[0]!r}: an AWS account id is 12 digits")
    return frozenset(values)


def in_shard(account_id: str, shard: tuple[int, int] | None) -> bool:
    """A stable partition by a hash of the account id: the N shards cover every account once."""
    if shard is None:
        return True
    k, n = shard
    return int(hashlib.sha256(account_id.encode()).hexdigest(), 16) % n == k - 1


def open_session_pool(settings: Settings) -> SessionPool:
    aws = settings.aws
    regions = [r for r in aws.regions if r != "all"]
    role = RoleSettings(
        role_name=aws.role_name,
        external_id=aws.external_id.get_secret_value(),
        session_name=aws.session_name,
        duration_seconds=aws.session_duration_seconds,
        max_attempts=aws.max_attempts,
        max_pool_connections=max(10, aws.max_workers_per_account * 2),
    )
    return SessionPool(boto3.Session(), role, regions[0] if regions else "us-east-1")


class Targets(NamedTuple):
    accounts: list[Account]
    # the Organization's tree, when asked for and in this shard (the management account's); None
    # when the accounts are listed in aws.accounts: the Organization is then not read
    organization: OrganizationTree | None = None
    # the Organizations client the accounts were listed through (for the accounts' and OUs' tags); None
    # with aws.accounts
    organizations: Any = None
    # every account the configuration targets, in any shard (see Inventory.targeted)
    targeted: frozenset[str] = frozenset()


def target_accounts(settings: Settings, pool: SessionPool, shard: tuple[int, int] | None = None) -> list[Account]:
    return find_targets(settings, pool, shard).accounts


def find_targets(settings: Settings, pool: SessionPool, shard: tuple[int, int] | None = None,
                 tree: bool = False, only: frozenset[str] = frozenset()) -> Targets:
    """The accounts of this run; with ``tree`` (a mapping file of the Organization's structure), the
    Organization's OUs too, and each account's parent on its item (``Parent``). ``only`` (``--account``):
    of the accounts targeted (and in ``shard``), these alone, as a shard of its own would be; one the
    configuration does not target is a ``UsageError``."""
    aws = settings.aws

    def chosen(account_id: str) -> bool:
        return in_shard(account_id, shard) and (not only or account_id in only)

    @cache
    def org_client():
        if aws.organization_account_id:
            status, reason = pool.open(aws.organization_account_id)
            if status != OK:
                raise ConnectorError(
                    f"cannot assume {aws.role_name} in the organization account "
                    f"{aws.organization_account_id} (aws.organization_account_id): {reason}"
                )
            client = pool.client(aws.organization_account_id, "organizations", pool.default_region)
            return client, f"{aws.role_name} in account {aws.organization_account_id}"
        client = boto3.Session().client("organizations", region_name=pool.default_region, config=pool.config)
        return client, "the base credentials"

    accounts = discover_accounts(aws.accounts, aws.exclude_accounts, aws.organizational_units, org_client)
    targeted = frozenset(a.account_id for a in accounts if a.account_id not in aws.exclude_accounts)
    if only - targeted:
        raise UsageError(f"--account {min(only - targeted)}: not an account the configuration targets (the "
                         "Organization's accounts, or aws.accounts, under aws.organizational_units, less "
                         "aws.exclude_accounts)")
    organization = None
    if tree and aws.accounts:
        log.info("accounts: listed in aws.accounts, so the Organization's OUs are not read: its CIs and each "
                 "account's relations to them are left as they are")
    elif tree:
        management = management_account(accounts)
        if management:
            organization = walk_organization(*org_client(), management_account=management)
            accounts = [replace(a, raw={**a.raw, "Parent": organization.parents[a.account_id]})
                        if a.account_id in organization.parents else a for a in accounts]
            if not chosen(management):
                organization = None  # the management account's shard has it
    return Targets([a for a in accounts if chosen(a.account_id)], organization,
                   None if aws.accounts else org_client()[0], targeted)


def open_account_sessions(pool: SessionPool, accounts: list[Account], workers: int = 16) -> list[Account]:
    """Assume the role in every ok account, in parallel; a refusal marks that account, the run goes on."""

    def open_one(account: Account) -> Account:
        if account.status != OK:
            return account
        status, reason = pool.open(account.account_id)
        return account if status == OK else Account(account.account_id, account.name, status, reason, account.raw)

    pool.warm({"sts"})
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="assume") as executor:
        return list(executor.map(open_one, accounts))
