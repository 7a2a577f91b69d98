"""cmdb-connector [--config PATH] COMMAND

Exit codes: 0 ok; 3 partial (some scope not collected, its CIs untouched);
1 failed; 2 bad usage, config or mapping.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ConfigError, ConnectorError, UsageError, did_you_mean
from .aws.targets import parse_account_ids, parse_shard
from .ops import setup_logging
from .mapping.load import load_mappings, mapping_notes
from .settings import Settings, find_config, load_settings

log = logging.getLogger("connector")
# what a wrong path gives: a usage error (exit 2); any other OSError (a full disk, say) fails the command (1)
PATH_MISTAKES = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EEXIST}


EXIT_DRIFT = 4  # plan --fail-on-drift: the run was ok, and the CMDB differs from AWS


def _common_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """--config, -v and --log-format; after the command, without defaults (see _parser)."""
    def default(value):
        return argparse.SUPPRESS if after_command else value

    parser.add_argument("--config", metavar="PATH", default=default(None),
                        help="config file (default ./config.toml, then $CMDB_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="debug logging")
    parser.add_argument("--log-format", choices=("auto", "text", "json"), default=default("auto"),
                        help="auto: text on a terminal, JSON lines otherwise")


def _target_options(parser: argparse.ArgumentParser) -> None:
    """--shard and --account: which of the accounts the configuration targets a command takes."""
    parser.add_argument("--shard", metavar="K/N", help="only the accounts of shard K of N (a stable hash of the "
                                                       "account id)")
    parser.add_argument("--account", dest="only_accounts", metavar="ACCOUNT_ID", action="append", default=[],
                        help="only this account, of those the configuration targets (may be repeated): the others "
                             "are neither collected nor retired, as another shard's")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmdb-connector",
        description="Keep a ServiceNow CMDB true to what runs in AWS, across an AWS Organization.",
    )
    _common_options(parser)
    parser.add_argument("--version", action="version", version=f"cmdb-connector {__version__}")
    # The same options after the command too (cmdb-connector run --config F): there they have no
    # default of their own, so that one given before the command is not undone.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, after_command=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=lambda **kw: argparse.ArgumentParser(parents=[common], **kw))

    retire_help = ("retire every CI of this account, which the configuration no longer targets (gone from the "
                   "Organization, or left out by aws.accounts, aws.organizational_units or aws.exclude_accounts: "
                   "the report's untargeted_accounts); may be repeated; the guard still holds")
    reconciling = {  # run and plan: the same options, but for what --force and --approved tell
        "run": ("collect, map, plan, apply, report",
                "make the writes a guard held back (the report's guards say which): retires past "
                "reconcile.max_retire_fraction, bulk clears and deletions, creates that would duplicate",
                "make only the changes of this reviewed plan (the JSON report of a plan) that are planned again as it "
                "shows them: the others are held back, named in the guards"),
        "plan": ("the same as run, without any write: a drift report",
                 "plan the writes a guard holds back, as run --force would",
                 "what run --approved with this reviewed plan would make, and hold back"),
    }
    for name, (command_help, force_help, approved_help) in reconciling.items():
        command = sub.add_parser(name, help=command_help)
        _target_options(command)
        command.add_argument("--every", metavar="DURATION",
                             help="keep running on this period (90s, 30m, 6h, 1d), MID-Server style")
        command.add_argument("--jitter", metavar="DURATION",
                             help="random delay before the first run (default: a tenth of --every, at most 5m)")
        command.add_argument("--force", action="store_true", help=force_help)
        command.add_argument("--inventory", metavar="FILE", type=Path,
                             help="reconcile a saved inventory instead of live AWS")
        command.add_argument("--retire-account", dest="retire_accounts", metavar="ACCOUNT_ID", action="append",
                             default=[], help=retire_help)
        command.add_argument("--approved", metavar="PLAN.json", type=Path, help=approved_help)
    sub.choices["plan"].add_argument(
        "--fail-on-drift", action="store_true",
        help=f"exit {EXIT_DRIFT} when the plan has any write to make (a drift gate for a pipeline)")

    collect = sub.add_parser("collect", help="collect the inventory into a JSON Lines file")
    collect.add_argument("--output", metavar="FILE", type=Path, required=True)
    _target_options(collect)

    access = sub.add_parser("check-access", help="assume the role in every target account, and read one row of "
                                                 "every ServiceNow table a run reads; print the results")
    _target_options(access)
    only = access.add_mutually_exclusive_group()
    only.add_argument("--aws-only", action="store_true", help="the AWS side only")
    only.add_argument("--servicenow-only", action="store_true", help="the ServiceNow side only (no AWS credentials needed)")
    access.add_argument("--calls", action="store_true", help="also make each listing the mappings name once in each "
                        "account and region (its first page, as a run does), and name those refused (a service "
                        "control policy, say)")

    sub.add_parser("validate", help="check the config and every mapping file")

    preview = sub.add_parser("map", help="what the mapping files make of a saved inventory, offline: CIs, "
                                         "relations, empty fields, targets not found")
    preview.add_argument("--inventory", metavar="FILE", type=Path, required=True,
                         help="an inventory saved by collect --output")
    preview.add_argument("--class", dest="classes", metavar="CLASS", action="append",
                         help="only this class (may be given again)")
    preview.add_argument("--mappings", metavar="DIR", type=Path,
                         help="the mapping files of this folder, and no config needed (default: the config's)")
    preview.add_argument("--tags", action="store_true", help="map the tags too, as reconcile.tags = true does")
    preview.add_argument("--output", metavar="FILE", type=Path,
                         help="write every CI there as JSON Lines, as it would be written ('-': standard output)")

    init = sub.add_parser("init-mappings", help="copy the built-in mapping files into a folder, to edit them")
    init.add_argument("folder", type=Path, help="a new or empty folder, then named in reconcile.mappings_dir")

    demo = sub.add_parser("demo", help="simulated AWS Organization + local ServiceNow stand-in, one full run")
    demo.add_argument("--output-dir", type=Path, default=Path("reports"), help="where the report goes (default ./reports)")
    demo.add_argument("--writer", choices=("table", "ire"), default="table",
                      help="write the CIs through the Table API (default) or IRE (servicenow.writer)")

    report = sub.add_parser("report", help="render a saved JSON report again: HTML, CSV, Prometheus textfile")
    report.add_argument("file", metavar="FILE.json", type=Path,
                        help="a report-<run_id>.json that run or plan wrote; the others are written beside it")

    sandbox = sub.add_parser("sandbox", help="start the ServiceNow stand-in and the simulated AWS Organization, and wait")
    sandbox.add_argument("--db", type=Path, help="keep the stand-in's CMDB in this SQLite file between sandbox runs")
    return parser


def _settings(args) -> Settings:
    return load_settings(find_config(args.config))


def cmd_validate(args) -> int:
    from .aws.operations import check_operations

    settings = _settings(args)
    mappings = load_mappings(settings.mappings_folder())
    check_operations(mappings)  # the AWS calls they name: botocore knows them?
    print(f"config OK: {args.config or 'config.toml'}")
    tables = mappings.tables
    print(f"mappings OK: {len(mappings.mappings)} files, {len(tables)} classes: {', '.join(tables)}")
    if settings.servicenow.writer == "ire":
        from .servicenow.ire import mapping_warnings

        found = mapping_warnings(tables)
        print(f"writer: ire (CI writes through /api/now/identifyreconcile); {len(found)} warning(s)"
              + "".join(f"\n  warning: {w}" for w in found))
    for line in mapping_notes(mappings):
        print(line)
    tagged = [table for table, variants in tables.items() if any(m.tags is not None for m in variants)]
    if settings.reconcile.tags:
        print(f"tags to cmdb_key_value (reconcile.tags = true) for {len(tagged)} classes: {', '.join(tagged) or 'none'}")
    else:
        print(f"tags: off (reconcile.tags = false); {len(tagged)} classes map them")
    looked_up = [f"{table}.{name} in {lookup}" for table, fields in mappings.lookups.items()
                 for name, lookup in sorted(fields.items())]
    if looked_up:
        print(f"reference fields looked up when run: {', '.join(looked_up)}")
    seeded = sorted({f"{m.table}.{name}" for m in mappings.mappings.values() for name in m.create_only})
    if seeded:
        print(f"written on a create only (create_only): {', '.join(seeded)}")
    joined = sorted({f"{m.table} from " + " and ".join(
        join.operation + (" (asked once per region)" if join.shared else "") for join in m.source.joins)
        for m in mappings.mappings.values() if m.source.joins})
    if joined:
        print(f"joined to a call for many items at once ([source.join]): {', '.join(joined)}")
    wait = settings.reconcile.retire_after_hours
    if not settings.reconcile.retire:
        print("retire: off (reconcile.retire = false)")
    elif wait:
        print(f"retire: a CI gone from AWS is retired once gone {wait:g} hour(s) (reconcile.retire_after_hours)")
    else:
        print("retire: a CI gone from AWS is retired by the first run that misses it (reconcile.retire_after_hours = 0)")
    return 0


def cmd_map(args) -> int:
    import json

    from collections import Counter

    from .inventory import read_inventory
    from .mapping.preview import ci_row, preview, preview_lines
    from .mapping.transform import Mapper

    if args.mappings is not None:
        folder, tags = args.mappings, args.tags
    else:
        try:
            path = find_config(args.config)
        except ConfigError as exc:
            raise ConfigError(f"{exc} Or pass --mappings DIR: map needs only the mapping files.") from None
        settings = load_settings(path)
        folder, tags = settings.mappings_folder(), args.tags or settings.reconcile.tags
    mappings = load_mappings(folder)
    tables = set(args.classes) if args.classes else None
    for name in sorted(tables or ()):
        if name not in mappings.tables:
            raise UsageError(f"--class {name}: no mapping file defines this class{did_you_mean(name, mappings.tables)}; "
                             f"the classes: {', '.join(mappings.tables)}")
    # the preview names the fields empty in every CI itself, whatever their number
    mapper, sources = Mapper(mappings, tags=tags, unfilled=False), Counter()

    def map_as_read(records: list) -> None:  # a thousand lines at a time: the raw items are not all held
        sources.update(record.source for record in records)
        mapper.add(records)

    inventory = read_inventory(args.inventory, sink=map_as_read)
    mapped = mapper.result()
    chosen = [ci for ci in mapped.cis if tables is None or ci.table in tables]
    summary_out = sys.stdout
    if args.output is not None:
        rows = (json.dumps(ci_row(ci), ensure_ascii=False) + "\n" for ci in chosen)
        if str(args.output) == "-":
            sys.stdout.writelines(rows)
            summary_out = sys.stderr  # standard output is the CIs'
        else:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            with args.output.open("w", encoding="utf-8") as out:
                out.writelines(rows)
    result = preview(sources, mappings, mapped, tables)
    not_ok = sum(scope.status != "ok" for scope in inventory.scopes)
    print(f"mappings: {folder or 'built-in'} ({len(mappings.mappings)} files){', tags on' if tags else ''}; "
          f"inventory: {args.inventory} ({sum(sources.values())} resources, {len(inventory.scopes)} scopes"
          + (f", {not_ok} not collected ok: their resources are not in it" if not_ok else "") + ")", file=summary_out)
    for line in preview_lines(result):
        print(line, file=summary_out)
    if args.output is not None and str(args.output) != "-":
        print(f"CIs: {args.output} ({len(chosen)})", file=summary_out)
    # 1 when some item of the classes shown could not be mapped: a run would leave its scope untouched
    return 1 if any(c.not_mapped for c in result.classes) else 0


def cmd_init_mappings(args) -> int:
    import shutil

    from .mapping.load import builtin_mappings_dir

    folder: Path = args.folder
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder; choose a new folder")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder}: folder exists and is not empty; choose a new folder")
    source = builtin_mappings_dir()
    files = sorted(source.glob("*.toml")) + [source / "README.md"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copyfile(path, folder / path.name)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot write the mapping files there: {exc.strerror or exc}") from None
    print(f"{len(files) - 1} mapping files copied to {folder}. Set reconcile.mappings_dir = \"{folder}\" to use them.")
    return 0


def cmd_run(args) -> int:
    from .ops import RunLock, install_stop_handlers, parse_duration, run_every
    from .report.json_report import change_lines, run_options
    from .run import run_pipeline

    settings = _settings(args)
    shard = parse_shard(args.shard)
    only_accounts = parse_account_ids(args.only_accounts, "--account")
    retire_accounts = parse_account_ids(args.retire_accounts, "--retire-account")
    period = parse_duration(args.every) if args.every else None
    jitter = parse_duration(args.jitter, allow_zero=True) if args.jitter else min(300.0, (period or 0) / 10)
    if args.approved and period:
        raise UsageError("--approved makes the changes of one reviewed plan: not with --every (each scheduled run "
                         "would have new changes to review)")
    approved = _approved_plan(args.approved, settings, run_options(
        force=args.force, shard=shard, only_accounts=only_accounts, retire_accounts=retire_accounts,
        inventory=args.inventory)) if args.approved else None

    runs = 0

    def once() -> int:
        nonlocal runs
        # Each scheduled run reads the config again, as it reads the mapping files: an account added, a
        # secret rotated in its *_FILE, take effect at the next run (a config broken meanwhile skips that
        # run, named in the log). The lock and the schedule stay those of the start.
        current = settings if not runs else _settings(args)
        runs += 1
        outcome = run_pipeline(current, mode=args.command, force=args.force, inventory_file=args.inventory,
                               shard=shard, retire_accounts=retire_accounts, only_accounts=only_accounts,
                               approved=approved)
        for line in change_lines(outcome.report):
            print(line)
        print(f"report: {outcome.report_path}")
        print(f"html: {outcome.report_path.with_suffix('.html')}", flush=True)
        if getattr(args, "fail_on_drift", False) and outcome.exit_code == 0 and outcome.report["changes"]:
            print(f"drift: {len(outcome.report['changes'])} write(s) planned (--fail-on-drift: exit {EXIT_DRIFT})")
            return EXIT_DRIFT
        return outcome.exit_code

    install_stop_handlers()
    with RunLock(settings.path(settings.report.output_dir) / ".cmdb-connector.lock"):
        return run_every(period, jitter, once) if period else once()


def _approved_plan(path: Path, settings: Settings, options: dict):
    """--approved: the reviewed plan's report, which approve.refusal finds nothing wrong with."""
    from datetime import datetime, timezone

    from .reconcile.approve import ApprovedPlan, refusal
    from .report.outputs import load_report

    report = load_report(path)
    why = refusal(str(path), report, instance=str(settings.servicenow.instance_url), options=options,
                  now=datetime.now(timezone.utc), max_age_hours=settings.reconcile.approval_max_age_hours)
    if why:
        raise UsageError(why)
    return ApprovedPlan.of_report(str(path), report)


def cmd_report(args) -> int:
    from .report.outputs import load_report, write_outputs

    written = write_outputs(load_report(args.file), args.file)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def cmd_collect(args) -> int:
    from .inventory import InventoryWriter
    from .mapping.transform import MapResult
    from .run import NOTHING_COLLECTED, collect_from_aws, exit_code_for, nothing_collected

    settings = _settings(args)
    mappings = load_mappings(settings.mappings_folder())
    with InventoryWriter(args.output) as writer:  # each unit's resources written as it is in: none held
        inventory = collect_from_aws(settings, mappings, parse_shard(args.shard),
                                     only=parse_account_ids(args.only_accounts, "--account"), sink=writer.resources)
        writer.finish(inventory)
    print(f"inventory: {args.output} ({writer.written} resources, {len(inventory.scopes)} scopes)")
    if nothing_collected(inventory):
        print(f"failed: {NOTHING_COLLECTED}", file=sys.stderr)
    return exit_code_for(inventory, MapResult(), None)  # as run's: 0 ok, 3 partial, 1 nothing collected


def cmd_check_access(args) -> int:
    from .aws.access import check_access, render_table
    from .aws.accounts import management_account
    from .aws.targets import find_targets, open_session_pool

    settings = _settings(args)
    failed = False
    if not args.servicenow_only:
        pool = open_session_pool(settings)
        targets = find_targets(settings, pool, parse_shard(args.shard), tree=True,
                               only=parse_account_ids(args.only_accounts, "--account"))
        accounts = targets.accounts
        management = management_account(accounts)
        rows = check_access(pool, accounts, settings.aws.role_name, management)
        print(render_table(rows))
        tree = targets.organization
        if tree is not None:  # the Organization's OUs, for its CIs and each account's place (not with aws.accounts)
            print(f"organization: {tree.failure[1]}" if tree.failure else
                  f"organization: {len(tree.units)} OU(s) read, and the parent of {len(tree.parents)} account(s)")
        failed = any(r.status not in ("ok", "skipped") for r in rows) or bool(tree and tree.failure)
        if args.calls:
            from .aws.access import check_calls, joined_calls, render_calls

            sources = load_mappings(settings.mappings_folder()).sources
            calls = check_calls(pool, [r.account_id for r in rows if r.status == "ok"], sources, settings.aws.regions,
                                settings.aws.max_workers)
            print(render_calls(calls, joined_calls(sources)))
            failed = failed or any(c.status != "ok" for c in calls)
    if not args.aws_only:
        if not args.servicenow_only:
            print()
        failed = _check_servicenow_access(settings) or failed
    return 3 if failed else 0


def _check_servicenow_access(settings: Settings) -> bool:
    """The ServiceNow side of check-access, printed; True if any check failed."""
    from .run import fields_written
    from .servicenow.access import check_servicenow, needs_of, render_servicenow
    from .servicenow.client import TableClient
    from .servicenow.cmdb import CmdbReader

    mappings = load_mappings(settings.mappings_folder())
    sn = settings.servicenow
    tags = settings.reconcile.tags and any(m.tags is not None for m in mappings.mappings.values())
    lookups = {lookup for fields in mappings.lookups.values() for lookup in fields.values()}
    needs = needs_of(mappings.tables, tags, {lookup.table for lookup in lookups})
    relation_types = {r.type for m in mappings.mappings.values() for r in m.relations}
    tables = TableClient(sn)
    try:
        rows = check_servicenow(CmdbReader(tables, sn.discovery_source, sn.workers), needs, relation_types,
                                sn.writer == "ire", fields_written(mappings, tags, lookups))
    finally:
        tables.close()
    print(render_servicenow(rows, f"{sn.instance_url} as {sn.username or sn.client_id} ({sn.auth})"))
    return any(row.status != "ok" for row in rows)


def cmd_demo(args) -> int:
    from .report.json_report import change_lines, summary_line
    from .run import run_pipeline
    from .sandbox.demo import sandboxes

    print("Starting a simulated AWS Organization and a local ServiceNow stand-in on 127.0.0.1 ...")
    with sandboxes() as boxes:
        print(f"  AWS Organization: {len(boxes.org.accounts)} accounts in {len(boxes.org.units)} OUs, "
              "regions us-east-1 and eu-west-1")
        print(f"  ServiceNow stand-in: {boxes.servicenow.url}")
        data = boxes.settings_data(args.output_dir.resolve())
        data["servicenow"]["writer"] = args.writer
        settings = load_settings(None, data)
        outcome = run_pipeline(settings, mode="run")
    for line in change_lines(outcome.report):
        print(line)
    print(summary_line(outcome.report))
    print(f"report: {outcome.report_path}")
    print(f"html: {outcome.report_path.with_suffix('.html')}")
    return outcome.exit_code


def cmd_sandbox(args) -> int:
    from .sandbox.demo import DEMO_USER, sandboxes

    with sandboxes(db_path=args.db) as boxes:
        # Ctrl-C is caught from the first line printed on: whoever reads the last
        # one may stop the sandbox at once, before the wait has begun.
        try:
            print("Sandbox running (Ctrl-C to stop). Point the connector at it with:")
            print(f"  export AWS_ENDPOINT_URL={boxes.aws.url}")
            print("  export AWS_ACCESS_KEY_ID=AKIDSANDBOXCENTRAL AWS_SECRET_ACCESS_KEY=sandbox-secret")
            print(f"  export CMDB_SERVICENOW__INSTANCE_URL={boxes.servicenow.url}")
            print(f"  export CMDB_SERVICENOW__USERNAME={DEMO_USER}")
            print(f"  export CMDB_SERVICENOW__PASSWORD='{boxes.password}'")
            print(f"  export CMDB_AWS__EXTERNAL_ID='{boxes.external_id}'")
            print(f"Accounts: {', '.join(f'{n}={a}' for n, a in boxes.org.accounts.items())}")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")
    return 0


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_run,
    "collect": cmd_collect,
    "check-access": cmd_check_access,
    "report": cmd_report,
    "validate": cmd_validate,
    "map": cmd_map,
    "init-mappings": cmd_init_mappings,
    "demo": cmd_demo,
    "sandbox": cmd_sandbox,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConnectorError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader of standard output went away (| head): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the flush at exit is quiet
        return 1
    except OSError as exc:  # a file or folder of the config or the command line: named, without a traceback
        log.debug("%s", exc, exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno in PATH_MISTAKES:
            print(f"error: {where}{exc.strerror} (check the path: the command line, report.output_dir, "
                  "reconcile.mappings_dir)", file=sys.stderr)
            return UsageError.exit_code
        print(f"failed: {where}{exc.strerror or exc}", file=sys.stderr)
        return ConnectorError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
