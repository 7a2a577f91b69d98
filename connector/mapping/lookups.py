"""Reference fields: the values mapped (an owner's e-mail address in a tag, a group's name) made into
the sys_ids of the records they name, as ServiceNow stores a reference.

Pure: the records were read with the CMDB (``CmdbReader.look_up``), between map and plan. A value
that names no record, or several, is not guessed at: its field is left out of that CI, so the CI's
value is left as it is (unknown is not empty) and a create goes without it; each such case is named
in one warning per field, with a count and an example, and listed in the report's unresolved_lookups.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, NamedTuple

from ..models import NOTHING, DesiredCI, Lookup
from .functions import snow_value

NOT_FOUND, SEVERAL, UNASKED, UNREAD = "not found", "several", "unasked", "unread"
# what each reason means, in the report's unresolved_lookups
REASONS = {NOT_FOUND: "names no record", SEVERAL: "names several records", UNASKED: "holds ^: not asked",
           UNREAD: "its table could not be read"}


class Resolved(NamedTuple):
    cis: list[DesiredCI]
    warnings: list[str]  # one per field and reason, with a count and an example
    # every value not resolved: {table, identity, field, value, reason}, for whoever mends the tags
    unresolved: list[dict[str, str]]


def lookup_values(cis: Iterable[DesiredCI], lookups: dict[str, dict[str, Lookup]]) -> dict[Lookup, set[str]]:
    """Each lookup -> the distinct values, not empty, mapped into the fields it serves."""
    wanted: dict[Lookup, set[str]] = {}
    if not lookups:
        return wanted
    for ci in cis:
        fields = lookups.get(ci.table)
        if not fields:
            continue
        for name, lookup in fields.items():
            for values in (ci.fields, ci.create_only):
                value = snow_value(values.get(name))
                if value:
                    wanted.setdefault(lookup, set()).add(value)
    return wanted


def resolve_lookups(cis: list[DesiredCI], lookups: dict[str, dict[str, Lookup]],
                    found: Mapping[Lookup, dict[str, list[str]] | None]) -> Resolved:
    """The CIs with each looked-up field's value made the sys_id of the one record it names, the
    warnings, and each value not resolved. ``found``: lookup -> value in lower case -> sys_ids
    (``CmdbReader.look_up``), None for a lookup whose table could not be read (every value of it
    unresolved). An empty value stays empty: the resource names no one (a field's ``known_when`` can say
    that this is unknown instead)."""
    if not lookups:
        return Resolved(cis, [], [])
    misses: dict[tuple[str, str, str], list] = {}  # (table, field, why) -> [count, example value, CI, records]
    unresolved: list[dict[str, str]] = []
    out: list[DesiredCI] = []
    for ci in cis:
        fields = lookups.get(ci.table)
        if not fields:
            out.append(ci)
            continue
        values, create_only = ci.fields, ci.create_only
        for name, lookup in fields.items():
            values = _resolved(values, name, lookup, found, ci, misses, unresolved)
            if create_only:
                create_only = _resolved(create_only, name, lookup, found, ci, misses, unresolved) or NOTHING
        out.append(ci if values is ci.fields and create_only is ci.create_only
                   else replace(ci, fields=values, create_only=create_only))
    return Resolved(out, [_warning(table, name, why, lookups[table][name], *miss)
                          for (table, name, why), miss in sorted(misses.items())], unresolved)


def _resolved(values: Mapping[str, Any], name: str, lookup: Lookup, found: Mapping[Lookup, dict[str, list[str]] | None],
              ci: DesiredCI, misses: dict, unresolved: list[dict[str, str]]) -> Mapping[str, Any]:
    """``values`` with ``name`` made a sys_id, or left out (its miss counted and listed); as it is if it
    has no value."""
    if name not in values:
        return values
    value = snow_value(values[name])
    if not value:
        return values
    records = found.get(lookup)
    if records is None:
        why, matches = UNREAD, []
    elif "^" in value:
        why, matches = UNASKED, []
    else:
        matches = records.get(value.lower(), [])
        if len(matches) == 1:
            return {**values, name: matches[0]}
        why = SEVERAL if matches else NOT_FOUND
    miss = misses.setdefault((ci.table, name, why), [0, value, ci.identity, len(matches)])
    miss[0] += 1
    unresolved.append({"table": ci.table, "identity": ci.identity, "field": name, "value": value,
                       "reason": REASONS[why], "lookup": str(lookup)})
    return {k: v for k, v in values.items() if k != name}


def _warning(table: str, name: str, why: str, lookup: Lookup, count: int, value: str, identity: str,
             records: int) -> str:
    where = f"{table}.{name}: {count} CI(s) whose value"
    left = "the field is left as it is on those CIs, and a new CI goes without it"
    if why == NOT_FOUND:
        return (f"{where} names no record of {lookup} (e.g. {value!r} for {identity}): {left}. Add the record, or "
                "mend the value in AWS (a tag?).")
    if why == SEVERAL:
        return (f"{where} names several records of {lookup} (e.g. {value!r} for {identity}: {records} records): "
                f"{left}. Narrow the lookup (lookup.where, say active=true), or make the records unique.")
    if why == UNASKED:
        return (f"{where} holds ^, which an encoded query cannot carry (e.g. {value!r} for {identity}): not looked "
                f"up in {lookup}; {left}.")
    return (f"{where} could not be looked up: {lookup.table} was not read (see the warnings; e.g. {value!r} for "
            f"{identity}): {left}.")
