"""map (pure): inventory records -> desired CIs, through the mapping files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from jmespath.exceptions import JMESPathError

from ..arn import partition_for
from ..models import NONE_UNKNOWN, NOTHING, DesiredCI, Inventory, MappingProblem, Record, RelationRef
from .load import Mapping, MappingSet


@dataclass
class MapResult:
    cis: list[DesiredCI] = field(default_factory=list)
    problems: list[MappingProblem] = field(default_factory=list)
    # resources that map to an identity another resource has, with other values: one line per class
    warnings: list[str] = field(default_factory=list)


def _finds_nothing(known_when, item) -> bool:
    """A mapping's known_when over ``item`` found nothing, or said false (a test such as
    ``Foo != `null```, true for an empty list): the item does not know that field or relation."""
    found = known_when(item)
    return found is False or found in (None, "", [], {})


def _named(part: str, mapping: Mapping, item: Any, evaluate: Callable[[], Any]) -> Any:
    """``evaluate()``; a JMESPath that fails on this item (``length()`` of a missing list, say) is a
    ``ValueError`` that names the part of the mapping and the item."""
    try:
        return evaluate()
    except JMESPathError as exc:
        raise ValueError(f"{part}: {exc} (item {mapping.source.id(item)!r})") from None


def map_record(mapping: Mapping, record: Record, tags: bool = False) -> DesiredCI:
    """One raw item -> one desired CI. ``ValueError`` when the identity is absent.

    With ``tags``, a class whose mapping has ``[tags]`` carries them.
    """
    item = record.resource
    ctx = {
        "account_id": record.account_id,
        "region": record.region,
        "partition": partition_for(record.region),
        "source": record.source,
    }
    try:
        values = {name: evaluate(item, ctx) for name, evaluate in mapping.fields.items()}
        create_only = {name: values.pop(name) for name, known in mapping.known_when.items()
                       if _finds_nothing(known, item)} if mapping.known_when else NOTHING
    except JMESPathError:  # a function given what it does not take (length() of a missing list): which field
        for name, evaluate in mapping.fields.items():
            _named(f"[fields] {name}", mapping, item, lambda: evaluate(item, ctx))
            if name in mapping.known_when:
                _named(f"[fields] {name} known_when", mapping, item, lambda: mapping.known_when[name](item))
        raise
    identity = values.get(mapping.identity_field)
    if not identity:
        raise ValueError(f"{mapping.identity_field} is empty for item {mapping.source.id(item)!r}")
    relations = []
    unknown = []
    try:
        for rel in mapping.relations:
            if rel.known_when is not None and _finds_nothing(rel.known_when, item):
                unknown.append((rel.type, rel.to))
                continue
            target = rel.identity(item, ctx)
            if target:
                relations.append(RelationRef(type=rel.type, table=rel.to, identity=target, role=rel.role))
    except JMESPathError:  # which relation
        for rel in mapping.relations:
            part = f"[[relations]] {rel.type} -> {rel.to}"
            if rel.known_when is not None:
                _named(f"{part} known_when", mapping, item, lambda: rel.known_when(item))
            _named(f"{part} identity", mapping, item, lambda: rel.identity(item, ctx))
        raise
    return DesiredCI(
        table=mapping.table,
        identity=identity,
        fields=values,
        relations=tuple(relations),
        scope=(record.account_id, record.region, record.source),
        tags=mapping.tags(item) if tags and mapping.tags is not None else None,
        unknown_relations=frozenset(unknown) if unknown else NONE_UNKNOWN,  # one empty set for all: 200 bytes a CI
        create_only=create_only,
    )


# A field that came out empty for every item of a mapping file is named in a warning once the file
# mapped at least this many (fewer, and a field that is simply unset on each, an address, is likelier)
EMPTY_FIELD_MIN_ITEMS = 10


class _Unfilled:
    """The fields of one mapping file that no CI it made has had a value for yet (``note``), and how
    many CIs it made."""

    __slots__ = ("mapping", "fields", "cis")

    def __init__(self, mapping: Mapping):
        self.mapping = mapping
        self.fields = set(mapping.fields) - {mapping.identity_field}
        self.cis = 0

    def note(self, ci: DesiredCI) -> bool:
        """Count ``ci``, and strike out the fields it has a value for (a create-only one, or one its item
        did not know, in ``create_only``). True once every field has had a value."""
        self.cis += 1
        fields, create_only = ci.fields, ci.create_only
        filled = [name for name in self.fields if (fields[name] if name in fields else create_only.get(name))
                  not in (None, "")]
        self.fields.difference_update(filled)
        return not self.fields

    def warnings(self) -> list[str]:
        if self.cis < EMPTY_FIELD_MIN_ITEMS:
            return []
        return [f"{self.mapping.table}.{name}: empty for every one of the {self.cis} resources "
                f"{self.mapping.file.name} mapped: a path or tag that matches nothing (a typo, a key AWS "
                "renamed)? `cmdb-connector map --inventory FILE` shows what each field gets from a saved inventory"
                for name in sorted(self.fields)]


class Mapper:
    """map, a batch of records at a time, in the order they come (``add``), so that a run need not hold
    the raw items of every unit at once: each unit's are mapped as it is in, and dropped (memory grows
    with the CIs, not with the raw answers). A CI met again under its identity is kept once: the same
    resource seen twice is nothing to say, but another resource with other values under that identity
    (a template that leaves out the region, say) would be lost without a word, so it is a warning.

    With ``unfilled`` (a run's), a field that came out empty for every item of a mapping file is one
    too (``EMPTY_FIELD_MIN_ITEMS``): a path that matches nothing would otherwise leave it empty on every
    CI made, without a word (an update that would empty it on many is held by plan's guard)."""

    def __init__(self, mappings: MappingSet, tags: bool = False, unfilled: bool = True):
        self._by_source = {name: mappings.for_source(name) for name in mappings.sources}
        self._tags = tags
        self._result = MapResult()
        self._kept: dict[tuple[str, str], DesiredCI] = {}
        self._clashes: dict[str, list] = {}  # table -> [count, the identity, the mapping file]
        # id(mapping) -> the fields it has not filled yet; a file is dropped once it has filled every one
        self._unfilled = {id(m): _Unfilled(m) for m in mappings.mappings.values()} if unfilled else {}

    def add(self, records: Iterable[Record]) -> None:
        result, kept, clashes, by_source, tags = self._result, self._kept, self._clashes, self._by_source, self._tags
        unfilled = self._unfilled
        for record in records:
            for mapping in by_source.get(record.source, ()):
                try:
                    ci = map_record(mapping, record, tags)
                except ValueError as exc:
                    scope = (record.account_id, record.region, record.source)
                    result.problems.append(MappingProblem(scope, mapping.table, f"{mapping.file.name}: {exc}"))
                    continue
                key = (ci.table, ci.identity)
                first = kept.setdefault(key, ci)
                if first is ci:
                    result.cis.append(ci)
                    if unfilled:
                        watch = unfilled.get(id(mapping))
                        if watch is not None and watch.note(ci):
                            del unfilled[id(mapping)]
                elif first.fields != ci.fields or first.relations != ci.relations:
                    clashes.setdefault(ci.table, [0, ci.identity, mapping.file.name])[0] += 1

    def result(self) -> MapResult:
        """What every record added made: the CIs, the problems, and a warning per class of clashes."""
        return MapResult(self._result.cis, self._result.problems, [
            f"{table}: {count} resource(s) map to an identity that another resource has already, with other values "
            f"(e.g. {identity}): only the first of each is written. Make the identity unique in {file} (a "
            "correlation_id template without the region or the account?)"
            for table, (count, identity, file) in sorted(self._clashes.items())]
            + sorted(w for watch in self._unfilled.values() for w in watch.warnings()))


def map_inventory(inventory: Inventory, mappings: MappingSet, tags: bool = False) -> MapResult:
    """Every record of the inventory through its mappings (``Mapper``)."""
    mapper = Mapper(mappings, tags)
    mapper.add(inventory.records)
    return mapper.result()
