"""collect: run every (account, region, source) unit and keep what it saw.

Each unit ends with a status. Only an ``ok`` unit's records are complete; any
other status means "unknown", and nothing in that scope may be retired.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Callable, ContextManager, Iterable, Iterator

from botocore.exceptions import ClientError

from ..concurrency import map_in_order
from ..mapping.load import CompiledDetail, CompiledJoin, CompiledSource
from ..progress import bar
from ..models import (ERROR, GLOBAL_REGION, OK, ORGANIZATION_KINDS, SKIPPED, Account, Inventory, OrganizationTree,
                      Record, Scope)
from ..ops import stop_requested
from .accounts import TREE_WIDTH
from .sessions import SessionPool, classify_error

log = logging.getLogger(__name__)

# Codes that mean "this region is not enabled for the account".
REGION_OFF_CODES = {"OptInRequired", "AuthFailure", "UnrecognizedClientException"}


@dataclass(frozen=True)
class Unit:
    account_id: str
    region: str
    source: CompiledSource


def jsonable(item: Any) -> Any:
    """The raw item as JSON would carry it, so that a saved inventory maps the same."""
    return json.loads(json.dumps(item, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


def enabled_regions(pool: SessionPool, account_id: str, probe_region: str) -> list[str]:
    client = pool.client(account_id, "ec2", probe_region)
    regions = client.describe_regions(AllRegions=True)["Regions"]
    return sorted(r["RegionName"] for r in regions if r.get("OptInStatus") != "not-opted-in")


class InTurn:
    """AWS calls one after another, bounded by nothing else (one unit on its own, a test)."""

    def slot(self) -> ContextManager[Any]:
        return nullcontext()

    def each(self, call: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [call(item) for item in items]


class AccountCalls:
    """The AWS calls of one account, within the bounds of the whole collection.

    ``slot`` holds one of the account's ``max_workers_per_account`` slots and
    one of the ``max_workers`` slots of the run while a call (or a listing's
    pages) is made. ``each`` makes the calls of many items several at once,
    on threads of the unit's own (so that one account's queue of items never
    holds up another's), every call in a slot; the results keep the items'
    order and the first failure is raised, as one after another would.
    """

    def __init__(self, account: threading.Semaphore, run: threading.Semaphore, width: int):
        self._account, self._run, self._width = account, run, width

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._account, self._run:  # always in this order: no two threads wait on each other
            yield

    def each(self, call: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return map_in_order(lambda item: self._bounded(call, item), items, self._width, "items")

    def _bounded(self, call: Callable[[Any], Any], item: Any) -> Any:
        with self.slot():
            return call(item)


def fetch_items(client, source: CompiledSource, tags: bool = False, calls: InTurn | AccountCalls | None = None,
                shared: "SharedAnswers | None" = None) -> list[dict[str, Any]]:
    """Every item of one source, every page; with ``tags``, each item's tags
    where the source needs a call per item for them.

    The calls made per item (a detail call, a tags call) run through
    ``calls.each``: one after another by default, or several at once within
    the account's bound.
    """
    calls = calls or InTurn()
    with calls.slot():
        if client.can_paginate(source.operation):
            pages: Iterable[Any] = client.get_paginator(source.operation).paginate(**source.params)
        else:
            pages = [getattr(client, source.operation)(**source.params)]
        items: list[Any] = []
        for page in pages:
            found = source.items(page) if source.items else page
            if found is not None and not isinstance(found, list):  # a dict's keys would be taken for items
                raise ValueError(f"source.items {source.items_text!r} finds {type(found).__name__}, not a list of "
                                 f"items, in an answer of {source.operation}: check the mapping file")
            items.extend(found or [])
    detail = source.detail
    tags_call = source.tags_call if tags else None
    if detail is not None or tags_call is not None:
        items = calls.each(lambda item: _per_item(client, detail, tags_call, source.tags_none_when, item), items)
    for join in source.joins:
        items = _joined(client, join, items, calls, shared)
    return jsonable(items)


class SharedAnswers:
    """The answers of a ``[source.join]`` with ``shared = true`` (AWS's own catalogue, the same for every
    account: the instance types), kept for the run per region (the client's), so that each value is asked
    once per region rather than once per account. A value asked and not found is kept as such: not asked
    again. A value another unit is asking is waited for, not asked again at the same time (the first
    units of a run start together); if that unit's call fails, the units that waited ask it themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], dict[Any, Any]] = defaultdict(dict)  # (region, join) -> value -> entry
        self._asked: dict[tuple[str, str], set[Any]] = defaultdict(set)
        # (region, join) -> value -> set once the unit asking it is done (answered or failed)
        self._asking: dict[tuple[str, str], dict[Any, threading.Event]] = defaultdict(dict)

    def answers(self, where: tuple[str, str], wanted: set[Any],
                fetch: Callable[[set[Any]], dict[Any, Any]]) -> dict[Any, Any]:
        """The entries found for the ``wanted`` values: ``fetch`` (values -> their entries) asks for
        those no unit has asked or is asking; those another unit is asking are waited for. A failure of
        ``fetch`` is raised, its values left to whoever asks next."""
        while True:
            with self._lock:
                asked, asking = self._asked[where], self._asking[where]
                mine = {value for value in wanted if value not in asked and value not in asking}
                others = {asking[value] for value in wanted if value in asking}
                done = threading.Event()
                asking.update(dict.fromkeys(mine, done))
            if mine:
                try:
                    found = fetch(mine)
                except BaseException:
                    self._settle(where, mine, done, None)
                    raise
                self._settle(where, mine, done, found)
            if not others:
                break
            for other in others:
                other.wait()  # then again: a value whose unit failed is this unit's to ask
        with self._lock:
            known = self._answers[where]
            return {value: known[value] for value in wanted if value in known}

    def _settle(self, where: tuple[str, str], values: set[Any], done: threading.Event,
                found: dict[Any, Any] | None) -> None:
        with self._lock:
            if found is not None:
                self._asked[where].update(values)
                self._answers[where].update(found)
            for value in values:
                del self._asking[where][value]
        done.set()


def _joined(client, join: CompiledJoin, items: list[Any], calls: InTurn | AccountCalls,
            shared: SharedAnswers | None = None) -> list[Any]:
    """The items with the answers of ``[source.join]``: one call (all its pages) per ``per_call`` distinct
    values, several at once within the account's bound; with ``join.shared``, only the values no unit of
    the region asked yet (or is asking). Any error fails the unit, as a detail call's does."""

    def ask(values: list[Any]) -> list[Any]:
        params = join.call_params(values)
        if client.can_paginate(join.operation):
            return list(client.get_paginator(join.operation).paginate(**params))
        return [getattr(client, join.operation)(**params)]

    def answer(chunks: list[list[Any]]) -> dict[Any, Any]:
        return join.index(page for pages in calls.each(ask, chunks) for page in pages)

    wanted = join.values(items)
    if shared is None or not join.shared:
        return join.merge(items, answer(join.chunks(wanted)))
    index = shared.answers((client.meta.region_name, join.text), wanted, lambda values: answer(join.chunks(values)))
    return join.merge(items, index)


def _per_item(client, detail: CompiledDetail | None, tags_call: CompiledDetail | None, none_when: tuple[str, ...],
              item: Any) -> Any:
    """One item with the answers of its detail call and its tags call."""
    if detail is not None:
        item = detail.merge(item, detail.ask(client, item))
    if tags_call is not None:
        item = _with_tags(client, tags_call, none_when, item)
    return item


def _with_tags(client, call: CompiledDetail, none_when: tuple[str, ...], item: Any) -> Any:
    """The item, with the answer of its tags call kept beside it (none: no tags).

    An item that is not an object has nowhere to keep it: its tags stay unknown.
    """
    if not isinstance(item, dict):
        return item
    try:
        answer = call.ask(client, item)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in none_when:
            raise  # the unit fails: its tags are unknown, not empty
        answer = None
    if isinstance(answer, dict):
        answer.pop("ResponseMetadata", None)
    return call.merge(item, answer)


def _interleave(per_account: list[list[Unit]]) -> list[Unit]:
    """Round-robin across accounts, so the per-account limit rarely blocks a worker."""
    return [u for group in zip_longest(*per_account) for u in group if u is not None]


class Collector:
    """Runs one unit per call. AWS calls stay within ``max_per_account`` per
    account and ``max_workers`` in all, whether they list a unit's items or
    are made per item (those of one unit run several at once)."""

    def __init__(self, pool: SessionPool, max_per_account: int, tags: bool = False, max_workers: int = 1):
        self.pool = pool
        self.tags = tags
        self._per_account = max_per_account
        self._account_slots: dict[str, threading.Semaphore] = defaultdict(
            lambda: threading.Semaphore(max_per_account)
        )
        self._slots_lock = threading.Lock()
        self._run_slots = threading.Semaphore(max_workers)
        self.shared = SharedAnswers()

    def _calls(self, account_id: str) -> AccountCalls:
        with self._slots_lock:
            account = self._account_slots[account_id]
        return AccountCalls(account, self._run_slots, self._per_account)

    def run_unit(self, unit: Unit) -> tuple[Scope, list[Record]]:
        source = unit.source
        if stop_requested():  # a stop signal: the units not begun are left, unknown (nothing in them retired)
            return Scope(unit.account_id, unit.region, source.name, SKIPPED, "not collected: the run was stopped"), []
        region = unit.region if unit.region != GLOBAL_REGION else self.pool.default_region
        calls = self._calls(unit.account_id)
        try:
            with calls.slot():  # a client may have to renew the account's credentials first
                client = self.pool.client(unit.account_id, source.service, region)
            items = fetch_items(client, source, self.tags, calls, self.shared)
        except Exception as exc:  # noqa: BLE001 - every failure is kept in its unit
            status, reason = classify_error(exc)
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in REGION_OFF_CODES or type(exc).__name__ == "EndpointConnectionError":
                status, reason = SKIPPED, f"region not enabled or unreachable: {reason}"
            log.warning("account %s region %s source %s: %s: %s",
                        unit.account_id, unit.region, source.name, status, reason,
                        extra={"account": unit.account_id, "region": unit.region, "source": source.name})
            return Scope(unit.account_id, unit.region, source.name, status, reason), []
        records = [Record(unit.account_id, unit.region, source.name, item) for item in items]
        return Scope(unit.account_id, unit.region, source.name, OK, None), records


def collect_inventory(
    pool: SessionPool,
    accounts: list[Account],
    sources: dict[str, CompiledSource],
    regions: list[str],
    max_workers: int,
    max_per_account: int,
    tags: bool = False,
    organization: OrganizationTree | None = None,
    organizations: Any = None,
    sink: Callable[[list[Record]], None] | None = None,
) -> Inventory:
    """accounts (already opened in ``pool``) -> the inventory of every unit.

    With ``tags``, the sources whose items carry no tags call for them, per item: for the accounts and
    the OUs, through ``organizations``, the client the accounts were listed through. The sources of the
    Organization's structure get ``organization``'s items (the accounts stage read them).

    With ``sink``, the records go to it, in the order the inventory would hold them, each unit's as soon
    as it is in (in this thread), and the inventory holds none: a run maps them as they come, and keeps
    no raw item longer than that.
    """
    inventory = Inventory(accounts=list(accounts))
    org_tags = OrganizationTags(organizations if tags else None, max_workers)
    _record_organization(organization, [s for s in sources.values() if s.kind in ORGANIZATION_KINDS], inventory,
                         org_tags)
    sources = {name: s for name, s in sources.items() if s.kind not in ORGANIZATION_KINDS}
    reachable = [a for a in accounts if a.status == OK]
    # the accounts' own items: those reached, and those closed (their resources are not collected, but
    # Organizations says what became of them)
    listed = reachable + [a for a in accounts if a.closed]
    account_items = {name: dict(zip((a.account_id for a in listed), org_tags.each(s, [a.raw for a in listed])))
                     for name, s in sources.items() if s.kind == "account"}
    for account in listed[len(reachable):]:
        _record_account(account, sources, inventory, account_items)
    if "all" in regions:
        pool.warm({"ec2"})
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="regions") as executor:
        found = list(executor.map(lambda a: regions_for(pool, a.account_id, regions), reachable))
    per_account: list[list[Unit]] = []
    for account, (account_regions, failure) in zip(reachable, found):
        if failure is not None:
            status, reason = failure
            log.warning("account %s: %s", account.account_id, reason, extra={"account": account.account_id})
            inventory.scopes.extend(Scope(account.account_id, "*", s.name, status, reason) for s in sources.values())
            continue
        per_account.append(_account_units(account, account_regions, sources, inventory, account_items))

    ordered = _interleave(per_account)
    pool.warm({unit.source.service for unit in ordered})
    collector = Collector(pool, max_per_account, tags, max_workers)
    keep = inventory.records.extend
    if sink is not None:
        sink(inventory.records)  # the Organization's, the accounts' and the regions' own items, first
        inventory.records, keep = [], sink
    with bar("collect", len(ordered)) as progress, \
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="collect") as executor:
        for scope, records in executor.map(collector.run_unit, ordered):
            inventory.scopes.append(scope)
            keep(records)
            progress.advance(1, scope.status)
    return inventory


class OrganizationTags:
    """The tags of the items the accounts stage read (accounts, OUs), where their source calls for them:
    through the Organizations client (``ListTagsForResource``), a few at once. Without the client (tags
    off, or the accounts listed in aws.accounts) the items stay as they are: their tags unknown."""

    WIDTH = TREE_WIDTH  # Organizations allows few requests a second

    def __init__(self, client: Any, max_workers: int):
        self.client, self.width = client, max(1, min(self.WIDTH, max_workers))

    def each(self, source: CompiledSource, items: list[Any]) -> list[Any | tuple[str, str]]:
        """Each item with its tags, or (status, reason) where its call failed."""
        if self.client is None or source.tags_call is None:
            return list(items)
        return map_in_order(lambda item: self._one(source, item), items, self.width, "org-tags")

    def _one(self, source: CompiledSource, item: Any) -> Any | tuple[str, str]:
        try:
            return _with_tags(self.client, source.tags_call, source.tags_none_when, item)
        except Exception as exc:  # noqa: BLE001 - kept in the item's scope
            status, reason = classify_error(exc)
            return (status if status != OK else ERROR, f"tags: {reason}")


def _record_organization(tree: OrganizationTree | None, sources: list[CompiledSource], inventory: Inventory,
                         tags: OrganizationTags) -> None:
    """The Organization and its OUs, in the management account's global scope. Without the tree (the
    accounts are listed in aws.accounts, or another shard has the management account) nothing: no scope
    collected, so none of their CIs is retired. An OU whose tags could not be read fails the OUs' scope."""
    if tree is None:
        return
    for source in sources:
        items = [] if tree.failure else tags.each(source, [tree.organization] if source.kind == "organization"
                                                   else tree.units)
        failure = tree.failure or next((i for i in items if isinstance(i, tuple)), None)
        if failure is not None:
            log.warning("organization: source %s: %s: %s", source.name, *failure, extra={"source": source.name})
            inventory.scopes.append(Scope(tree.management_account, GLOBAL_REGION, source.name, *failure))
            continue
        inventory.scopes.append(Scope(tree.management_account, GLOBAL_REGION, source.name))
        inventory.records.extend(Record(tree.management_account, GLOBAL_REGION, source.name, jsonable(item))
                                 for item in items)


def _record_account(account: Account, sources: dict[str, CompiledSource], inventory: Inventory,
                    account_items: dict[str, dict[str, Any]]) -> None:
    """The account's own item, for each source of kind "account": with its tags, or, where they could not
    be read, that scope failed."""
    for source in sources.values():
        if source.kind != "account":
            continue
        item = account_items[source.name][account.account_id]
        if isinstance(item, tuple):
            log.warning("account %s source %s: %s: %s", account.account_id, source.name, *item,
                        extra={"account": account.account_id, "source": source.name})
            inventory.scopes.append(Scope(account.account_id, GLOBAL_REGION, source.name, *item))
            continue
        inventory.scopes.append(Scope(account.account_id, GLOBAL_REGION, source.name))
        inventory.records.append(Record(account.account_id, GLOBAL_REGION, source.name, jsonable(item)))


def _account_units(account: Account, regions: list[str], sources: dict[str, CompiledSource],
                   inventory: Inventory, account_items: dict[str, dict[str, Any]]) -> list[Unit]:
    """The API units of one account; the account (its item from ``account_items``: with its tags, or why
    they could not be read) and its regions are recorded at once."""
    units = []
    _record_account(account, sources, inventory, account_items)
    for source in sources.values():
        if source.kind == "account":
            continue
        if source.kind == "region":
            for region in regions:
                inventory.scopes.append(Scope(account.account_id, region, source.name))
                inventory.records.append(Record(account.account_id, region, source.name, {"RegionName": region}))
        elif source.scope == "global":
            units.append(Unit(account.account_id, GLOBAL_REGION, source))
        else:
            units.extend(Unit(account.account_id, region, source) for region in regions)
    return units


def regions_for(pool: SessionPool, account_id: str, regions: list[str]) -> tuple[list[str], tuple[str, str] | None]:
    """The account's regions (``aws.regions``; ``["all"]``: those enabled for it), or the (status, reason)
    that makes all its scopes unknown."""
    if regions != ["all"]:
        return list(regions), None
    try:
        return enabled_regions(pool, account_id, pool.default_region), None
    except Exception as exc:  # noqa: BLE001 - the account's scopes become unknown
        status, reason = classify_error(exc)
        return [], (status if status != OK else ERROR, f"cannot list enabled regions: {reason}")
