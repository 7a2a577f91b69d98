"""Load, validate and compile the mapping files of a folder.

Every expression is compiled once, here. Every problem names its file and key
path, and all problems of all files are reported together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import ValidationError

from ..errors import MappingError, did_you_mean, key_path
from ..models import Lookup
from ..tomlfile import read_toml_file, toml_kind
from .expressions import Evaluator, compile_field, compile_path
from .schema import BASE_RELATION_TYPES, MappingFile, keys_at


@dataclass(frozen=True)
class CompiledSource:
    name: str
    kind: str
    service: str | None
    operation: str | None
    params: dict[str, Any]
    items: Callable[[Any], Any] | None
    id: Callable[[Any], Any]
    scope: str
    items_text: str | None = None
    detail: "CompiledDetail | None" = None
    joins: tuple["CompiledJoin", ...] = ()  # each joins the items in turn
    # a call per item for its tags (made only when reconcile.tags is on), its
    # answer kept under TAGS_KEY; error codes that mean "no tags"
    tags_call: "CompiledDetail | None" = None
    tags_none_when: tuple[str, ...] = ()
    tags_call_text: str = ""
    # (key, operation, JMESPath) of each expression that reads a call's answer, as written: checked against
    # what the operation answers (aws.operations)
    answer_paths: tuple[tuple[str, str, str], ...] = ()

    def call_signature(self) -> tuple:
        """Two files may share a source only if they describe the same calls."""
        return (self.kind, self.service, self.operation, repr(sorted(self.params.items())),
                self.items_text, self.scope, self.tags_call_text,
                tuple(join.text for join in self.joins))


@dataclass(frozen=True)
class CompiledDetail:
    operation: str
    params: dict[str, Callable[[Any], Any]]
    result: Callable[[Any], Any]
    key: str | None

    def ask(self, client: Any, item: Any) -> Any:
        """The call's answer for one item (its parameters read from the item)."""
        return getattr(client, self.operation)(**{name: get(item) for name, get in self.params.items()})

    def merge(self, item: Any, answer: Any) -> Any:
        found = self.result(answer)
        if self.key is not None:
            return {**item, self.key: found} if isinstance(item, dict) else {"Item": item, self.key: found}
        if isinstance(item, dict) and isinstance(found, dict):
            return {**item, **found}
        return found


@dataclass(frozen=True)
class CompiledJoin:
    """``[source.join]``: the answers of a few calls per unit, joined to its items by a value, or by each
    of a list of values (the item then keeps a list: an entry for each)."""

    operation: str
    param: str | None  # the call's parameter that takes the values; or
    filter: str | None  # the EC2-style filter that takes them
    params: dict[str, Any]
    on: Callable[[Any], Any]
    items: Callable[[Any], Any]
    match: Callable[[Any], Any]
    result: Callable[[Any], Any]
    key: str
    per_call: int
    shared: bool = False  # the answers are the same for every account: asked once per region per run
    text: str = ""  # the spec, to tell two joins apart
    many: bool = False  # a value may have many entries: the item keeps them all, in a list

    def values(self, items: list[Any]) -> set[Any]:
        """The distinct values the items are joined on."""
        values: set[Any] = set()
        for item in items:
            found = self._found(item)
            if found is not None:
                values.update(found[0])
        return values

    def chunks(self, values: set[Any]) -> list[list[Any]]:
        """The values to ask, ``per_call`` at a time, in a stable order."""
        ordered = sorted(values, key=repr)
        return [ordered[i:i + self.per_call] for i in range(0, len(ordered), self.per_call)]

    def _found(self, item: Any) -> tuple[list[Any], bool] | None:
        """(the values the item is joined on, whether ``on`` gave a list of them), or None."""
        value = self.on(item) if isinstance(item, dict) else None
        if isinstance(value, list):
            return (value, True) if all(map(_joinable, value)) else None
        return ([value], False) if _joinable(value) else None

    def call_params(self, values: list[Any]) -> dict[str, Any]:
        if self.filter is None:
            return {**self.params, self.param: values}
        return {**self.params, "Filters": [*self.params.get("Filters", []), {"Name": self.filter, "Values": values}]}

    def index(self, pages: Iterable[Any]) -> dict[Any, Any]:
        """value -> what an item keeps of its entry. A value two different entries claim is left out:
        which one is the item's is not known. With ``many``: value -> what it keeps of each of its
        entries, in the answer's order."""
        found: dict[Any, Any] = {}
        contested: set[Any] = set()
        for page in pages:
            for entry in self.items(page) or []:
                value = self.match(entry)
                if value is None or not isinstance(value, (str, int)):
                    continue
                kept = self.result(entry)
                if self.many:
                    found.setdefault(value, []).append(kept)
                    continue
                if value in found and found[value] != kept:
                    contested.add(value)
                found[value] = kept
        for value in contested:
            del found[value]
        return found

    def merge(self, items: list[Any], index: dict[Any, Any]) -> list[Any]:
        """Each item with its entry under ``key`` (with a list of values, the list of their entries, in
        its order); one with a value that has no entry stays as it is (what the entry would tell is
        unknown, not empty: a field read from it should carry ``known_when``). With ``many``, each item
        keeps the list of all its values' entries, [] for none: every value was asked, and the answer
        (all its pages) has every entry there is."""
        joined = []
        for item in items:
            found = self._found(item)
            if found is not None and self.many:  # every value was asked: one without entries has none
                joined.append({**item, self.key: [kept for value in found[0] for kept in index.get(value, ())]})
            elif found is None or not all(value in index for value in found[0]):
                joined.append(item)
            elif found[1]:
                joined.append({**item, self.key: [index[value] for value in found[0]]})
            else:
                joined.append({**item, self.key: index[found[0][0]]})
        return joined


def _joinable(value: Any) -> bool:
    """A value a join can ask for: a text or a number (not a truth value)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CompiledRelation:
    type: str
    to: str
    role: str
    identity: Evaluator
    known_when: Callable[[Any], Any] | None = None  # finds nothing: the item's relations of this kind are unknown


# Where collection keeps the answer of a per-item tags call (AWS names are never
# written this way, so it cannot meet a key of the item itself).
TAGS_KEY = "_cmdb_tags"
# a ServiceNow table's name: cmdb_ci_vm_instance, u_custom_class, x_acme_app_thing
TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class CompiledTags:
    path: Callable[[Any], Any]
    key: str
    value: str
    exclude: tuple[str, ...] = ()
    from_call: bool = False  # path reads the answer of the per-item call

    def __call__(self, item: Any) -> dict[str, str] | None:
        """The item's tags as key -> value strings, minus the excluded keys; none found is no tags.

        None (unknown) when they come from a call that was not made for this
        item: an inventory collected with tags off.
        """
        if self.from_call:
            if not isinstance(item, dict) or TAGS_KEY not in item:
                return None
            item = item[TAGS_KEY]
        found = self.path(item)
        if isinstance(found, dict):
            pairs = found.items()
        elif isinstance(found, list):
            pairs = ((tag.get(self.key), tag.get(self.value)) for tag in found if isinstance(tag, dict))
        else:
            return {}
        tags = {str(key): "" if value is None else str(value) for key, value in pairs if key not in (None, "")}
        if self.exclude:
            tags = {k: v for k, v in tags.items() if not any(fnmatchcase(k, pattern) for pattern in self.exclude)}
        return tags


@dataclass(frozen=True)
class Mapping:
    """One source of one CMDB class, compiled from one file.

    A class usually has one file, ``<class>.toml``; a class fed by several AWS
    APIs has one more per API, ``<class>.<variant>.toml`` (classic ELB beside ELBv2).
    """

    name: str
    table: str
    file: Path
    source: CompiledSource
    identity_field: str
    # how the identity is built, as written: two classes built alike would collide
    identity_spec: str
    fields: dict[str, Evaluator]
    relations: tuple[CompiledRelation, ...]
    retire: dict[str, str]
    revive: dict[str, str]
    tags: CompiledTags | None = None
    # field -> its known_when: where it finds nothing, the field's value is for a create only
    known_when: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    # reference field -> how its sys_id is looked up from the value mapped (resolved after the CMDB's read)
    lookups: dict[str, Lookup] = field(default_factory=dict)
    # the fields marked create_only: in known_when too, as fields no item ever knows
    create_only: frozenset[str] = frozenset()


@dataclass
class MappingSet:
    mappings: dict[str, Mapping] = field(default_factory=dict)

    @property
    def sources(self) -> dict[str, CompiledSource]:
        return {m.source.name: m.source for m in self.mappings.values()}

    def for_source(self, name: str) -> list[Mapping]:
        return [m for m in self.mappings.values() if m.source.name == name]

    @property
    def lookups(self) -> dict[str, dict[str, Lookup]]:
        """table -> {reference field: its lookup}, for the classes with any (one per field: see
        _check_across_files)."""
        out: dict[str, dict[str, Lookup]] = {}
        for mapping in self.mappings.values():
            if mapping.lookups:
                out.setdefault(mapping.table, {}).update(mapping.lookups)
        return out

    @property
    def tables(self) -> dict[str, list[Mapping]]:
        """table -> its mappings (one per source feeding it)."""
        out: dict[str, list[Mapping]] = {}
        for mapping in self.mappings.values():
            out.setdefault(mapping.table, []).append(mapping)
        return dict(sorted(out.items()))


def _never_known(_item: Any) -> None:
    """The known_when of a create_only field: no item knows it, so its value is for a create only."""
    return None


def builtin_mappings_dir() -> Path:
    return Path(str(resources.files("cmdb_mappings")))


def _nearest_key(loc: tuple[Any, ...]) -> str:
    """The keys an unknown one most likely is (did you mean ...), else those its table takes."""
    known = keys_at(loc)
    if not known:
        return ""
    return did_you_mean(str(loc[-1]), known) or f" (the keys here: {', '.join(known)})"


def _compile_source(spec, tags=None) -> CompiledSource:
    call = tags if tags is not None and tags.operation is not None else None
    return CompiledSource(
        name=spec.name,
        kind=spec.kind,
        service=spec.service,
        operation=spec.operation,
        params=dict(spec.params),
        items=compile_path(spec.items) if spec.items else None,
        id=compile_path(spec.id),
        scope=spec.scope,
        items_text=spec.items,
        detail=None if spec.detail is None else CompiledDetail(
            operation=spec.detail.operation,
            params={name: compile_path(expr) for name, expr in spec.detail.params.items()},
            result=compile_path(spec.detail.result),
            key=spec.detail.key,
        ),
        joins=tuple(CompiledJoin(
            operation=join.operation,
            param=join.param,
            filter=join.filter,
            params=dict(join.params),
            on=compile_path(join.on),
            items=compile_path(join.items),
            match=compile_path(join.match),
            result=compile_path(join.result),
            key=join.key,
            per_call=join.per_call,
            shared=join.shared,
            text=join.model_dump_json(),
            many=join.many,
        ) for join in spec.join),
        tags_call=None if call is None else CompiledDetail(
            operation=call.operation,
            params={name: compile_path(expr) for name, expr in call.params.items()},
            result=compile_path("@"),
            key=TAGS_KEY,
        ),
        tags_none_when=() if call is None else tuple(call.none_when),
        tags_call_text="" if call is None else repr((call.operation, sorted(call.params.items()), call.none_when)),
        answer_paths=tuple(
            (key, operation, path) for key, operation, path in (
                ("source.items", spec.operation, spec.items),
                ("source.detail.result", spec.detail and spec.detail.operation, spec.detail and spec.detail.result),
                *((f"source.join[{n}].items" if len(spec.join) > 1 else "source.join.items", join.operation,
                   join.items) for n, join in enumerate(spec.join)),
                ("tags.path", call and call.operation, call and call.path))
            if operation and path),
    )


def _compile_one(path: Path, problems: list[str]) -> Mapping | None:
    try:
        raw = read_toml_file(path)
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
        return None
    try:
        spec = MappingFile.model_validate(raw)
    except ValidationError as exc:
        one_join = isinstance(raw.get("source"), dict) and isinstance(raw["source"].get("join"), dict)
        told: set[str] = set()
        for err in exc.errors():
            parts = list(err["loc"])
            if one_join and parts[:3] == ["source", "join", 0]:
                del parts[2]  # [source.join], one table: no list to count in
            if parts and parts[-1] in SCALAR_BRANCHES and err["type"] == f"{SCALAR_BRANCHES[parts[-1]]}_type":
                # a value that may be a text, a number or a boolean: pydantic tells each in turn, as a key
                parts.pop()
                err = {**err, "msg": f"a text, a number or true/false, not {toml_kind(err.get('input'))}"}
            elif err["type"] == "model_type" and (err.get("ctx") or {}).get("class_name") == "FieldSpec":
                err = {**err, "msg": f'a JMESPath in quotes, or a table such as {{ path = "..." }}, not '
                                     f"{toml_kind(err.get('input'))}"}
            loc = key_path(parts)
            if loc in told:
                continue
            told.add(loc)
            if err["type"] == "extra_forbidden":
                problems.append(f"{path}: {loc}: unknown key{_nearest_key(tuple(err['loc']))}")
            elif err["type"] == "missing":
                problems.append(f"{path}: {loc}: required key is missing")
            else:
                problems.append(f"{path}: {loc or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
        return None

    class_name = path.stem.split(".")[0]
    table = spec.target.table or class_name
    if not TABLE_NAME.fullmatch(class_name):
        fixed = re.sub(r"[^a-z0-9_]+", "_", class_name.lower()).strip("_")
        problems.append(f"{path}: the file name: {class_name!r} is not a ServiceNow table name (lower-case letters, "
                        "digits and _, as cmdb_ci_vm_instance)"
                        + (f": name the file {fixed}{path.name[len(class_name):]}" if TABLE_NAME.fullmatch(fixed) else ""))
        return None
    if table != class_name:
        problems.append(f"{path}: target.table: {table!r} differs from the file name; name the file {table}.toml")
        return None

    def compiled(key: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except ValueError as exc:  # the schema checks expressions; this is a second net
            problems.append(f"{path}: {key}: {exc}")
        return None

    source = compiled("source", lambda: _compile_source(spec.source, spec.tags))
    fields = {name: compiled(f"fields.{name}", lambda v=value: compile_field(v)) for name, value in spec.fields.items()}
    relations = tuple(
        CompiledRelation(rel.type, rel.to, rel.role, compiled(f"relations[{i}].identity", lambda r=rel: compile_field(r.identity)),
                         None if rel.known_when is None else compile_path(rel.known_when))
        for i, rel in enumerate(spec.relations)
    )
    if source is None or None in fields.values() or any(r.identity is None for r in relations):
        return None
    return Mapping(
        name=path.stem,
        table=table,
        file=path,
        source=source,
        identity_field=spec.target.identity,
        identity_spec=spec.fields[spec.target.identity].model_dump_json(),
        fields=fields,
        relations=relations,
        retire=dict(spec.lifecycle.retire),
        revive=dict(spec.lifecycle.revive),
        tags=None if spec.tags is None else CompiledTags(
            compile_path(spec.tags.path), spec.tags.key, spec.tags.value, tuple(spec.tags.exclude),
            from_call=spec.tags.operation is not None),
        known_when={**{name: compile_path(value.known_when) for name, value in spec.fields.items()
                       if value.known_when is not None},
                    **{name: _never_known for name, value in spec.fields.items() if value.create_only}},
        create_only=frozenset(name for name, value in spec.fields.items() if value.create_only),
        lookups={name: Lookup(value.lookup.table, value.lookup.field, value.lookup.where)
                 for name, value in spec.fields.items() if value.lookup is not None},
    )


# the members of a union of scalars (value, default), as pydantic names each one it tried, and its error's type
SCALAR_BRANCHES = {"str": "string", "int": "int", "float": "float", "bool": "bool"}


def mapping_notes(mappings: MappingSet) -> list[str]:
    """Warnings about what the files would write, though valid: a relation type a base system lacks (each
    with the nearest base type: misspelled, or the instance's own; a run leaves the relations of a type the
    instance lacks unmanaged, with a warning), and a class that maps no ``name`` (its CIs listed nameless)."""
    named: dict[str, set[str]] = {}
    for mapping in mappings.mappings.values():
        for relation in mapping.relations:
            if relation.type not in BASE_RELATION_TYPES:
                named.setdefault(relation.type, set()).add(mapping.file.name)
    notes = [f"warning: relation type {kind!r} ({', '.join(sorted(files))}) is not one of a base system's"
             f"{did_you_mean(kind, BASE_RELATION_TYPES)}: misspelled, or the instance's own (check-access "
             "tells whether it has it)" for kind, files in sorted(named.items())]
    notes += [f"warning: {mapping.file.name} maps no name: its CIs would be listed without one in the CMDB"
              for mapping in sorted(mappings.mappings.values(), key=lambda m: m.name) if "name" not in mapping.fields]
    return notes


def load_mappings(folder: Path | None = None) -> MappingSet:
    """Every ``*.toml`` of ``folder`` (default: the built-in mappings)."""
    folder = folder or builtin_mappings_dir()
    if not folder.is_dir():
        raise MappingError(f"{folder}: mappings folder not found (reconcile.mappings_dir)")
    # not a hidden file: an editor's lock file (emacs' .#name.toml), a copy put aside
    files = sorted(path for path in folder.glob("*.toml") if not path.name.startswith("."))
    if not files:
        raise MappingError(f"{folder}: no mapping files (*.toml) in this folder")
    problems: list[str] = []
    result = MappingSet()
    broken: set[str] = set()  # the classes of files with problems of their own
    for path in files:
        mapping = _compile_one(path, problems)
        if mapping is not None:
            result.mappings[mapping.name] = mapping
        else:
            broken.add(path.stem.split(".")[0])
    _check_across_files(result, problems, broken)
    if problems:
        raise MappingError.listing(problems)
    return result


def _check_across_files(result: MappingSet, problems: list[str], broken: set[str]) -> None:
    """Problems between files. A relation to a class whose file has problems of its own is not one
    more: that file's problems are listed, and the class is defined once they are mended."""
    by_source: dict[str, Mapping] = {}
    tables = result.tables
    for variants in tables.values():
        first = variants[0]
        for other in variants[1:]:
            for attribute in ("identity_field", "retire", "revive"):
                if getattr(other, attribute) != getattr(first, attribute):
                    key = "target.identity" if attribute == "identity_field" else f"lifecycle.{attribute}"
                    problems.append(f"{other.file}: {key}: differs from {first.file.name}; one class has one {key}")
            for name in sorted(set(first.fields) & set(other.fields)):
                if first.lookups.get(name) != other.lookups.get(name):
                    problems.append(f"{other.file}: fields.{name}: its lookup differs from {first.file.name}'s; a "
                                    "field of one class is looked up one way (or not at all) in every file")
    built_by: dict[str, Mapping] = {}
    for mapping in result.mappings.values():
        other = built_by.setdefault(mapping.identity_spec, mapping)
        if other.table != mapping.table:
            problems.append(f"{mapping.file}: fields.{mapping.identity_field}: built exactly as in {other.file.name}; "
                            "two classes would claim the same identities")
    for mapping in result.mappings.values():
        for i, rel in enumerate(mapping.relations):
            if rel.to not in tables and rel.to not in broken:
                problems.append(f"{mapping.file}: relations[{i}].to: no mapping file defines class {rel.to!r}"
                                f"{did_you_mean(rel.to, tables)}")
        first = by_source.setdefault(mapping.source.name, mapping)
        if first is not mapping and first.source.call_signature() != mapping.source.call_signature():
            problems.append(
                f"{mapping.file}: source.name: {mapping.source.name!r} is also defined, differently, in {first.file.name}"
            )
