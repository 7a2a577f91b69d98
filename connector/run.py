"""The one orchestrator: accounts -> sessions -> collect -> map -> plan -> apply -> report.

Each stage hands plain data to the next. This module only wires them.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .aws.collect import collect_inventory
from .aws.targets import open_account_sessions, open_session_pool, target_accounts
from .errors import ConnectorError, UsageError
from .inventory import read_inventory
from .mapping.load import MappingSet, load_mappings
from .mapping.transform import MapResult, map_inventory
from .models import DENIED, ERROR, THROTTLED, Inventory
from .reconcile.apply import ApplyResult, apply_plan
from .reconcile.plan import PlanOptions, TablePolicy, plan_changes
from .report.json_report import build_report, summary_line, write_report
from .ops import EXIT_INTERRUPTED, set_run_id, stop_requested
from .report.outputs import write_outputs
from .servicenow.client import TableClient
from .servicenow.cmdb import CmdbReader, TableApiWriter
from .settings import Settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
NOT_COLLECTED = {DENIED, THROTTLED, ERROR}


@dataclass
class RunOutcome:
    exit_code: int
    report: dict
    report_path: Path | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def collect_from_aws(settings: Settings, mappings: MappingSet, shard: tuple[int, int] | None = None) -> Inventory:
    """accounts -> sessions -> collect."""
    pool = open_session_pool(settings)
    accounts = open_account_sessions(pool, target_accounts(settings, pool, shard), settings.aws.max_workers)
    return collect_inventory(
        pool, accounts, mappings.sources, list(settings.aws.regions),
        settings.aws.max_workers, settings.aws.max_workers_per_account,
    )


# -- plan inputs -------------------------------------------------------------

def table_policies(mappings: MappingSet) -> dict[str, TablePolicy]:
    return {
        table: TablePolicy(
            table=table,
            identity_field=variants[0].identity_field,
            sources=tuple(m.source.name for m in variants),
            retire=variants[0].retire,
            revive=variants[0].revive,
            relations=tuple((r.type, r.to, r.role) for m in variants for r in m.relations),
        )
        for table, variants in mappings.tables.items()
    }


def read_existing(reader: CmdbReader, mappings: MappingSet, mapped: MapResult, workers: int = 1) -> dict:
    """Owned CIs (one paged query per table, tables read in parallel), plus the CIs to adopt."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read-table") as pool:
        found = pool.map(lambda item: _read_table(reader, item[0], item[1], mapped), mappings.tables.items())
        return dict(zip(mappings.tables, found))


def _read_table(reader: CmdbReader, table: str, variants: list, mapped: MapResult) -> list:
    mapping = variants[0]
    fields = sorted({f for m in variants for f in m.fields} | set(mapping.retire) | set(mapping.revive))
    found = reader.owned_cis(table, fields)
    known = {ci.fields.get(mapping.identity_field) for ci in found}
    missing = [ci for ci in mapped.cis if ci.table == table and ci.identity not in known]
    if not missing or not reader.others_exist(table):
        return found
    found += reader.cis_where_in(table, mapping.identity_field, [ci.identity for ci in missing], fields)
    known |= {ci.fields.get(mapping.identity_field) for ci in found}
    object_ids = [str(ci.fields.get("object_id")) for ci in missing if ci.identity not in known and ci.fields.get("object_id")]
    if object_ids:
        found += reader.cis_where_in(table, "object_id", object_ids, fields, f"^{mapping.identity_field}ISEMPTY")
    return found


def exit_code_for(inventory: Inventory, mapped: MapResult, applied: ApplyResult | None) -> int:
    if applied is not None and applied.failed:
        return EXIT_FAILED
    partial = (
        any(a.status in NOT_COLLECTED for a in inventory.accounts)
        or any(s.status in NOT_COLLECTED for s in inventory.scopes)
        or bool(mapped.problems)
    )
    return EXIT_PARTIAL if partial else EXIT_OK


# -- the flow ----------------------------------------------------------------

def run_pipeline(
    settings: Settings,
    *,
    mode: str = "run",
    force: bool = False,
    inventory_file: Path | None = None,
    mappings: MappingSet | None = None,
    shard: tuple[int, int] | None = None,
) -> RunOutcome:
    """accounts -> sessions -> collect -> map -> plan -> apply -> report."""
    run_id, started = new_run_id(), _now()
    set_run_id(run_id)
    mappings = mappings or load_mappings(settings.mappings_folder())
    inventory, mapped, plan, applied = None, MapResult(), None, None
    errors: list[str] = []
    tables = list(mappings.tables)
    sn = settings.servicenow
    tables_client = TableClient(sn)
    try:
        inventory = read_inventory(inventory_file) if inventory_file else collect_from_aws(settings, mappings, shard)
        mapped = map_inventory(inventory, mappings)
        reader = CmdbReader(tables_client, sn.discovery_source, sn.workers)
        policies = table_policies(mappings)
        rel_types = reader.relation_types({r.type for m in mappings.mappings.values() for r in m.relations})
        plan = plan_changes(
            mapped.cis,
            read_existing(reader, mappings, mapped, sn.workers),
            inventory.scopes,
            mapped.problems,
            reader.relations(rel_types.values()),
            rel_types,
            policies,
            PlanOptions(sn.discovery_source, settings.reconcile.retire, settings.reconcile.max_retire_fraction, force),
        )
        if mode == "run" and not stop_requested():
            writer = TableApiWriter(tables_client, sn.batch_size)
            applied = apply_plan(plan, writer, policies, rel_types, sn.workers, sn.batch_size)
        exit_code = EXIT_INTERRUPTED if stop_requested() else exit_code_for(inventory, mapped, applied)
        if stop_requested():
            errors.append("interrupted by a stop signal: writes not yet started were left for the next run")
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
    )
    path = write_report(report, settings.path(settings.report.output_dir))
    write_outputs(report, path)
    log.info("%s", summary_line(report))
    return RunOutcome(exit_code, report, path)

