"""plan (pure): desired CIs + what the CMDB holds + scope statuses -> a plan.

No clients here. The safety rules live in this module:

- unknown is not empty: only a scope collected ``ok`` in this run can lose CIs;
- every retire is re-checked in code on the fetched record (ownership, class,
  scope), because ServiceNow silently drops query conditions it cannot use;
- the blast-radius guard;
- comparison on ServiceNow's string form, normalised in ``snow_value`` only,
  so that an unchanged estate plans zero writes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

from ..arn import account_and_region
from ..mapping.functions import SNOW_TIMESTAMP, all_strings, snow_time, snow_value  # snow_value: the one normalisation
from ..mapping.schema import DEFAULT_RETIRE
from ..models import OK, DesiredCI, ExistingCI, ExistingKeyValue, ExistingRelation, MappingProblem, Scope
from ..servicenow.cmdb import KV_TABLE  # a table's name, no client

CREATE, UPDATE, RETIRE, REVIVE = "create", "update", "retire", "revive"
REFRESH = "refresh"  # an unchanged CI's last_discovered stamped again, when it has grown old
LAST_DISCOVERED, FIRST_DISCOVERED = "last_discovered", "first_discovered"
# The guards on tag and relation deletions, and on creates beside held retires,
# trip only above this many in a class: a few tags or links removed, or a few
# resources replaced, is an everyday change.
GUARD_FLOOR = 10
CIKey = tuple[str, str]  # (table, identity)


@dataclass(frozen=True)
class TablePolicy:
    """What plan needs to know of one class, taken from its mapping."""

    table: str
    identity_field: str
    # every source that feeds the table; a CI may be retired only when all of
    # them were collected ok in its account and region
    sources: tuple[str, ...]
    retire: dict[str, str]
    revive: dict[str, str]
    # (relation type, other table, role of this table's CI)
    relations: tuple[tuple[str, str, str], ...] = ()
    # string field -> its max_length in the instance (sys_dictionary): longer values are cut to fit
    max_lengths: dict[str, int] = field(default_factory=dict)
    # fields the mapping writes that the class does not have on the instance (sys_dictionary)
    missing_fields: frozenset[str] = frozenset()
    # the Organization's structure (the Organization, its OUs: sources of an ORGANIZATION_KINDS kind), not
    # an account's resources: retired only when a walk of the tree no longer finds them, never with the
    # account their correlation_id names (the management account) by --retire-account, nor named with it
    structure: bool = False


@dataclass(frozen=True)
class PlanOptions:
    discovery_source: str
    retire: bool = True
    max_retire_fraction: float = 0.25
    force: bool = False
    # The run's time, ServiceNow's UTC "YYYY-MM-DD HH:MM:SS"; with last_discovered_days > 0, every CI
    # written is stamped with it (last_discovered; first_discovered too on a create), and an unchanged CI
    # whose last_discovered is older than that many days is stamped again (see _stale_before).
    now: str = ""
    last_discovered_days: float = 0.0
    # accounts whose owned CIs are all retired, though not collected (run --retire-account: accounts that the
    # configuration no longer targets, which the operator says are gone); the guard still holds
    retire_accounts: frozenset[str] = frozenset()
    # reconcile.retire_after_hours: a CI gone from AWS is retired only once it has been gone that long, by
    # ``absent_since`` (each such CI's first run without it, from the previous run: see Plan.absent); 0
    # retires it in the first run that does not find it
    retire_after_hours: float = 0.0
    absent_since: Mapping[CIKey, str] = field(default_factory=dict)

    @property
    def stamps(self) -> bool:
        return bool(self.now) and self.last_discovered_days > 0


@dataclass(frozen=True)
class CIChange:
    action: str
    table: str
    identity: str
    sys_id: str | None
    diff: dict[str, tuple[str, str]]  # field -> (old, new)
    note: str = ""

    @property
    def payload(self) -> dict[str, str]:
        return {name: new for name, (_old, new) in self.diff.items()}


@dataclass(frozen=True)
class RelationChange:
    action: str  # create | delete
    type: str
    parent: CIKey
    child: CIKey
    sys_id: str | None = None  # of the relation, for a delete


@dataclass(frozen=True)
class KeyValueChange:
    """One tag of one CI, in ``cmdb_key_value``."""

    action: str  # create | update | delete
    ci: CIKey
    key: str
    old: str
    new: str
    sys_id: str | None = None  # of the cmdb_key_value row, for an update or a delete
    # a create for a CI adopted in this run, whose rows (not ours until now) were not read: its row for the
    # key is looked for first, and given the value if found
    check_first: bool = False


@dataclass
class Plan:
    changes: list[CIChange] = field(default_factory=list)
    relation_changes: list[RelationChange] = field(default_factory=list)
    key_value_changes: list[KeyValueChange] = field(default_factory=list)
    unchanged: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    relations_unchanged: int = 0
    key_values_unchanged: int = 0
    # identity -> sys_id of every CI that exists now and that plan matched or owns
    sys_ids: dict[CIKey, str] = field(default_factory=dict)
    duplicates: list[dict] = field(default_factory=list)
    # CIs whose create a guard held back, with their relations and tags
    held: set[CIKey] = field(default_factory=set)
    guards: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # account -> table -> how many of our active CIs it has, left as they are, where the configuration no
    # longer targets the account (see plan_changes' ``targeted``)
    untargeted: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    # with reconcile.retire_after_hours: every owned CI still active that AWS no longer has (in a scope
    # collected in full, or one that was not collected and was gone before) -> (its sys_id, since when it is
    # gone, ServiceNow's UTC time): the next run's PlanOptions.absent_since. ``retire_pending``: those of them
    # not gone long enough to be retired in this run -> the time from which a run retires them
    absent: dict[CIKey, tuple[str, str]] = field(default_factory=dict)
    retire_pending: dict[CIKey, str] = field(default_factory=dict)


def _ok_scopes(scopes: Iterable[Scope], problems: Iterable[MappingProblem]) -> set[tuple[str, str, str]]:
    ok = {s.key for s in scopes if s.status == OK}
    return ok - {p.scope for p in problems}


def _index(existing: Iterable[ExistingCI], identity_field: str
           ) -> tuple[list[ExistingCI], dict[str, list[ExistingCI]], dict[str, list[ExistingCI]]]:
    """Existing CIs once each (by sys_id), by identity (the value of ``identity_field``), and the unkeyed
    ones (no identity) by ``object_id``."""
    unique = list({ci.sys_id: ci for ci in existing}.values())
    by_identity: dict[str, list[ExistingCI]] = defaultdict(list)
    unkeyed_by_object: dict[str, list[ExistingCI]] = defaultdict(list)
    for ci in unique:
        key = ci.fields.get(identity_field, "")
        if key:
            by_identity[key].append(ci)
        elif ci.fields.get("object_id"):
            unkeyed_by_object[ci.fields["object_id"]].append(ci)
    return unique, by_identity, unkeyed_by_object


def _by_object(ci: DesiredCI, unkeyed: dict[str, list[ExistingCI]]) -> list[ExistingCI]:
    """The CIs without identity that hold the desired CI's ``object_id``: those it may adopt."""
    return unkeyed.get(snow_value(ci.fields.get("object_id")), [])


def _desired_payload(ci: DesiredCI, options: PlanOptions) -> dict[str, str]:
    fields = ci.fields
    if all_strings(fields.values()):
        payload = dict(fields)  # already ServiceNow's string form: nothing to normalise
    else:
        payload = {name: snow_value(value) for name, value in fields.items()}
    payload["discovery_source"] = options.discovery_source
    return payload


HEX_DIGITS = "0123456789abcdef"
UNSTAMPED = "unstamped"  # the key of _stale_before for the CIs never stamped


def _stale_before(options: PlanOptions) -> dict[str, str] | None:
    """When an unchanged CI's ``last_discovered`` is old enough to stamp again: the last hex digit of its
    sys_id -> the time before which it is (compared as strings, which ServiceNow's form sorts in time
    order), and "" -> the time for any other sys_id; and UNSTAMPED -> the last digits of the CIs never
    stamped that are due today ("*" for any other sys_id). None when nothing is stamped.

    A CI is stamped again once its stamp is older than between half and all of
    ``last_discovered_days``, by its sys_id: CIs made in one run do not all come
    due in one later run, but over half the period, and stay spread after that.
    CIs that were never stamped (stamping just turned on, with
    ``last_discovered_days`` from 0) come due over the same half period, a share
    each day by the last digit of their sys_id, rather than all in one run.
    """
    if not options.stamps:
        return None
    now = _run_time(options)
    period = timedelta(days=options.last_discovered_days)

    def before(fraction: float) -> str:
        return (now - period * fraction).strftime(SNOW_TIMESTAMP)

    days = max(1, -(-options.last_discovered_days // 2))  # half the period, in whole days
    today = now.toordinal() % days
    unstamped = "".join(d for d in HEX_DIGITS if int(d, 16) % days == today) + ("*" if today == 0 else "")
    return {"": before(1.0), **{digit: before(1 - int(digit, 16) / 32) for digit in HEX_DIGITS + HEX_DIGITS.upper()},
            UNSTAMPED: unstamped}


def _run_time(options: PlanOptions) -> datetime:
    """The run's time, ``options.now``, as a datetime (UTC)."""
    now = snow_time(options.now)
    if now is None:
        raise ValueError(f"PlanOptions.now is not ServiceNow's UTC time (YYYY-MM-DD HH:MM:SS): {options.now!r}")
    return now


def _due_refresh(ci: DesiredCI, current: ExistingCI, stale_before: dict[str, str] | None) -> bool:
    """Is the unchanged ``current``'s last_discovered old enough to stamp again, or, never stamped, is it
    its day? Never where nothing is stamped, nor where the mapping gives last_discovered a value of its own."""
    if stale_before is None or LAST_DISCOVERED in ci.fields:
        return False
    stamp = current.fields.get(LAST_DISCOVERED, "")
    if not stamp:
        digit = current.sys_id[-1:].lower()
        return (digit if digit and digit in HEX_DIGITS else "*") in stale_before[UNSTAMPED]
    return stamp < (stale_before.get(current.sys_id[-1:]) or stale_before[""])


def _on_file(ci: DesiredCI, current: ExistingCI, source: str, retired_when) -> bool:
    """Does ``current`` hold every value of ``ci`` already, as the same string, and is it ours and active
    (``retired_when``: the retire values' items, see _is_retired)? Then there is nothing to write."""
    have = current.fields.items()
    return (ci.fields.items() <= have and current.fields.get("discovery_source") == source
            and not (retired_when and retired_when <= have))


def _refresh(table: str, ci: DesiredCI, current: ExistingCI, options: PlanOptions) -> CIChange:
    """An unchanged CI's last_discovered, grown old, stamped again."""
    return CIChange(REFRESH, table, ci.identity, current.sys_id, {
        LAST_DISCOVERED: (current.fields.get(LAST_DISCOVERED, ""), options.now)})


def _stamped(change: CIChange, options: PlanOptions, current: dict[str, str], desired: dict[str, Any]) -> CIChange:
    """A write to a CI, with last_discovered set to the run's time (a CI written was seen now), unless
    its mapping gives last_discovered a value of its own: that one is the CI's, on every run."""
    if not options.stamps or LAST_DISCOVERED in desired or current.get(LAST_DISCOVERED) == options.now:
        return change
    return replace(change, diff={**change.diff, LAST_DISCOVERED: (snow_value(current.get(LAST_DISCOVERED)), options.now)})


def _diff(current: dict[str, str], wanted: dict[str, str]) -> dict[str, tuple[str, str]]:
    if wanted.items() <= current.items():
        return {}  # every wanted value is there already, as the same string
    return {
        name: (snow_value(current.get(name)), value)
        for name, value in wanted.items()
        if snow_value(current.get(name)) != value
    }


def _is_retired(ci: ExistingCI, policy: TablePolicy) -> bool:
    return bool(policy.retire) and policy.retire.items() <= ci.fields.items()


def _without_missing_fields(table: str, desired: list[DesiredCI], policy: TablePolicy, plan: Plan) -> list[DesiredCI]:
    """The desired CIs less the fields the class does not have: the instance ignores them on write, so they
    would be written again on every run, on every CI. One warning per field."""
    missing = policy.missing_fields
    found = Counter(name for ci in desired for name in ci.fields if name in missing)
    if not found:
        return desired
    plan.warnings.extend(
        f"{table}.{name}: the class has no such field on this instance (sys_dictionary), so it is not written "
        f"({count} CI(s)). Check the field's name in its mapping, or add the field to the class."
        for name, count in sorted(found.items()))
    return [replace(ci, fields={k: v for k, v in ci.fields.items() if k not in missing}) for ci in desired]


def _fitted(table: str, desired: list[DesiredCI], policy: TablePolicy, plan: Plan) -> tuple[list[DesiredCI], set[str]]:
    """The desired CIs with every value longer than its field cut to the field's length, as the
    instance would store it (so a rerun compares equal, and writes nothing), one warning per
    field. A CI whose identity is too long is left out and held, with its relations and tags:
    cut, it would match nothing, and each run would create it again. Returns (the CIs, the
    identities of those left out, whole and cut, so that the CIs which hold them are not retired)."""
    limits = policy.max_lengths
    if not limits:
        return desired, set()
    identity_limit = limits.get(policy.identity_field)
    fitted: list[DesiredCI] = []
    cut: dict[str, list] = {}  # field -> [count, an identity, the value's length]
    left_out: set[str] = set()
    for ci in desired:
        if identity_limit is not None and len(ci.identity) > identity_limit:
            cut.setdefault(policy.identity_field, [0, ci.identity, len(ci.identity)])[0] += 1
            plan.held.add((table, ci.identity))
            left_out.update((ci.identity, ci.identity[:identity_limit]))  # its CI may hold either
            continue
        long = {name: text for name, value in ci.fields.items()
                if name in limits and len(text := snow_value(value)) > limits[name]}
        if long:
            for name, text in long.items():
                cut.setdefault(name, [0, ci.identity, len(text)])[0] += 1
            ci = replace(ci, fields={**ci.fields, **{name: text[: limits[name]] for name, text in long.items()}})
        fitted.append(ci)
    for name, (count, identity, length) in sorted(cut.items()):
        if name == policy.identity_field:
            plan.warnings.append(
                f"{table}.{name}: {count} CI(s) not written: the identity is longer than the field's "
                f"{limits[name]} characters (sys_dictionary), e.g. {identity} ({length}). Map a shorter identity, "
                "or lengthen the field.")
        else:
            plan.warnings.append(
                f"{table}.{name}: {count} value(s) longer than the field's {limits[name]} characters "
                f"(sys_dictionary) cut to fit, e.g. {identity} ({length} characters). To keep the whole value, "
                f"lengthen the field; to say where it is cut, add truncate:{limits[name]} to the mapping.")
    return fitted, left_out


def _plan_table(
    table: str,
    desired: list[DesiredCI],
    existing: list[ExistingCI],
    policy: TablePolicy,
    ok_scopes: set[tuple[str, str, str]],
    options: PlanOptions,
    plan: Plan,
    stale_before: dict[str, str] | None = None,
    targeted: frozenset[str] | None = None,
) -> None:
    """One class's plan; ``stale_before``: ``_stale_before(options)``, made once for every class;
    ``targeted``: see plan_changes."""
    if policy.identity_field in policy.missing_fields:
        _hold_class(table, desired, plan, (
            f"{table}: the class has no field {policy.identity_field} on this instance (sys_dictionary), and it is "
            f"the mapping's identity: no CI could be matched, and each run would create them all again. None of its "
            f"{len(desired)} CI(s) written, none retired. Check [target] identity in its mapping, or add the field "
            "to the class."))
        return
    unique, by_identity, unkeyed = _index(existing, policy.identity_field)
    matched: set[str] = set()  # CIs that match one desired CI
    claimed: set[str] = set()  # and those that match it with others (duplicates)
    sys_ids, source, unchanged = plan.sys_ids, options.discovery_source, 0
    retired_when = policy.retire.items() if policy.retire else None  # for _on_file
    refreshes: list[CIChange] = []
    # First, the common case: the one CI of the identity holds every value already, as the same string, and
    # is ours and active. Such a CI needs neither fitting to the field lengths (the instance keeps no value
    # longer than its field) nor the missing fields left out (a field the class lacks is never held), so those
    # run on the rest only.
    rest: list[DesiredCI] = []
    for ci in desired:
        matches = by_identity.get(ci.identity)
        if matches is None or len(matches) != 1:
            rest.append(ci)
            continue
        current = matches[0]
        if not _on_file(ci, current, source, retired_when):
            rest.append(ci)
            continue
        matched.add(current.sys_id)
        sys_ids[(table, ci.identity)] = current.sys_id
        if _due_refresh(ci, current, stale_before):
            refreshes.append(_refresh(table, ci, current, options))
        else:
            unchanged += 1
    desired = rest
    if policy.missing_fields:
        desired = _without_missing_fields(table, desired, policy, plan)
    desired, left_out = _fitted(table, desired, policy, plan)
    contested = _contested(table, policy.identity_field, desired, by_identity, unkeyed, plan) if unkeyed else set()
    creates: list[CIChange] = []
    where: dict[str, tuple[str, str]] = {}  # identity of each create -> its (account, region)
    updates: list[CIChange] = []  # and revives
    current_of: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}  # sys_id of each CI updated -> (held, desired)
    for ci in desired:
        matches = by_identity.get(ci.identity) or _by_object(ci, unkeyed)
        if contested and len(matches) == 1 and matches[0].sys_id in contested:
            matches = []  # one CI to adopt for several resources: adopted by none
        if len(matches) == 1:
            current = matches[0]
            matched.add(current.sys_id)
            sys_ids[(table, ci.identity)] = current.sys_id
            if _on_file(ci, current, source, retired_when):
                change = None  # every value there already, now that they are cut to fit
            else:
                change = _change_of_match(table, ci, current, _desired_payload(ci, options), policy, options)
            if change is not None:
                updates.append(change)
                current_of[current.sys_id] = (current.fields, ci.fields)
            elif _due_refresh(ci, current, stale_before):
                refreshes.append(_refresh(table, ci, current, options))
            else:
                unchanged += 1
        elif matches:
            claimed.update(m.sys_id for m in matches)
            plan.duplicates.append({"table": table, "identity": ci.identity, "sys_ids": sorted(m.sys_id for m in matches)})
        else:
            wanted = _desired_payload(ci, options)
            if ci.create_only:  # what the item does not know, for a new CI only (none: the class's default)
                wanted = {**{k: s for k, v in ci.create_only.items() if (s := snow_value(v))}, **wanted}
            if options.stamps:
                wanted = {FIRST_DISCOVERED: options.now, LAST_DISCOVERED: options.now, **wanted}
            full = {**{k: v for k, v in policy.revive.items() if k not in wanted}, **wanted}
            full = {k: v for k, v in full.items() if v != ""}
            creates.append(CIChange(CREATE, table, ci.identity, None, {k: ("", v) for k, v in full.items()}))
            where[ci.identity] = ci.scope[:2]
    for identity in left_out:  # not known this run: their CIs are neither updated nor retired
        matched.update(current.sys_id for current in by_identity.get(identity, ()))
    updates, emptied = _guard_clears(table, updates, len(matched), options, plan)
    plan.unchanged[table] += unchanged + emptied
    plan.changes.extend(_stamped(change, options, *current_of[change.sys_id]) for change in updates)
    plan.changes.extend(refreshes)
    retires, active, unmatched_objects = _plan_retires(table, unique, matched, claimed, policy, ok_scopes, options, plan,
                                                       targeted)
    plan.changes.extend(_guard_twins(table, creates, where, unmatched_objects, active, options, plan))
    plan.changes.extend(retires)


def _hold_class(table: str, desired: list[DesiredCI], plan: Plan, why: str) -> None:
    """A class whose CIs cannot be known (not read, or no identity to match them by): unknown is not
    empty. None of its CIs is created (it may hold them already), updated or retired, and so none of their
    relations or tags is touched; ``why`` goes to the guards."""
    plan.held.update((table, ci.identity) for ci in desired)
    plan.guards.append(why)


def _guard_twins(table: str, creates: list[CIChange], where: dict[str, tuple[str, str]], unmatched_objects: set,
                 active: int, options: PlanOptions, plan: Plan) -> list[CIChange]:
    """The creates, less those that would duplicate a resource, when they are many.

    A create whose resource (``object_id``, in the same account and region:
    ``where``) an owned CI already holds under another identity would make a
    twin of it. Many at once means the identity the mapping builds has
    changed: they are held, in ``plan.held``. New resources are created
    whatever happens, those of other accounts and regions too (object_id is
    not unique across them: a Lambda function's is its name).
    """
    def is_twin(change: CIChange) -> bool:
        object_id = change.diff.get("object_id", ("", ""))[1]
        return (where.get(change.identity), object_id) in unmatched_objects or (None, object_id) in unmatched_objects

    twins = [change for change in creates if is_twin(change)]
    if not twins or _within_guard(len(twins), active, options):
        return creates
    plan.guards.append(
        f"{table}: would create {len(twins)} CIs for resources its owned CIs already hold under another identity "
        "(same object_id): the identity its mapping builds may have changed (a correlation_id template?); none of "
        "them created, so that no duplicate is made. Check the mapping, then rerun with --force if this is right."
    )
    plan.held.update((table, change.identity) for change in twins)
    return [change for change in creates if not is_twin(change)]


def _guard_clears(table: str, updates: list[CIChange], compared: int, options: PlanOptions, plan: Plan
                  ) -> tuple[list[CIChange], int]:
    """The updates, less the emptying of a field on too many of the ``compared`` CIs at once.

    A ``[fields]`` path that finds nothing (a typo, an API that renamed a key)
    would otherwise wipe that field on every CI of the class. Returns the
    updates to make and how many were left with nothing to write.
    """
    emptied = Counter(name for change in updates if change.action == UPDATE
                      for name, (old, new) in change.diff.items() if new == "" and old != "")
    held = {name for name, count in emptied.items() if not _within_guard(count, compared, options)}
    if not held:
        return updates, 0
    for name in sorted(held):
        plan.guards.append(
            f"{table}.{name}: would empty it on {emptied[name]} of {compared} CIs ({emptied[name] / compared:.0%}), "
            f"over reconcile.max_retire_fraction = {options.max_retire_fraction:.0%}; left as it is. Check the "
            f"[fields] entry of {name} in its mapping (a path that finds nothing?), then rerun with --force if this "
            "is right."
        )
    kept: list[CIChange] = []
    for change in updates:
        if change.action == UPDATE and not held.isdisjoint(change.diff):
            diff = {name: (old, new) for name, (old, new) in change.diff.items()
                    if not (name in held and new == "" and old != "")}
            if not diff:
                continue
            change = replace(change, diff=diff)
        kept.append(change)
    return kept, len(updates) - len(kept)


def _contested(table: str, identity_field: str, desired: list[DesiredCI], by_identity: dict[str, list[ExistingCI]],
               unkeyed: dict[str, list[ExistingCI]], plan: Plan) -> set[str]:
    """The CIs without an identity that more than one desired CI would adopt by ``object_id``, named in a warning.

    ``object_id`` is unique within an account and region, not always across
    them: every account's datacenter in us-east-1 has the object_id
    "us-east-1". One CI made by hand for it cannot become all of them, and
    which one it stands for is unknown, so none adopts it: each gets a CI of
    its own.
    """
    claims: dict[str, list[str]] = defaultdict(list)  # sys_id -> identities that would adopt it
    for ci in desired:
        if ci.identity not in by_identity:
            matches = _by_object(ci, unkeyed)
            if len(matches) == 1:
                claims[matches[0].sys_id].append(ci.identity)
    contested = {sys_id: identities for sys_id, identities in claims.items() if len(identities) > 1}
    if contested:
        sys_id, identities = min(contested.items())
        plan.warnings.append(
            f"{table}: {len(contested)} CI(s) without {identity_field} match several resources by object_id (e.g. "
            f"{sys_id}, for {len(identities)} resources such as {min(identities)}): adopted by none, and each "
            f"resource gets a CI of its own. Set such a CI's {identity_field} to the identity of the resource it "
            "stands for, to have it adopted, or retire it."
        )
    return set(contested)


def _change_of_match(
    table: str, ci: DesiredCI, current: ExistingCI, wanted: dict[str, str], policy: TablePolicy, options: PlanOptions
) -> CIChange | None:
    """Revive, update (noting an adoption) or nothing, for the one CI that matches."""
    if _is_retired(current, policy):
        wanted = {**wanted, **{k: v for k, v in policy.revive.items() if k not in ci.fields}}
        return CIChange(REVIVE, table, ci.identity, current.sys_id, _diff(current.fields, wanted))
    diff = _diff(current.fields, wanted)
    if not diff:
        return None
    adopted = current.fields.get(policy.identity_field, "") != ci.identity or (
        current.fields.get("discovery_source") != options.discovery_source
    )
    return CIChange(UPDATE, table, ci.identity, current.sys_id, diff, "adopted: CI of another source, now owned" if adopted else "")


def _retirable(ci: ExistingCI, policy: TablePolicy, ok_scopes: set, options: PlanOptions,
               scope: tuple[str, str] | None) -> bool:
    """The client-side re-check of a fetched record, whatever the query said; ``scope``: the (account,
    region) its correlation_id says."""
    if ci.fields.get("discovery_source") != options.discovery_source:
        return False
    if ci.fields.get("sys_class_name") != policy.table:
        return False
    if scope is None:
        return False
    if scope[0] in options.retire_accounts and not policy.structure:
        return True  # an account the operator says is gone, which no run collects (run --retire-account)
    return all((scope[0], scope[1], source) in ok_scopes for source in policy.sources)


def _retire_cutoff(options: PlanOptions) -> str | None:
    """With reconcile.retire_after_hours, the time (ServiceNow's UTC form, which sorts as time does) a CI
    must have been gone since to be retired now: "" (never) without the run's time. None: no wait."""
    if not options.retire_after_hours:
        return None
    if not options.now:
        return ""
    return (_run_time(options) - timedelta(hours=options.retire_after_hours)).strftime(SNOW_TIMESTAMP)


def _later(when: str, hours: float) -> str:
    """ServiceNow's UTC time ``hours`` after ``when`` ("" if ``when`` is not one)."""
    since = snow_time(when)
    return "" if since is None else (since + timedelta(hours=hours)).strftime(SNOW_TIMESTAMP)


def _plan_retires(table, existing, matched, claimed, policy, ok_scopes, options, plan, targeted=None
                  ) -> tuple[list[CIChange], int, set[tuple[tuple[str, str] | None, str]]]:
    """The retires of one table: (those to make, owned CIs active, the (account and region, ``object_id``)
    of every owned CI that no desired CI matched; None for the first where its correlation_id does not say).
    An active CI kept because its account is not among ``targeted`` is counted in ``plan.untargeted``."""
    source, sys_ids = options.discovery_source, plan.sys_ids
    active = still_retired = 0
    retires: list[CIChange] = []
    unmatched_objects: set[tuple[tuple[str, str] | None, str]] = set()
    retired_when = policy.retire.items() if policy.retire else None  # _is_retired, inlined in this hot loop
    cutoff = _retire_cutoff(options)
    for ci in existing:
        fields = ci.fields
        if fields.get("discovery_source") != source or fields.get("sys_class_name") != table:
            continue  # not owned: never retired
        retired = bool(retired_when) and retired_when <= fields.items()
        active += not retired
        if ci.sys_id in matched:
            continue  # matched one desired CI: planned above
        key = fields.get(policy.identity_field, "")
        if key:
            sys_ids.setdefault((table, key), ci.sys_id)  # duplicates too: one of them stands for the key
        if ci.sys_id in claimed:
            continue  # one of duplicates: reported above
        scope = account_and_region(fields.get("correlation_id", ""))
        if fields.get("object_id"):
            unmatched_objects.add((scope, fields["object_id"]))
        if retired:
            still_retired += 1  # already retired and still gone: unchanged
        elif _retirable(ci, policy, ok_scopes, options, scope):
            if cutoff is not None and scope[0] not in options.retire_accounts:  # retired once gone long enough
                since = plan.absent.setdefault((table, key), (ci.sys_id, options.absent_since.get((table, key))
                                                              or options.now))[1]
                if not (since and since <= cutoff):
                    plan.retire_pending[(table, key)] = _later(since, options.retire_after_hours)
                    plan.unchanged[table] += 1  # still active, and nothing written: gone, not long enough
                    continue
            retires.append(CIChange(RETIRE, table, key, ci.sys_id, _diff(fields, policy.retire)))
        else:
            if cutoff is not None and (table, key) in options.absent_since:
                # gone before, not known now (its scope not collected in full): still gone since then
                plan.absent[(table, key)] = (ci.sys_id, options.absent_since[(table, key)])
            if targeted is not None and scope is not None and scope[0] not in targeted and not policy.structure:
                plan.untargeted[scope[0]][table] += 1  # unknown is not empty: kept, and named
    plan.unchanged[table] += still_retired
    if not retires:
        return [], active, unmatched_objects
    if not options.retire:
        plan.guards.append(f"{table}: {len(retires)} CI(s) gone from AWS not retired: reconcile.retire = false")
        return [], active, unmatched_objects
    if len(retires) > options.max_retire_fraction * active and not options.force:
        plan.guards.append(
            f"{table}: would retire {len(retires)} of {active} owned CIs "
            f"({len(retires) / active:.0%}), over reconcile.max_retire_fraction = "
            f"{options.max_retire_fraction:.0%}; nothing retired in this table. "
            "Check the collection, then rerun with --force if this is right."
        )
        return [], active, unmatched_objects
    return retires, active, unmatched_objects


def _declarer(parent: CIKey, child: CIKey, rel_type: str, policies: dict[str, TablePolicy]) -> CIKey | None:
    """Which end's mapping declares this relation (and so knows all of them)."""
    parent_policy = policies.get(parent[0])
    if parent_policy and (rel_type, child[0], "parent") in parent_policy.relations:
        return parent
    child_policy = policies.get(child[0])
    if child_policy and (rel_type, parent[0], "child") in child_policy.relations:
        return child
    return None


def _plan_relations(
    desired: list[DesiredCI],
    relations: list[ExistingRelation],
    rel_types: dict[str, str],
    policies: dict[str, TablePolicy],
    options: PlanOptions,
    plan: Plan,
) -> None:
    # Every CI key, desired or existing, gets a number once; relations are then
    # compared as (type, number, number), which hashes far faster than keys.
    number: dict[CIKey, int] = {}
    mine = [number.setdefault((ci.table, ci.identity), len(number)) for ci in desired]
    held = plan.held
    # the CIs whose relations are all known now; a held CI's are not: none of them is deleted
    desired_numbers = {me for ci, me in zip(desired, mine) if not held or (ci.table, ci.identity) not in held}
    # (type, other table) of the relations a CI's item could not tell (a mapping's known_when): kept
    unknown = {me: ci.unknown_relations for ci, me in zip(desired, mine) if ci.unknown_relations}
    for key in plan.sys_ids:
        number.setdefault(key, len(number))
    keys = list(number)  # number -> key

    wanted: dict[tuple[str, int, int], None] = {}
    # one warning per kind, with a count and an example: a broken template must not write 20,000 lines
    not_found: dict[tuple[str, str, str], list] = {}  # (table, type, target table) -> [count, CI, target]
    unknown_types: Counter = Counter()
    for ci, me in zip(desired, mine):
        if held and (ci.table, ci.identity) in held:
            continue  # its create is held back: so are its relations
        for ref in ci.relations:
            if held and (ref.table, ref.identity) in held:
                desired_numbers.discard(me)  # its relations are not all known now: none of them is deleted
                continue
            other = number.get((ref.table, ref.identity))
            if other is None:  # neither desired nor in the CMDB
                not_found.setdefault((ci.table, ref.type, ref.table), [0, ci.identity, ref.identity])[0] += 1
                continue
            if ref.type not in rel_types:
                unknown_types[ref.type] += 1
                continue
            wanted[(ref.type, me, other) if ref.role == "parent" else (ref.type, other, me)] = None
    plan.warnings.extend(f"{table}: {kind} target {target} not found for {n} CI(s), e.g. {identity} -> {target_id}"
                         for (table, kind, target), (n, identity, target_id) in not_found.items())
    plan.warnings.extend(f"relation type {kind!r} is not in cmdb_rel_type: {n} relation(s) left unmanaged "
                         "(`cmdb-connector check-access --servicenow-only` names the nearest type the instance has)"
                         for kind, n in unknown_types.items())

    number_of = {sys_id: number[key] for key, sys_id in plan.sys_ids.items()}
    type_name = {sys_id: name for name, sys_id in rel_types.items()}
    existing: set[tuple[str, int, int]] = set()
    deletes: dict[tuple[str, str], list[RelationChange]] = defaultdict(list)  # (declaring table, type) -> deletes
    unchanged = 0
    for rel in relations:
        parent, child, name = number_of.get(rel.parent), number_of.get(rel.child), type_name.get(rel.type)
        if parent is None or child is None or name is None:
            continue  # not between CIs we manage: never touched
        triple = (name, parent, child)
        if triple in existing:
            continue
        existing.add(triple)
        if triple in wanted:
            unchanged += 1
            continue
        declarer = _declarer(keys[parent], keys[child], name, policies)
        by = number.get(declarer)
        if by in desired_numbers and not (unknown and (name, keys[child if by == parent else parent][0])
                                          in unknown.get(by, ())):
            deletes[(declarer[0], name)].append(RelationChange("delete", name, keys[parent], keys[child], rel.sys_id))
    plan.relations_unchanged += unchanged
    if deletes:
        _guard_relation_deletes(deletes, existing, keys, policies, options, plan)
    for triple in wanted:
        if triple not in existing:
            plan.relation_changes.append(RelationChange("create", triple[0], keys[triple[1]], keys[triple[2]]))


def _within_guard(count: int, total: int, options: PlanOptions) -> bool:
    """May a run make ``count`` writes of a kind that can do harm in bulk, against ``total`` of the class's
    own (tag and relation deletions; creates beside retires the guard held)?"""
    return options.force or count <= max(options.max_retire_fraction * total, GUARD_FLOOR)


def _guard_relation_deletes(deletes: dict[tuple[str, str], list[RelationChange]], existing: set[tuple[str, int, int]],
                            keys: list[CIKey], policies: dict[str, TablePolicy], options: PlanOptions, plan: Plan) -> None:
    """The relation deletions of each (declaring class, type), unless they are too many of its relations.

    A ``[[relations]]`` identity that finds nothing (a typo in a template)
    would otherwise delete every relation of that type of the class.
    """
    big = set() if options.force else {group for group, gone in deletes.items() if len(gone) > GUARD_FLOOR}
    totals: Counter = Counter()
    if big:  # counted only where needed: a run that deletes a few relations pays nothing
        for name, parent, child in existing:
            declarer = _declarer(keys[parent], keys[child], name, policies)
            if declarer is not None and (declarer[0], name) in big:
                totals[(declarer[0], name)] += 1
    _guarded(deletes, totals, options, plan, plan.relation_changes, lambda group, n, total: (
        f"{group[0]}: would delete {n} of its {total} {group[1]!r} relations ({n / total:.0%}), over "
        f"reconcile.max_retire_fraction = {options.max_retire_fraction:.0%}; none of them deleted. Check the "
        "[[relations]] of its mapping (an identity that finds no CI?) and the warnings, then rerun with --force "
        "if this is right."))


def _guarded(groups: dict, totals: Counter, options: PlanOptions, plan: Plan, out: list,
             held: Callable[[Any, int, int], str]) -> None:
    """Each group's writes go to ``out``, unless the guard holds them back: then
    ``held(group, count, total)`` says why, in the plan's guards."""
    for group, writes in groups.items():
        if _within_guard(len(writes), totals[group], options):
            out.extend(writes)
        else:
            plan.guards.append(held(group, len(writes), totals[group]))


def _plan_key_values(
    desired: list[DesiredCI],
    existing: dict[str, list[ExistingCI] | None],
    key_values: list[ExistingKeyValue],
    ok_scopes: set[tuple[str, str, str]],
    options: PlanOptions,
    plan: Plan,
    lengths: dict[str, int],
) -> None:
    """Tags: each CI's cmdb_key_value rows made equal to its AWS tags, one row per tag.

    Only rows of our own CIs are touched (re-checked here on the fetched rows).
    A row is removed only when its CI's scope was collected ``ok`` in this run:
    a tag gone from AWS, or a second row for one tag (the first, in sys_id
    order, is the one kept). A CI adopted in this run gets its tags in it
    too: its rows, another source's until now, were not read, so each tag's
    create looks for the CI's row of that key first (``check_first``) and
    gives a row found the tag's value; none of its rows is removed until the
    next run reads them as ours.

    The blast-radius guard holds for tags too: a run that would delete more
    than ``max_retire_fraction`` of a class's tag rows (and more than
    ``GUARD_FLOOR`` of them) deletes none in that class without ``force``:
    a ``[tags]`` path that finds nothing would otherwise empty them all.

    A value longer than its field (``lengths``) is cut to fit, as the
    instance would cut it; a tag whose key is too long is not written (cut,
    it would never match), and its row, if one exists, is kept.
    """
    owned = {ci.sys_id: table for table, cis in existing.items() for ci in cis or ()
             if ci.fields.get("discovery_source") == options.discovery_source}
    rows_of, repeated = _tag_rows(key_values, owned)
    duplicated = {(d["table"], d["identity"]) for d in plan.duplicates}
    changes, unchanged = plan.key_value_changes, 0
    deletes: dict[str, list[KeyValueChange]] = defaultdict(list)  # table -> tag rows to delete
    cut: dict[str, list] = {}  # "key" or "value" -> [count, an example]
    for ci in desired:
        key = (ci.table, ci.identity)
        if ci.tags is None or key in duplicated or key in plan.held:
            continue
        sys_id = plan.sys_ids.get(key)
        adopted = sys_id is not None and sys_id not in owned  # in this run: its rows were not read as ours
        have = rows_of.get(sys_id, {}) if sys_id is not None else {}  # (none for an adopted CI: not owned)
        tags, kept = _fitted_tags(ci, lengths, cut) if lengths else (ci.tags, ())
        found = 0
        for name, value in tags.items():
            row = have.get(name)
            if row is None:
                changes.append(KeyValueChange("create", key, name, "", value, check_first=adopted))
                continue
            found += 1
            if row.value == value:
                unchanged += 1
            else:
                changes.append(KeyValueChange("update", key, name, row.value, value, row.sys_id))
        if (found < len(have) or sys_id in repeated) and ci.scope in ok_scopes:  # unknown is not empty
            surplus = [row for name, row in have.items() if name not in tags and name not in kept]
            surplus += repeated.get(sys_id, [])
            deletes[ci.table].extend(KeyValueChange("delete", key, row.key, row.value, "", row.sys_id) for row in surplus)
    plan.key_values_unchanged += unchanged
    for name, (count, example) in sorted(cut.items()):
        plan.warnings.append(
            f"{KV_TABLE}.{name}: {count} tag(s) " + (
                f"not written: the key is longer than the field's {lengths[name]} characters (sys_dictionary), "
                f"e.g. {example}. Lengthen the field to keep them." if name == "key" else
                f"with a value longer than the field's {lengths[name]} characters (sys_dictionary), cut to fit, "
                f"e.g. {example}. Lengthen the field to keep whole values."))
    if deletes:
        _guard_tag_deletes(deletes, Counter(owned[row.ci] for row in key_values if row.ci in owned), options, plan)


def _fitted_tags(ci: DesiredCI, lengths: dict[str, int], cut: dict[str, list]) -> tuple[dict[str, str], set[str]]:
    """A CI's tags as the instance would store them: (the tags to write, values cut to fit; the keys,
    whole and cut, of those left out because their key is too long: their rows are kept)."""
    key_limit, value_limit = lengths.get("key"), lengths.get("value")
    tags: dict[str, str] = {}
    kept: set[str] = set()
    for name, value in (ci.tags or {}).items():
        if key_limit is not None and len(name) > key_limit:
            cut.setdefault("key", [0, f"{ci.identity} tag {name[:40]!r}..."])[0] += 1
            kept.update((name, name[:key_limit]))
            continue
        if value_limit is not None and len(value) > value_limit:
            cut.setdefault("value", [0, f"{ci.identity} tag {name!r} ({len(value)} characters)"])[0] += 1
            value = value[:value_limit]
        tags[name] = value
    return tags, kept


def _tag_rows(key_values: list[ExistingKeyValue], owned: dict[str, str]
              ) -> tuple[dict[str, dict[str, ExistingKeyValue]], dict[str, list[ExistingKeyValue]]]:
    """The rows of our CIs: CI sys_id -> tag key -> its row, and CI sys_id -> second rows for one of its tags."""
    rows_of: dict[str, dict[str, ExistingKeyValue]] = {}
    repeated: dict[str, list[ExistingKeyValue]] = {}
    for row in key_values:
        if row.ci not in owned:
            continue  # re-checked in code, whatever the query said
        rows = rows_of.get(row.ci)
        if rows is None:
            rows_of[row.ci] = {row.key: row}
        elif row.key not in rows:
            rows[row.key] = row
        else:
            repeated.setdefault(row.ci, []).append(row)
    return rows_of, repeated


def _guard_tag_deletes(deletes: dict[str, list[KeyValueChange]], rows_in: Counter, options: PlanOptions,
                       plan: Plan) -> None:
    """The tag deletions of each class, unless they are too many of its rows (``rows_in``)."""
    _guarded(deletes, rows_in, options, plan, plan.key_value_changes, lambda table, n, total: (
        f"{table}: would delete {n} of its {total} tag rows ({n / total:.0%}), over reconcile.max_retire_fraction = "
        f"{options.max_retire_fraction:.0%}; no tag removed in this table. Check its [tags] mapping and the "
        "collection, then rerun with --force if this is right."))


def _plan_other_classes(other_classes: list[ExistingCI], policies: dict[str, TablePolicy], options: PlanOptions,
                        plan: Plan) -> None:
    """Our CIs in classes that no mapping covers now: named, and never touched.

    A mapping file removed, or a class renamed, leaves its CIs active and
    stamped as ours, with nothing to update or retire them any more: each such
    class gets a warning. A create whose ``correlation_id`` one of them holds
    (the class moved to another file) would duplicate that resource in a second
    class: those creates are held, in ``plan.held``, unless ``force``.
    """
    stale: dict[str, list[ExistingCI]] = defaultdict(list)
    for ci in other_classes:
        fields = ci.fields
        cls = fields.get("sys_class_name", "")
        # Re-checked in code: ServiceNow drops the query conditions it cannot use.
        if fields.get("discovery_source") != options.discovery_source or not cls or cls in policies:
            continue
        if DEFAULT_RETIRE.items() <= fields.items():
            continue  # retired already: not a live CI
        stale[cls].append(ci)
    holder = {ci.fields["correlation_id"]: cls for cls, cis in stale.items() for ci in cis if ci.fields.get("correlation_id")}
    moved: dict[tuple[str, str], list[CIChange]] = defaultdict(list)  # (table, class that holds the resource) -> creates
    for change in plan.changes:
        cls = holder.get(change.diff.get("correlation_id", ("", ""))[1]) if change.action == CREATE else None
        if cls is not None:
            moved[(change.table, cls)].append(change)
    for cls, cis in sorted(stale.items()):
        plan.warnings.append(
            f"{cls}: {len(cis)} active CI(s) of this connector (discovery_source = {options.discovery_source}) in a "
            "class that no mapping file covers now: left as they are, neither updated nor retired. Restore its "
            "mapping file, or retire them in ServiceNow."
        )
    if not moved or options.force:
        return
    for (table, cls), creates in sorted(moved.items()):
        plan.guards.append(
            f"{table}: would create {len(creates)} CIs for resources that CIs of this connector in {cls} (a class "
            "that no mapping file covers now) already hold (same correlation_id): none of them created, so that no "
            f"duplicate is made. If the class moved on purpose, retire those CIs of {cls} in ServiceNow, or rerun "
            "with --force."
        )
        plan.held.update((table, change.identity) for change in creates)
    plan.changes[:] = [c for c in plan.changes if not (c.action == CREATE and (c.table, c.identity) in plan.held)]


def plan_changes(
    desired: list[DesiredCI],
    existing: dict[str, list[ExistingCI] | None],
    scopes: list[Scope],
    problems: list[MappingProblem],
    relations: list[ExistingRelation],
    rel_types: dict[str, str],
    policies: dict[str, TablePolicy],
    options: PlanOptions,
    key_values: list[ExistingKeyValue] | None = None,
    other_classes: list[ExistingCI] | None = None,
    tag_lengths: dict[str, int] | None = None,
    targeted: frozenset[str] | None = None,
) -> Plan:
    """``existing``: what the CMDB holds of each table; None for a table that could not be read
    (unknown, which is not empty: see ``_hold_class``).
    ``key_values``: the cmdb_key_value rows of our CIs, read when tags are managed.
    ``other_classes``: our CIs in classes that no policy covers (see ``_plan_other_classes``).
    ``tag_lengths``: the max_length of cmdb_key_value's ``key`` and ``value``, where known.
    ``targeted``: every account the configuration targets, in any shard (Inventory.targeted); None when
    not known. Our active CIs in any other account are in none of the scopes collected, so they are never
    retired (unless ``options.retire_accounts`` names it), but counted in ``plan.untargeted`` and named in
    a warning: with nothing to update or retire them, they would go stale unseen."""
    plan = Plan()
    ok_scopes = _ok_scopes(scopes, problems)
    stale_before = _stale_before(options)
    by_table: dict[str, list[DesiredCI]] = defaultdict(list)
    for ci in desired:
        by_table[ci.table].append(ci)
    for table, policy in policies.items():
        if table in existing and existing[table] is None:
            if options.retire_after_hours:  # not read: those gone before are still gone since then
                plan.absent.update({key: ("", since) for key, since in options.absent_since.items() if key[0] == table})
            unknown = by_table.get(table, [])
            _hold_class(table, unknown, plan, (
                f"{table}: its CIs could not be read from ServiceNow (see errors): none of its {len(unknown)} CI(s) "
                "written, none retired, and their relations and tags left as they are."))
        else:
            _plan_table(table, by_table.get(table, []), existing.get(table) or [], policy, ok_scopes, options, plan,
                        stale_before, targeted)
    if other_classes:
        _plan_other_classes(other_classes, policies, options, plan)
    _plan_relations(desired, relations, rel_types, policies, options, plan)
    if key_values is not None:
        _plan_key_values(desired, existing, key_values, ok_scopes, options, plan, tag_lengths or {})
    if plan.untargeted:
        plan.warnings.append(_untargeted_warning(plan.untargeted, options))
    return plan


def _untargeted_warning(untargeted: dict[str, Counter], options: PlanOptions) -> str:
    """One warning for every account no longer targeted that holds CIs of ours still active."""
    totals = sorted(((account, sum(tables.values())) for account, tables in untargeted.items()),
                    key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{account} ({n})" for account, n in totals[:10]) + (
        f" and {len(totals) - 10} more" if len(totals) > 10 else "")
    return (
        f"{len(totals)} account(s) that the configuration no longer targets (gone from the Organization, or left out "
        "by aws.accounts, aws.organizational_units or aws.exclude_accounts) still hold "
        f"{sum(n for _a, n in totals)} active CI(s) of this connector (discovery_source = {options.discovery_source}): "
        f"{shown}. No run collects them, so they are left as they are (unknown is not empty); each account is in the "
        "report's untargeted_accounts. If an account is gone for good, retire its CIs: cmdb-connector run "
        "--retire-account ACCOUNT_ID."
    )
