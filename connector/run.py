"""The one orchestrator: accounts -> sessions -> collect -> map -> plan -> apply -> report.

Each stage hands plain data to the next. This module only wires them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from typing import Any, Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from .aws.collect import collect_inventory
from .aws.operations import check_operations
from .aws.targets import find_targets, open_account_sessions, open_session_pool
from .errors import (
    ConfigError,
    ConnectorError,
    ServiceNowBadRequest,
    ServiceNowError,
    ServiceNowNotFound,
    ServiceNowPermissionError,
    ServiceNowShiftedRead,
    UsageError,
)
from .inventory import read_inventory
from .mapping.functions import SNOW_TIMESTAMP
from .mapping.load import MappingSet, load_mappings
from .mapping.lookups import lookup_values, resolve_lookups
from .mapping.transform import Mapper, MapResult
from .models import (DENIED, ERROR, OK, ORGANIZATION_KINDS, SKIPPED, THROTTLED, Account, DesiredCI, ExistingCI, Lookup,
                     ExistingKeyValue, ExistingRelation,
                     Inventory, Record)
from .reconcile.apply import ApplyResult, apply_plan, predict_with
from .reconcile.approve import ApprovedPlan, approve
from .reconcile.plan import CREATE, PlanOptions, TablePolicy, plan_changes
from .report.absent import absent_state_path, load_absent, save_absent
from .report.history import previous_run_report, prune_reports, repeated_writes
from .report.json_report import build_report, run_options, summary_line, write_report
from .ops import EXIT_INTERRUPTED, fewer_gc_passes, freeze_long_lived, set_run_id, stop_requested
from .report.outputs import write_outputs
from .servicenow.client import TableClient
from .servicenow.cmdb import KV_TABLE, CmdbReader, Dictionary, TableApiWriter
from .servicenow.ire import IreWriter, check_access as check_ire_access
from .settings import Settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
NOT_COLLECTED = {DENIED, THROTTLED, ERROR}


class StageClock:
    """Seconds per pipeline stage, for the report: wall time, and the CPU time
    of the whole process (every thread) meanwhile. A stage within another
    (map, as each unit's records come in during collect) counts as its own
    time, not the other's. One thread's."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._cpu: dict[str, float] = {}
        self._within: list[list[float]] = []  # for each stage begun: the wall and CPU time of stages within it

    @property
    def seconds(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self._seconds.items()}

    @property
    def cpu(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self._cpu.items()}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started, cpu = time.perf_counter(), time.process_time()
        self._within.append([0.0, 0.0])
        try:
            yield
        finally:
            wall, used = time.perf_counter() - started, time.process_time() - cpu
            inner_wall, inner_cpu = self._within.pop()
            # summed unrounded: a stage made of many short parts (map, a unit at a time) keeps every one
            self._seconds[name] = self._seconds.get(name, 0.0) + wall - inner_wall
            self._cpu[name] = self._cpu.get(name, 0.0) + used - inner_cpu
            if self._within:
                self._within[-1][0] += wall
                self._within[-1][1] += used


@dataclass
class RunOutcome:
    exit_code: int
    report: dict
    report_path: Path | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _snow_time(iso: str) -> str:
    """A UTC ISO time (the run's start) as ServiceNow writes its times: "YYYY-MM-DD HH:MM:SS"."""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime(SNOW_TIMESTAMP)


def new_run_id() -> str:
    # report.history.RUN_FILE recognises a run's files by this shape: change both together
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def collect_from_aws(settings: Settings, mappings: MappingSet, shard: tuple[int, int] | None = None,
                     retire_accounts: frozenset[str] = frozenset(), only: frozenset[str] = frozenset(),
                     sink: Callable[[list[Record]], None] | None = None) -> Inventory:
    """accounts -> sessions -> collect. ``retire_accounts`` (run --retire-account) are checked against the
    accounts found, before any is collected; ``only`` (--account): these of the accounts targeted alone;
    ``sink``: where the records go, each unit's as it is in, rather than into the inventory
    (``collect_inventory``)."""
    check_operations(mappings)  # before the first AWS call: a misspelled operation is the mapping's error
    pool = open_session_pool(settings)
    tree = any(source.kind in ORGANIZATION_KINDS for source in mappings.sources.values())
    targets = find_targets(settings, pool, shard, tree=tree, only=only)
    check_retire_accounts(retire_accounts, targets.accounts, targets.targeted, settings)
    accounts = open_account_sessions(pool, targets.accounts, settings.aws.max_workers)
    inventory = collect_inventory(
        pool, accounts, mappings.sources, list(settings.aws.regions),
        settings.aws.max_workers, settings.aws.max_workers_per_account, tags=settings.reconcile.tags,
        organization=targets.organization, organizations=targets.organizations, sink=sink,
    )
    inventory.targeted = targets.targeted
    return inventory


def check_retire_accounts(retire: frozenset[str], accounts: list[Account], targeted: frozenset[str] | None,
                          settings: Settings) -> None:
    """Refuse to retire, wholesale, the CIs of an account that a run collects (run --retire-account): only
    an account that the configuration no longer targets may be named (gone from the Organization, or left
    out by aws.accounts, aws.organizational_units or aws.exclude_accounts). Its CIs are otherwise kept for
    ever, since nothing of an account not collected is retired. ``accounts``: this run's (or inventory's)."""
    if not retire:
        return
    excluded = set(settings.aws.exclude_accounts)
    where = {**dict.fromkeys(targeted or (), "targeted by this configuration"),
             **dict.fromkeys((a.account_id for a in accounts), "a target of this run"),
             **dict.fromkeys(settings.aws.accounts, "in aws.accounts")}
    refused = sorted((account, where[account]) for account in retire if account in where and account not in excluded)
    if refused:
        account, why = refused[0]
        raise UsageError(
            f"--retire-account {account}: the account is {why}, so its CIs are reconciled from what is collected in "
            "it (and retired one by one as its resources go), never retired wholesale. Only an account that no run "
            "collects may be named: one gone from the Organization, or left out by aws.accounts, "
            "aws.organizational_units or aws.exclude_accounts (the report's untargeted_accounts). Nothing was written.")


# -- plan inputs -------------------------------------------------------------

def table_policies(mappings: MappingSet, field_lengths: dict[str, dict[str, int]] | None = None,
                   missing_fields: dict[str, set[str]] | None = None) -> dict[str, TablePolicy]:
    return {
        table: TablePolicy(
            table=table,
            identity_field=variants[0].identity_field,
            sources=tuple(m.source.name for m in variants),
            retire=variants[0].retire,
            revive=variants[0].revive,
            relations=tuple((r.type, r.to, r.role) for m in variants for r in m.relations),
            max_lengths=(field_lengths or {}).get(table, {}),
            missing_fields=frozenset((missing_fields or {}).get(table, ())),
            structure=all(m.source.kind in ORGANIZATION_KINDS for m in variants),
        )
        for table, variants in mappings.tables.items()
    }


@dataclass
class CmdbState:
    """What the CMDB holds now, as far as the mappings are concerned."""

    cis: dict[str, list[ExistingCI] | None]  # table -> owned CIs, plus the CIs to adopt; None: not read (unread)
    rel_types: dict[str, str]  # relation type name -> cmdb_rel_type sys_id
    relations: list[ExistingRelation]  # relations of those types whose parent is ours
    key_values: list[ExistingKeyValue] | None = None  # tags of our CIs; None when tags are not managed
    # our active CIs in classes no mapping covers; None when they could not be read (see notes)
    other_classes: list[ExistingCI] | None = None
    # table -> {string field the mapping writes: its max_length}; empty when the dictionary could not be read
    field_lengths: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings from the read
    # table -> why its CIs could not be read (the instance lacks the class, an ACL refuses it): left untouched
    unread: dict[str, str] = field(default_factory=dict)
    # table -> the fields written to it that the class does not have (sys_dictionary)
    missing_fields: dict[str, set[str]] = field(default_factory=dict)
    # each lookup of the mappings' reference fields -> value in lower case -> sys_ids of the records it names;
    # None for a lookup whose table could not be read
    lookups: dict[Lookup, dict[str, list[str]] | None] = field(default_factory=dict)


def read_cmdb(reader: CmdbReader, mappings: MappingSet, mapped: MapResult, workers: int = 1) -> CmdbState:
    """One paged query per table, one for the relations and, when tags are
    managed, one for the tags, all at once."""
    desired_by_table: dict[str, list[DesiredCI]] = defaultdict(list)
    for ci in mapped.cis:
        desired_by_table[ci.table].append(ci)
    rel_names = {r.type for m in mappings.mappings.values() for r in m.relations}
    with ThreadPoolExecutor(max_workers=max(1, workers) + 1, thread_name_prefix="read-table") as pool:
        rel_types_read = pool.submit(reader.relation_types, rel_names)
        relations = pool.submit(reader.relations, rel_names)
        others = pool.submit(reader.owned_in_other_classes, mappings.tables)
        tagged = any(ci.tags is not None for ci in mapped.cis)
        wanted = lookup_values(mapped.cis, mappings.lookups)
        dictionary = pool.submit(reader.dictionary, fields_written(mappings, tagged, wanted))
        key_values = pool.submit(reader.key_values) if tagged else None
        looked_up = {lookup: pool.submit(_look_up, reader, lookup, values, dictionary)
                     for lookup, values in wanted.items()}
        # The largest tables first: their pages are the longest part of the read.
        tables = sorted(mappings.tables.items(), key=lambda item: -len(desired_by_table.get(item[0], ())))
        found = pool.map(lambda item: _read_class(reader, item[0], item[1], desired_by_table.get(item[0], [])), tables)
        read = dict(zip((table for table, _variants in tables), found))
        cis = {table: read[table][0] for table in mappings.tables}
        unread = {table: read[table][1] for table in mappings.tables if read[table][0] is None}
        rel_types, rels = rel_types_read.result(), relations.result()
        other_classes, notes = _optional(
            others, None, "CIs of this connector in classes that no mapping file covers were not looked for")
        (field_lengths, missing_fields), more_notes = _optional(
            dictionary, Dictionary({}, {}), "field lengths not read from sys_dictionary and sys_db_object, so a value "
            "longer than its field is not cut to fit (the instance cuts it, and each run writes it again), and a "
            "mapped field the class lacks is not found")
        lookups: dict[Lookup, dict[str, list[str]] | None] = {}
        for lookup, future in looked_up.items():
            lookups[lookup], why = _optional(future, None, f"{lookup.table} not read for the lookups in {lookup}")
            more_notes += why
    return CmdbState(cis, rel_types, rels, key_values.result() if key_values is not None else None, other_classes,
                     field_lengths, notes + more_notes, unread, missing_fields, lookups)


def fields_written(mappings: MappingSet, tagged: bool, lookups: Iterable[Lookup]) -> dict[str, set[str]]:
    """The fields the dictionary is asked about: those each class is written (the mappings', and
    discovery_source, which marks the CIs ours), cmdb_key_value's with tags, and the lookups' fields."""
    written = {table: {f for m in variants for f in m.fields} | {"discovery_source"}
               for table, variants in mappings.tables.items()}
    if tagged:
        written[KV_TABLE] = {"key", "value"}
    for lookup in lookups:
        written.setdefault(lookup.table, set()).update([lookup.field, *lookup.where_fields()])
    return written


def _look_up(reader: CmdbReader, lookup: Lookup, values: set[str], dictionary: Future) -> dict[str, list[str]]:
    """``reader.look_up``, once the dictionary says the field looked up in, and those its ``where`` names,
    exist: the instance would drop a condition on a field it lacks, and answer with every record of the
    table (every user, say), or every record the rest of ``where`` lets through (inactive users too)."""
    try:
        missing = dictionary.result().missing
    except ServiceNowError:
        missing = {}  # not known: asked, and every row is checked again on our side
    lacks = missing.get(lookup.table, ())
    if lookup.field in lacks:
        raise ServiceNowBadRequest(f"{lookup.table} has no field {lookup.field} (sys_dictionary): check the "
                                   "mapping's lookup")
    unknown = [name for name in lookup.where_fields() if name in lacks]
    if unknown:  # the instance would drop the condition, and the lookup would match records it should not
        raise ServiceNowBadRequest(f"{lookup.table} has no field {', '.join(unknown)} (sys_dictionary), which the "
                                   "lookup's where names: check the mapping's lookup")
    return reader.look_up(lookup, values)


def _optional(read: Future, unknown, why: str) -> tuple[Any, list[str]]:
    """The result of a read a run can do without, or ``unknown`` and a note of ``why`` it is missing:
    it must not fail a run (the user may not read cmdb_ci or the dictionary, say)."""
    try:
        return read.result(), []
    except ServiceNowError as exc:
        return unknown, [f"{why}: {exc}"]


def _read_class(reader: CmdbReader, table: str, variants: list, desired: list[DesiredCI]
                ) -> tuple[list[ExistingCI] | None, str]:
    """``_read_table``, or (None, why) when the instance refuses the class for good: it lacks the class
    (a plugin not installed: 400 "Invalid table") or an ACL refuses it. The other classes are reconciled;
    this one is left as it is; so is a class whose rows changed each time it was read (someone else writing
    to it all along: its read is not complete, and a CI it skipped would be created twice). A failure that
    may pass (throttling, an outage) still fails the run."""
    try:
        return _read_table(reader, table, variants, desired), ""
    except (ServiceNowBadRequest, ServiceNowPermissionError, ServiceNowNotFound, ServiceNowShiftedRead) as exc:
        return None, str(exc)


def _read_table(reader: CmdbReader, table: str, variants: list, desired: list[DesiredCI]) -> list[ExistingCI]:
    mapping = variants[0]
    fields = sorted({f for m in variants for f in m.fields} | set(mapping.retire) | set(mapping.revive))
    found = reader.owned_cis(table, fields)
    # after the class's last page, so in C: the identities held, and whether any desired one is not
    known = set(map(methodcaller("get", mapping.identity_field), map(attrgetter("fields"), found)))
    if set(map(attrgetter("identity"), desired)) <= known or not reader.others_exist(table):
        return found
    missing = [ci for ci in desired if ci.identity not in known]
    theirs = reader.cis_where_in(table, mapping.identity_field, [ci.identity for ci in missing], fields)
    found += theirs  # CIs of other sources that hold the missing identities
    known.update(ci.fields.get(mapping.identity_field) for ci in theirs)
    object_ids = [str(ci.fields.get("object_id")) for ci in missing if ci.identity not in known and ci.fields.get("object_id")]
    if object_ids:
        found += reader.cis_where_in(table, "object_id", object_ids, fields, f"^{mapping.identity_field}ISEMPTY")
    return found


def _check_discovery_source(source: str, field_lengths: dict[str, dict[str, int]]) -> None:
    """Refuse a discovery_source longer than the instance keeps (its field's max_length): cut, it would
    mark no CI as this connector's, and every run would create every CI again."""
    kept = {table: lengths["discovery_source"] for table, lengths in field_lengths.items()
            if lengths.get("discovery_source", len(source)) < len(source)}
    if kept:
        table, length = min(kept.items(), key=lambda item: item[1])
        raise ConfigError(
            f"[servicenow] discovery_source: {source!r} is {len(source)} characters, and the instance keeps "
            f"{length} of it ({table}.discovery_source in sys_dictionary): cut, it would mark no CI as this "
            "connector's, and each run would create every CI again. Fix: a discovery_source of at most "
            f"{length} characters (nothing was written)."
        )


def _writes_that_did_not_stick(report: dict, output_dir: Path) -> list[str]:
    """Warnings for this run's writes that repeat the previous run's (see report.history)."""
    if not report["changes"]:
        return []  # nothing written: nothing to compare (and no report to read)
    try:
        previous = previous_run_report(output_dir, report["instance"])
        repeated = repeated_writes(previous, report["changes"]) if previous else []
    except Exception as exc:  # noqa: BLE001 - a hint only: it must never cost the run its report
        log.warning("previous run's report not compared: %s: %s", type(exc).__name__, exc)
        return []
    for warning in repeated:
        log.warning("%s", warning)
    return repeated


def _log_findings(report: dict) -> None:
    """What the report holds that someone should act on, in the log as well, for whoever reads the log
    (journald, a log shipper) and not the report: each guard and each warning (they are few: one per
    kind, with a count), and the items not mapped, counted, with the first of them. The errors are
    logged as they happen."""
    for guard in report["guards"]:
        log.warning("guard: %s", guard)
    for warning in report["warnings"]:
        log.warning("%s", warning)
    pending = report.get("retire_pending") or []
    if pending:
        log.info("%d CI(s) gone from AWS are left active until they have been gone reconcile.retire_after_hours, "
                 "e.g. %s %s, retired from %s UTC (all of them in the report's retire_pending)",
                 len(pending), pending[0]["table"], pending[0]["identity"], pending[0]["retire_from"])
    problems = report["mapping_problems"]
    if problems:
        first = problems[0]
        log.warning("%d item(s) could not be mapped, so nothing is retired in their account, region and source; "
                    "e.g. %s in %s: %s (all of them in the report's mapping_problems)",
                    len(problems), first["table"], "/".join(first["scope"]), first["message"])


NOTHING_COLLECTED = "nothing was collected: no scope of any targeted account was read in full"


def nothing_collected(inventory: Inventory) -> bool:
    """Was there something to collect, and not one scope of it collected (every account denied, say: an
    ExternalId changed on one side only)? Then the run failed: nothing was learnt, nothing written. Skipped
    accounts and scopes (suspended, a region not enabled) were nothing to collect: a suspended account's scope
    of its own item among them. The Organization's structure, which Organizations may give when no account's
    role can be assumed, is none of them."""
    skipped = {a.account_id for a in inventory.accounts if a.status == SKIPPED}
    to_collect = any(a.status in NOT_COLLECTED for a in inventory.accounts) or any(
        s.status != SKIPPED and s.account_id not in skipped for s in inventory.scopes)
    reached = {a.account_id for a in inventory.accounts if a.status == OK}
    return to_collect and not any(s.status == OK and s.account_id in reached for s in inventory.scopes)


def exit_code_for(inventory: Inventory, mapped: MapResult, applied: ApplyResult | None,
                  unread: dict[str, str] | None = None) -> int:
    if (applied is not None and applied.failed) or unread or nothing_collected(inventory):
        return EXIT_FAILED
    partial = (
        any(a.status in NOT_COLLECTED for a in inventory.accounts)
        or any(s.status in NOT_COLLECTED for s in inventory.scopes)
        or bool(mapped.problems)
    )
    return EXIT_PARTIAL if partial else EXIT_OK


# -- the flow ----------------------------------------------------------------

def _check_servicenow(reader: CmdbReader, sn, table: str) -> None:
    """Before the collection: the login (one read), and with servicenow.writer = "ire", that the user may use
    the IRE API; either refused fails the run at once."""
    reader.check_login(table)
    if sn.writer == "ire":
        check_ire_access(reader.tables, sn.discovery_source)


class _Stopped(Exception):
    """A stop signal came before ``stage``: it and the stages after it are not begun."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


class _NothingCollected(Exception):
    """Not one scope of a targeted account was collected: the run plans and writes nothing."""


def _stop_before(stage: str) -> None:
    """Between stages: a stop signal (SIGTERM from systemd, Ctrl-C) ends the run here, with its report,
    rather than after minutes more of reading and planning that no write would follow."""
    if stop_requested():
        raise _Stopped(stage)


def run_pipeline(
    settings: Settings,
    *,
    mode: str = "run",
    force: bool = False,
    inventory_file: Path | None = None,
    mappings: MappingSet | None = None,
    shard: tuple[int, int] | None = None,
    retire_accounts: frozenset[str] = frozenset(),
    only_accounts: frozenset[str] = frozenset(),
    approved: ApprovedPlan | None = None,
) -> RunOutcome:
    """accounts -> sessions -> collect -> map -> plan -> apply -> report. ``retire_accounts``: accounts
    that no run collects, whose CIs are all to be retired (run --retire-account; see check_retire_accounts);
    ``only_accounts`` (--account): of the accounts targeted, these alone are collected (not with a saved
    inventory, which holds what it holds), as a shard of their own."""
    if only_accounts and inventory_file:
        raise UsageError("--account chooses the accounts to collect: not with --inventory (a saved inventory is "
                         "reconciled whole; collect --account makes one of a few accounts)")
    with fewer_gc_passes():
        return _run_pipeline(settings, mode, force, inventory_file, mappings, shard, retire_accounts, only_accounts,
                             approved)


def _run_pipeline(settings: Settings, mode: str, force: bool, inventory_file: Path | None,
                  mappings: MappingSet | None, shard: tuple[int, int] | None,
                  retire_accounts: frozenset[str], only_accounts: frozenset[str],
                  approved: ApprovedPlan | None) -> RunOutcome:
    run_id, started, clock = new_run_id(), _now(), StageClock()
    set_run_id(run_id)
    mappings = mappings or load_mappings(settings.mappings_folder())
    inventory, mapped, plan, applied, looked_up, approval = None, MapResult(), None, None, None, None
    mapper = Mapper(mappings, tags=settings.reconcile.tags)

    def map_as_read(records: list) -> None:  # each unit's records mapped as soon as it is in, then dropped
        with clock.stage("map"):
            mapper.add(records)
    errors: list[str] = []
    tables = list(mappings.tables)
    sn = settings.servicenow
    instance, grace = str(sn.instance_url), settings.reconcile.retire_after_hours
    output_dir = settings.path(settings.report.output_dir)
    absent_file = absent_state_path(output_dir, shard)
    tables_client = TableClient(sn)
    try:
        reader = CmdbReader(tables_client, sn.discovery_source, sn.workers)
        # The login checked before the collection, which may take minutes; after a saved inventory is
        # read (quick), so that a file that cannot be read is named first.
        if inventory_file:
            with clock.stage("collect"):
                inventory = read_inventory(inventory_file, sink=map_as_read)
            check_retire_accounts(retire_accounts, inventory.accounts, inventory.targeted, settings)
            _check_servicenow(reader, sn, tables[0])
        else:
            _check_servicenow(reader, sn, tables[0])
            with clock.stage("collect"):
                inventory = collect_from_aws(settings, mappings, shard, retire_accounts, only_accounts, map_as_read)
        if nothing_collected(inventory):
            # nothing planned: not even the Organization's structure (which Organizations may still give) is written
            raise _NothingCollected()
        with clock.stage("map"):
            mapped = mapper.result()
        _stop_before("read")
        freeze_long_lived()
        with clock.stage("read"):
            cmdb = read_cmdb(reader, mappings, mapped, sn.workers)
        _stop_before("plan")
        _check_discovery_source(sn.discovery_source, cmdb.field_lengths)
        for table, why in sorted(cmdb.unread.items()):
            errors.append(f"{table}: its CIs could not be read from ServiceNow, so none of them was written or "
                          f"retired (does the instance have this class? may the user read it?): {why}")
            log.error("%s", errors[-1])
        policies = table_policies(mappings, cmdb.field_lengths, cmdb.missing_fields)
        with clock.stage("plan"):
            # the reference fields' values made the sys_ids of the records they name (pure, as plan is)
            looked_up = resolve_lookups(mapped.cis, mappings.lookups, cmdb.lookups)
            desired = looked_up.cis
            plan = plan_changes(
                desired, cmdb.cis, inventory.scopes, mapped.problems, cmdb.relations, cmdb.rel_types, policies,
                PlanOptions(sn.discovery_source, settings.reconcile.retire, settings.reconcile.max_retire_fraction, force,
                            _snow_time(started), settings.reconcile.last_discovered_days, retire_accounts,
                            grace, load_absent(absent_file, instance, sn.discovery_source) if grace else {}),
                cmdb.key_values, cmdb.other_classes, cmdb.field_lengths.get(KV_TABLE), inventory.targeted,
            )
            plan.warnings.extend([*mapped.warnings, *looked_up.warnings, *cmdb.notes])
            if approved is not None:  # only what the reviewed plan shows, as it showed it
                plan, approval = approve(plan, approved)
        writer = TableApiWriter(tables_client, sn.batch_size)
        if sn.writer == "ire":
            creates = {(c.table, c.identity) for c in plan.changes if c.action == CREATE}
            writer = IreWriter(tables_client, writer, sn.discovery_source, desired, plan.sys_ids, creates,
                               sn.batch_size, scanned_at=_snow_time(started))
            if mode == "plan":  # what IRE's identification would make of the CI writes, asked, committing nothing
                predict_with(plan, writer, policies, sn.workers)
        if mode == "run" and not stop_requested():
            with clock.stage("apply"):
                applied = apply_plan(plan, writer, policies, cmdb.rel_types, sn.workers, sn.batch_size)
            if isinstance(writer, IreWriter):  # its writes that went otherwise than plan said
                plan.warnings.extend(writer.findings())
        if mode == "run" and grace:  # since when each CI is gone, for the next run (a plan only reads it)
            try:
                save_absent(absent_file, instance, sn.discovery_source, plan.absent)
            except OSError as exc:
                errors.append(f"{absent_file}: not written ({exc.strerror or exc}): the next run waits again, from "
                              "its own time, before it retires the CIs gone from AWS")
                log.error("%s", errors[-1])
        exit_code = EXIT_INTERRUPTED if stop_requested() else exit_code_for(inventory, mapped, applied, cmdb.unread)
        if stop_requested():
            errors.append("interrupted by a stop signal: writes not yet started were left for the next run")
    except _NothingCollected:
        errors.append(f"{NOTHING_COLLECTED} (see the accounts and scopes), so no CI was written or retired")
        log.error("%s", errors[-1])
        exit_code = EXIT_FAILED
    except _Stopped as stop:
        errors.append(f"interrupted by a stop signal before {stop.stage}: nothing was written; the next run does "
                      "it all")
        exit_code = EXIT_INTERRUPTED
    except UsageError:
        raise
    except ConnectorError as exc:
        log.error("run %s failed: %s", run_id, exc)
        errors.append(str(exc))
        exit_code = EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: still write the report of what was done
        log.error("run %s failed unexpectedly: %s: %s", run_id, type(exc).__name__, exc, exc_info=True)
        errors.append(f"unexpected {type(exc).__name__}: {exc}")
        exit_code = EXIT_FAILED
    finally:
        tables_client.close()
    report = build_report(
        run_id=run_id, mode=mode, started_at=started, finished_at=_now(), exit_code=exit_code,
        inventory=inventory, plan=plan, applied=applied, problems=mapped.problems, errors=errors, tables=tables,
        timings=clock.seconds, cpu_timings=clock.cpu, instance=instance,
        unresolved_lookups=looked_up.unresolved if looked_up is not None else [],
        approval=approval.as_dict() if approval is not None else None,
        options=run_options(force=force, shard=shard, only_accounts=only_accounts, retire_accounts=retire_accounts,
                            inventory=inventory_file),
    )
    _log_findings(report)
    report["warnings"] = [*report["warnings"], *_writes_that_did_not_stick(report, output_dir)]
    path = write_report(report, output_dir)
    write_outputs(report, path)
    prune_reports(output_dir, settings.report.keep_days)
    log.info("%s", summary_line(report))
    return RunOutcome(exit_code, report, path)

