"""What the mapping files make of a saved inventory, class by class, with no ServiceNow and no AWS.

For whoever edits a mapping file: ``cmdb-connector map --inventory FILE``
shows, for each class, how many CIs, relations and tags the inventory gives,
the fields that came out empty (in every CI: most likely a path that matches
nothing), the relations whose target is no CI of the inventory (most likely an
identity template that builds no real identity), and the items that could not
be mapped; and, with ``--output``, every CI as it would be written.
Pure: it reads the map stage's result, nothing else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..models import DesiredCI, Lookup
from .functions import snow_value
from .load import MappingSet
from .transform import MapResult


@dataclass
class ClassPreview:
    table: str
    files: list[str]
    cis: int = 0
    relations: Counter = field(default_factory=Counter)  # relation type -> count
    tagged: int = 0  # CIs with at least one tag
    fields: list[str] = field(default_factory=list)  # every field its files map
    empty: Counter = field(default_factory=Counter)  # field -> CIs where it is empty
    mapped: Counter = field(default_factory=Counter)  # field -> CIs whose mapping file maps it
    # (type, target class) -> [count, a CI's identity, the target identity it names]
    targets_not_found: dict[tuple[str, str], list] = field(default_factory=dict)
    # (type, target class) -> CIs whose identity template for it gave nothing (the relation is left out)
    no_target: Counter = field(default_factory=Counter)
    # what items did not know (a mapping's known_when): field -> CIs; (type, target class) -> CIs
    unknown_fields: Counter = field(default_factory=Counter)
    unknown_relations: Counter = field(default_factory=Counter)
    not_mapped: int = 0  # items that could not be mapped
    first_problem: str = ""
    # reference field -> (its lookup, the distinct values to look up): resolved only when run
    lookups: dict[str, tuple[Lookup, set[str]]] = field(default_factory=dict)
    create_only: list[str] = field(default_factory=list)  # fields its files mark create_only


@dataclass
class Preview:
    classes: list[ClassPreview]
    # inventory sources that no mapping file reads -> their resources
    unread_sources: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)


def preview(sources: Counter, mappings: MappingSet, mapped: MapResult, tables: set[str] | None = None) -> Preview:
    """The summary of ``mapped`` (what ``Mapper`` made of an inventory whose resources, per source, are
    ``sources``), for ``tables`` (default: all)."""
    known = {(ci.table, ci.identity) for ci in mapped.cis}
    declared = {(m.table, m.source.name): [(r.type, r.to) for r in m.relations] for m in mappings.mappings.values()}
    # a class fed by several files (one per AWS API) maps a field in some of them only
    fields_of = {(m.table, m.source.name): list(m.fields) for m in mappings.mappings.values()}
    create_only_of = {(m.table, m.source.name): m.create_only for m in mappings.mappings.values()}
    classes: dict[str, ClassPreview] = {}
    for table, variants in mappings.tables.items():
        if tables is None or table in tables:
            names = sorted({name for mapping in variants for name in mapping.fields})
            classes[table] = ClassPreview(table, sorted(m.file.name for m in variants), fields=names,
                                          create_only=sorted({f for m in variants for f in m.create_only}),
                                          lookups={name: (lookup, set())
                                                   for name, lookup in mappings.lookups.get(table, {}).items()})
    for ci in mapped.cis:
        summary = classes.get(ci.table)
        if summary is None:
            continue
        summary.cis += 1
        summary.tagged += bool(ci.tags)
        names = fields_of.get((ci.table, ci.scope[2]), summary.fields)
        if ci.create_only:  # not known, so neither filled nor empty
            names = [name for name in names if name not in ci.create_only]
            marked = create_only_of.get((ci.table, ci.scope[2]), ())
            summary.unknown_fields.update(name for name in ci.create_only if name not in marked)
        summary.mapped.update(names)
        for name, (_lookup, values) in summary.lookups.items():
            value = snow_value(ci.fields.get(name) or ci.create_only.get(name))
            if value:
                values.add(value)
        summary.empty.update(name for name in names if ci.fields.get(name) in (None, ""))
        for ref in ci.relations:
            summary.relations[ref.type] += 1
            if (ref.table, ref.identity) not in known:
                summary.targets_not_found.setdefault((ref.type, ref.table), [0, ci.identity, ref.identity])[0] += 1
        made = {(ref.type, ref.table) for ref in ci.relations} | ci.unknown_relations
        summary.no_target.update(kind for kind in declared.get((ci.table, ci.scope[2]), ()) if kind not in made)
        summary.unknown_relations.update(ci.unknown_relations)
    for problem in mapped.problems:
        summary = classes.get(problem.table)
        if summary is not None:
            summary.not_mapped += 1
            summary.first_problem = summary.first_problem or problem.message
    read = set(mappings.sources)
    unread = Counter({source: n for source, n in sources.items() if source not in read})
    warnings = [w for w in mapped.warnings if tables is None or w.split(":", 1)[0] in tables]
    return Preview(list(classes.values()), unread, warnings)


def preview_lines(result: Preview) -> list[str]:
    """The summary, one class at a time, what needs a look indented under it."""
    lines: list[str] = []
    for c in result.classes:
        relations = sum(c.relations.values())
        lines.append(f"{c.table}: {c.cis} CI(s), {relations} relation(s)"
                     + (f", {c.tagged} with tags" if c.tagged else "") + f" ({', '.join(c.files)})")
        if c.not_mapped:
            lines.append(f"  not mapped: {c.not_mapped} item(s), e.g. {c.first_problem}")
        if c.cis:
            always = [name for name in c.fields if c.mapped[name] and c.empty[name] == c.mapped[name]]
            if always:
                lines.append(f"  empty in every CI: {', '.join(always)} (a path or tag that matches nothing?)")
            some = [f"{name} {c.empty[name]}/{c.mapped[name]}" for name in c.fields if 0 < c.empty[name] < c.mapped[name]]
            if some:
                lines.append(f"  empty in some CIs: {', '.join(some)}")
        if c.lookups:
            lines.append("  looked up when run (the sys_id of the one record a value names): " + ", ".join(
                f"{name} in {lookup} ({len(values)} distinct value(s))" for name, (lookup, values) in sorted(c.lookups.items())))
        if c.create_only:
            lines.append(f"  written on a create only (create_only), then left to the CMDB: {', '.join(c.create_only)}")
        if c.unknown_fields:
            lines.append("  not known to the items (known_when), for a new CI only: " + ", ".join(
                f"{name} {count}/{c.cis}" for name, count in sorted(c.unknown_fields.items())))
        for (kind, target), count in sorted(c.no_target.items()):
            if count == c.cis:
                lines.append(f"  {kind} -> {target}: no target identity for {count} CI(s) (left without it: a path "
                             "in its identity template that matches nothing?)")
            else:  # one relation of several that exclude each other (an OU's parent: the Organization or an OU)
                lines.append(f"  {kind} -> {target}: none for {count} of {c.cis} CI(s)")
        for (kind, target), count in sorted(c.unknown_relations.items()):
            lines.append(f"  {kind} -> {target}: not known to the items of {count} CI(s) (known_when): those in the "
                         "CMDB are kept")
        for (kind, target), (count, identity, target_id) in sorted(c.targets_not_found.items()):
            lines.append(f"  {kind} -> {target}: {count} target(s) not among this inventory's CIs, e.g. "
                         f"{identity} -> {target_id} (written only if the CMDB holds it already: check the "
                         "identity template)")
    for source, count in sorted(result.unread_sources.items()):
        lines.append(f"source {source}: {count} resource(s) in the inventory that no mapping file reads")
    lines.extend(f"warning: {w}" for w in result.warnings)
    return lines


def ci_row(ci: DesiredCI) -> dict[str, Any]:
    """One CI as ``map --output`` writes it: its values in ServiceNow's string form, as plan compares them."""
    account_id, region, source = ci.scope
    row: dict[str, Any] = {
        "class": ci.table, "identity": ci.identity,
        "account_id": account_id, "region": region, "source": source,
        "fields": {name: snow_value(value) for name, value in ci.fields.items()},
        "relations": [{"type": r.type, "class": r.table, "identity": r.identity, "role": r.role} for r in ci.relations],
    }
    if ci.create_only:  # values the item does not know: written by a create only
        row["create_only"] = {name: snow_value(value) for name, value in ci.create_only.items()}
    if ci.tags is not None:
        row["tags"] = ci.tags
    return row
