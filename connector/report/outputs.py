"""Report outputs beside the JSON: a self-contained HTML page, a CSV of the
changes, and a Prometheus textfile. Each is rendered from the JSON report
alone, so ``cmdb-connector report FILE.json`` can render them again."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from .json_report import COUNTS, option_flags, tag_totals, write_text_atomic
from .shape import shape_problems

ACTIONS = COUNTS
COLORS = {"created": "#2e7d32", "updated": "#1565c0", "retired": "#c62828", "revived": "#6a1b9a",
          "refreshed": "#78909c", "unchanged": "#9e9e9e"}
HEADLINES = {
    0: ("OK", "#2e7d32", "Every scope was collected and every write succeeded."),
    3: ("PARTIAL", "#ef6c00", "Some accounts or regions were not collected, or some of their items did not map; "
                              "their CIs were left exactly as they were. See the accounts table (then run "
                              "check-access) and the mapping problems."),
    1: ("FAILED", "#c62828", "Some writes failed, a class could not be read, ServiceNow could not be reached or "
                             "refused the login, or no account at all could be collected (see the accounts table, "
                             "then run check-access). See the errors below; the next run finishes what this one "
                             "could not."),
    130: ("INTERRUPTED", "#ef6c00", "A stop signal (SIGTERM, Ctrl-C) ended the run: writes in flight finished, "
                                    "those not begun are left for the next run, which finishes them. See the errors "
                                    "below for where it stopped."),
}


def _headline(report: dict[str, Any]) -> tuple[str, str, str]:
    code = report.get("exit_code", 1)
    word, color, advice = HEADLINES.get(code, ("FAILED", "#c62828", "See the errors below."))
    if report.get("mode") == "plan":
        advice = "A plan: nothing was written. " + advice.replace("every write succeeded", "the changes below are what run would do")
        if report.get("changes"):
            command = " ".join(["cmdb-connector run --approved", f"report-{report['run_id']}.json",
                                *option_flags(report.get("options") or {})])
            advice += f" Once reviewed, {command} (in the reports folder) makes these changes and no other."
    approval = report.get("approval")  # run/plan --approved (reports before it have none)
    if approval:
        advice += (f" Only the changes of the approved plan {approval['run_id']}: {approval['kept']} made as it showed "
                   f"them, {approval['held']} it does not show held back, {approval['no_longer_due']} of it no longer "
                   "due.")
    guards = report.get("guards") or []
    if len(guards) > bool(approval and approval["held"]):  # a guard besides the approval's own
        advice += " The blast-radius guard held writes back: see Guards."
    if guards and code == 0:  # every write made succeeded, but not every write was made: not a green page
        word, color = "OK, WRITES HELD BACK", "#ef6c00"
    if report.get("warnings"):  # a field not written, a write the instance undid: worth reading, if not red
        advice += f" {len(report['warnings'])} warning(s) to read: see Warnings."
    return word, color, advice


def _chart(tables: dict[str, dict[str, int]]) -> str:
    """Horizontal stacked bars per class, inline SVG (no script, no external asset)."""
    rows = [(t, c) for t, c in tables.items() if sum(c.values())]
    width, bar, label = 520, 18, 260
    most = max((sum(c.values()) for _t, c in rows), default=1)
    parts = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{label + width + 60}" '
             f'height="{len(rows) * (bar + 6) + 30}" role="img" aria-label="changes per class">']
    for i, (table, counts) in enumerate(rows):
        y = i * (bar + 6)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{escape(table)}</text>')
        x = label
        for action in ACTIONS:
            n = counts.get(action, 0)
            if n:
                w = max(1.0, width * n / most)
                parts.append(f'<rect class="bar" data-table="{escape(table)}" data-action="{action}" data-count="{n}" '
                             f'x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS[action]}">'
                             f'<title>{escape(table)}: {n} {action}</title></rect>')
                x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 13}" font-size="11">{sum(counts.values())}</text>')
    y = len(rows) * (bar + 6) + 14
    for i, action in enumerate(ACTIONS):
        parts.append(f'<rect x="{label + i * 88}" y="{y}" width="10" height="10" fill="{COLORS[action]}"/>'
                     f'<text x="{label + i * 88 + 14}" y="{y + 9}" font-size="11">{action}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[Any]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c) if c is not None else '')}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _changes(changes: list[dict[str, Any]]) -> str:
    rows = []
    for change in changes:
        diff = "; ".join(f"{k}: {v.get('old', '')} \u2192 {v.get('new', '')}" for k, v in change.get("fields", {}).items())
        text = " ".join(str(x) for x in (change["action"], change["table"], change["identity"], change.get("sys_id") or "",
                                         change.get("status", ""), diff, change.get("note", ""),
                                         change.get("error", ""))).lower()
        cells = [change["action"], change["table"], change["identity"], change.get("sys_id") or "", change.get("status", ""),
                 diff + (f" | note: {change['note']}" if change.get("note") else "")
                 + (f" | error: {change['error']}" if change.get("error") else "")]
        rows.append(f'<tr class="change" data-action="{escape(change["action"])}" data-search="{escape(text)}">'
                    + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("action", "class", "identity", "sys_id", "status", "fields (old \u2192 new)"))
    return f'<table id="changes"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


SCRIPT = """
(function () {
  var search = document.getElementById('search');
  var action = document.getElementById('action');
  var shown = document.getElementById('shown');
  function apply() {
    var words = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var wanted = action.value;
    var count = 0;
    document.querySelectorAll('#changes tr.change').forEach(function (row) {
      var ok = (!wanted || row.dataset.action === wanted) &&
               words.every(function (w) { return row.dataset.search.indexOf(w) !== -1; });
      row.style.display = ok ? '' : 'none';
      if (ok) { count += 1; }
    });
    shown.textContent = count;
  }
  // A link can carry the filter: report.html#action=retire&q=vm_instance
  var hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get('q')) { search.value = hash.get('q'); }
  if (hash.get('action')) { action.value = hash.get('action'); }
  search.addEventListener('input', apply);
  action.addEventListener('change', apply);
  apply();
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.headline { padding: 1em; color: white; border-radius: 6px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td { word-break: break-all; }
"""


NOTES_SHOWN = 100
# A first run into a large CMDB makes tens of thousands of changes: a page with a row for each takes a
# browser tens of seconds to open (44 MB and some 40 s for 40,000). The page shows this many, those to look
# at first; the CSV and the JSON report hold them all.
CHANGES_SHOWN = 2000
# failed writes first, then what removes (retire, delete), revives, updates, creates, and the stamps refreshed
CHANGE_ORDER = {"retire": 0, "delete": 1, "revive": 2, "update": 3, "create": 4, "refresh": 5}


def _shown_changes(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every change, in the report's order, or past ``CHANGES_SHOWN`` the first of them by ``CHANGE_ORDER``."""
    if len(changes) <= CHANGES_SHOWN:
        return changes
    return sorted(changes, key=lambda c: (c.get("status") != "failed",
                                          CHANGE_ORDER.get(c["action"], len(CHANGE_ORDER))))[:CHANGES_SHOWN]


def _notes(title: str, items: list) -> str:
    """One section of notes; past ``NOTES_SHOWN`` (an item that failed to map in each of 20,000
    records, say), the count of the rest, which the JSON report holds whole."""
    shown = "".join(f"<li>{escape(str(item))}</li>" for item in items[:NOTES_SHOWN])
    more = f"<li>... and {len(items) - NOTES_SHOWN} more: see the JSON report</li>" if len(items) > NOTES_SHOWN else ""
    return f"<h2>{escape(title)} ({len(items)})</h2><ul>{shown}{more}</ul>"


def render_html(report: dict[str, Any]) -> str:
    word, color, advice = _headline(report)
    totals = {a: sum(c.get(a, 0) for c in report["tables"].values()) for a in ACTIONS}
    accounts = _table(["account", "name", "status", "reason"],
                      [[a["account_id"], a["name"], a["status"], a.get("error")] for a in report["accounts"]], "accounts")
    missed = [[s["account_id"], s["region"], s["source"], s["status"], s.get("error")]
              for s in report.get("scopes", []) if s["status"] != "ok"]
    scopes = (_table(["account", "region", "source", "status", "reason"], missed, "scopes") if missed
              else '<p id="scopes">None: every scope was collected.</p>')
    counts = _table(["class", *ACTIONS], [[t, *(c.get(a, 0) for a in ACTIONS)] for t, c in report["tables"].items()], "counts")
    problems = [f"{p['table']} {'/'.join(p['scope'])}: {p['message']}" for p in report.get("mapping_problems", [])]
    unresolved = [f"{u['table']}.{u['field']} of {u['identity']}: {u['value']!r} {u['reason']} in {u['lookup']}"
                  for u in report.get("unresolved_lookups") or []]
    drifted = report.get("drifted_fields") or {}  # reports before it have none
    drift = ("<h2>Fields that drifted</h2><p>The fields the updates set, per class: how many CIs held another "
             "value than AWS gives. A field that drifts on every run is edited in the CMDB by someone else.</p>"
             + _table(["class", "field", "CIs"], [[t, f, n] for t, fields in drifted.items() for f, n in fields.items()],
                      "drifted")) if drifted else ""
    pending = report.get("retire_pending") or []  # reports before it have none
    waiting = ("<h2>Gone from AWS, retired later</h2><p>Owned CIs that AWS no longer has, left active until they "
               "have been gone <code>reconcile.retire_after_hours</code>: a run from then on retires each one that "
               "is still gone.</p>" + _table(["class", "identity", "gone since (UTC)", "retired from (UTC)"],
                                              [[p["table"], p["identity"], p["gone_since"], p["retire_from"]]
                                               for p in pending[:NOTES_SHOWN]], "pending")
               + (f"<p>... and {len(pending) - NOTES_SHOWN} more: see the JSON report</p>"
                  if len(pending) > NOTES_SHOWN else "")) if pending else ""
    untargeted = report.get("untargeted_accounts") or []  # reports before it have none
    gone = ("<h2>Accounts no longer targeted</h2><p>Gone from the Organization, or left out by the configuration: no "
            "run collects them, so their CIs are left as they are; <code>run --retire-account ID</code> retires those "
            "of an account gone for good.</p>" + _table(
                ["account", "active CIs", "by class"],
                [[d["account_id"], sum(d["cis"].values()), ", ".join(f"{t}: {n}" for t, n in d["cis"].items())]
                 for d in untargeted], "untargeted")) if untargeted else ""
    notes = "".join(_notes(title, items)
                    for title, items in (("Guards", report.get("guards", [])), ("Errors", report.get("errors", [])),
                                         ("Mapping problems", problems), ("Lookups not resolved", unresolved),
                                         ("Duplicates", report.get("duplicates", [])), ("Warnings", report.get("warnings", [])))
                    if items)
    options = "".join(f'<option value="{a}">{a}</option>'
                      for a in ("create", "update", "retire", "revive", "refresh", "delete"))
    rel, tags = report["relations"], tag_totals(report)
    against = f", against <code>{escape(report['instance'])}</code>" if report.get("instance") else ""
    changes = _shown_changes(report["changes"])
    left_out = len(report["changes"]) - len(changes)
    cut = (f" (the first {len(changes)} of {len(report['changes'])}: failed writes, then retires and deletes, "
           f"revives, updates, creates; every change is in report-{escape(report['run_id'])}.csv and the JSON "
           "report)") if left_out else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cmdb-connector {escape(report['mode'])} {escape(report['run_id'])}</title>
<style>{STYLE}</style></head><body>
<div class="headline" id="headline" style="background:{color}"><h1>{word}</h1><p>{escape(advice)}</p></div>
<p>Run <code>{escape(report['run_id'])}</code> ({escape(report['mode'])}), {escape(report['started_at'])} to
{escape(report['finished_at'])}, exit code {report['exit_code']}{against}.</p>
<p id="totals">CIs: {', '.join(f'{totals[a]} {a}' for a in ACTIONS)}. Relations: {rel['created']} created,
{rel['deleted']} deleted, {rel['unchanged']} unchanged.{f' Tags: {tags}.' if tags else ''}</p>
<h2>Changes per class</h2>{_chart(report['tables'])}{counts}
<h2>Accounts</h2>{accounts}
<h2>Scopes not collected</h2>{scopes}
{drift}
{waiting}
{gone}
{notes}
<h2>Change list</h2>
<p><input id="search" type="search" placeholder="filter: class, identity, field, value..." size="50">
<select id="action"><option value="">every action</option>{options}</select>
<span id="shown"></span> of {len(changes)} shown{cut}</p>
{_changes(changes)}
<script>{SCRIPT}</script>
</body></html>
"""


# What a spreadsheet takes for a formula at the start of a cell. The values come from AWS, where anyone who
# may tag a resource writes them: "=HYPERLINK(...)" in a tag must not run in the CMDB admin's spreadsheet.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    """A CSV cell that a spreadsheet shows as text: one that would start a formula gets a leading "'"
    (OWASP's advice for CSV injection). The JSON report keeps every value as it is."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_START) else text


def render_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["action", "table", "identity", "sys_id", "status", "field", "old", "new", "error", "note"])
    for change in report["changes"]:
        fields = change.get("fields") or {"": {"old": "", "new": ""}}
        for name, diff in fields.items():
            writer.writerow(map(_cell, [change["action"], change["table"], change["identity"], change.get("sys_id") or "",
                                        change.get("status", ""), name, diff.get("old", ""), diff.get("new", ""),
                                        change.get("error", ""), change.get("note", "")]))
    return out.getvalue()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render_prometheus(report: dict[str, Any], previous: str = "") -> str:
    match = re.search(r"^cmdb_connector_runs_total (\d+)", previous, re.M)
    runs = (int(match.group(1)) if match else 0) + 1
    started = datetime.fromisoformat(report["started_at"])
    duration = (datetime.fromisoformat(report["finished_at"]) - started).total_seconds()
    failed_scopes = sum(1 for s in report.get("scopes", []) if s["status"] not in ("ok", "skipped"))
    failed_accounts = sum(1 for a in report["accounts"] if a["status"] not in ("ok", "skipped"))
    lines = [
        "# HELP cmdb_connector_runs_total Runs written to this file.", "# TYPE cmdb_connector_runs_total counter",
        f"cmdb_connector_runs_total {runs}",
        "# HELP cmdb_connector_last_run_exit_code 0 ok, 3 partial, 1 failed, 130 interrupted.", "# TYPE cmdb_connector_last_run_exit_code gauge",
        f'cmdb_connector_last_run_exit_code{{mode="{_label(report["mode"])}"}} {report["exit_code"]}',
        "# HELP cmdb_connector_last_run_timestamp_seconds When the last run started.",
        "# TYPE cmdb_connector_last_run_timestamp_seconds gauge",
        f"cmdb_connector_last_run_timestamp_seconds {started.timestamp():.0f}",
        "# HELP cmdb_connector_last_run_duration_seconds How long the last run took.",
        "# TYPE cmdb_connector_last_run_duration_seconds gauge",
        f"cmdb_connector_last_run_duration_seconds {duration:.3f}",
        "# HELP cmdb_connector_cis CIs by action and class in the last run.", "# TYPE cmdb_connector_cis gauge",
    ]
    for table, counts in report["tables"].items():
        for action in ACTIONS:
            lines.append(f'cmdb_connector_cis{{table="{_label(table)}",action="{action}"}} {counts.get(action, 0)}')
    lines += ["# HELP cmdb_connector_relations Relations by action in the last run.", "# TYPE cmdb_connector_relations gauge"]
    lines += [f'cmdb_connector_relations{{action="{a}"}} {n}' for a, n in report["relations"].items()]
    lines += ["# HELP cmdb_connector_tags Tags (cmdb_key_value rows) by action in the last run.",
              "# TYPE cmdb_connector_tags gauge"]
    lines += [f'cmdb_connector_tags{{action="{a}"}} {n}' for a, n in (report.get("key_values") or {}).items()]
    lines += ["# HELP cmdb_connector_failed_scopes Scopes not collected in the last run.",
              "# TYPE cmdb_connector_failed_scopes gauge", f"cmdb_connector_failed_scopes {failed_scopes}",
              "# HELP cmdb_connector_failed_accounts Accounts not collected in the last run.",
              "# TYPE cmdb_connector_failed_accounts gauge", f"cmdb_connector_failed_accounts {failed_accounts}",
              "# HELP cmdb_connector_errors Errors in the last run.", "# TYPE cmdb_connector_errors gauge",
              f"cmdb_connector_errors {len(report['errors'])}",
              "# HELP cmdb_connector_guards Blast-radius guards that held writes back in the last run (retires, creates, "
              "emptied fields, tag or relation deletions).",
              "# TYPE cmdb_connector_guards gauge", f"cmdb_connector_guards {len(report.get('guards') or [])}",
              "# HELP cmdb_connector_warnings Warnings in the last run (writes the instance undid, relation targets "
              "not found).", "# TYPE cmdb_connector_warnings gauge",
              f"cmdb_connector_warnings {len(report.get('warnings') or [])}"]
    lines += ["# HELP cmdb_connector_unresolved_lookups Values of looked-up reference fields that named no record, "
              "or several, in the last run (each field left as it was).",
              "# TYPE cmdb_connector_unresolved_lookups gauge",
              f"cmdb_connector_unresolved_lookups {len(report.get('unresolved_lookups') or [])}"]
    drifted = report.get("drifted_fields") or {}
    if drifted:
        lines += ["# HELP cmdb_connector_drifted_fields CIs whose field the last run set again (it differed from "
                  "AWS), by class and field.", "# TYPE cmdb_connector_drifted_fields gauge"]
        lines += [f'cmdb_connector_drifted_fields{{table="{_label(t)}",field="{_label(f)}"}} {n}'
                  for t, fields in drifted.items() for f, n in fields.items()]
    lines += ["# HELP cmdb_connector_retire_pending CIs gone from AWS, kept active until they have been gone "
              "reconcile.retire_after_hours.", "# TYPE cmdb_connector_retire_pending gauge",
              f"cmdb_connector_retire_pending {len(report.get('retire_pending') or [])}"]
    untargeted = report.get("untargeted_accounts") or []
    lines += ["# HELP cmdb_connector_untargeted_accounts Accounts the configuration no longer targets that still hold "
              "active CIs of this connector (left as they are).", "# TYPE cmdb_connector_untargeted_accounts gauge",
              f"cmdb_connector_untargeted_accounts {len(untargeted)}"]
    if untargeted:
        lines += ["# HELP cmdb_connector_untargeted_account_cis Active CIs of this connector in an account the "
                  "configuration no longer targets.", "# TYPE cmdb_connector_untargeted_account_cis gauge"]
        lines += [f'cmdb_connector_untargeted_account_cis{{account="{_label(d["account_id"])}"}} {sum(d["cis"].values())}'
                  for d in untargeted]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], json_path: Path) -> dict[str, Path]:
    """HTML and CSV beside the JSON report; the Prometheus textfile in the same folder."""
    html_path, csv_path = json_path.with_suffix(".html"), json_path.with_suffix(".csv")
    write_text_atomic(html_path, render_html(report))
    write_text_atomic(csv_path, render_csv(report))
    prom_path = json_path.parent / "cmdb_connector.prom"
    previous = prom_path.read_text() if prom_path.exists() else ""
    write_text_atomic(prom_path, render_prometheus(report, previous))
    return {"html": html_path, "csv": csv_path, "prometheus": prom_path}


def load_report(path: Path) -> dict[str, Any]:
    from ..errors import UsageError

    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the report: {exc.strerror or exc}") from None
    try:
        report = json.loads(text)
        missing = [key for key in ("run_id", "mode", "tables", "relations", "changes", "accounts") if key not in report]
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not a cmdb-connector JSON report ({type(exc).__name__}: {exc})") from None
    if missing:
        raise UsageError(f"{path}: not a cmdb-connector JSON report (no {', '.join(missing)})")
    problems = shape_problems(report)
    if problems:
        raise UsageError(f"{path}: not a report this version of cmdb-connector can read (another version's, or "
                         "edited?):\n" + "\n".join(f"  {problem}" for problem in problems))
    return report
