"""Load, validate and compile the mapping files of a folder.

Every expression is compiled once, here. Every problem names its file and key
path, and all problems of all files are reported together.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import ValidationError

from ..errors import MappingError
from .functions import make_transform, snow_string
from .schema import FieldSpec, MappingFile

Evaluator = Callable[[dict[str, Any], dict[str, str]], Any]

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
CONTEXT_NAMES = ("account_id", "region", "partition", "source")


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

    def call_signature(self) -> tuple:
        """Two files may share a source only if they describe the same call."""
        return (self.kind, self.service, self.operation, repr(sorted(self.params.items())),
                self.items_text, self.scope)


@dataclass(frozen=True)
class CompiledRelation:
    type: str
    to: str
    role: str
    identity: Evaluator


@dataclass(frozen=True)
class Mapping:
    """One CMDB class, compiled from one file."""

    table: str
    file: Path
    source: CompiledSource
    identity_field: str
    fields: dict[str, Evaluator]
    relations: tuple[CompiledRelation, ...]
    retire: dict[str, str]
    revive: dict[str, str]


@dataclass
class MappingSet:
    mappings: dict[str, Mapping] = field(default_factory=dict)

    @property
    def sources(self) -> dict[str, CompiledSource]:
        return {m.source.name: m.source for m in self.mappings.values()}

    def for_source(self, name: str) -> list[Mapping]:
        return [m for m in self.mappings.values() if m.source.name == name]


def builtin_mappings_dir() -> Path:
    return Path(str(resources.files("cmdb_mappings")))


def _path_getter(path: str) -> Callable[[Any], Any]:
    """A JMESPath; plain dotted paths take a fast path with the same result."""
    if _DOTTED.match(path):
        keys = path.split(".")

        def get(item: Any) -> Any:
            for key in keys:
                if not isinstance(item, dict):
                    return None
                item = item.get(key)
            return item

        return get
    return jmespath.compile(path).search


def _template(text: str) -> Evaluator:
    pieces: list[str | Callable[[Any, dict[str, str]], Any]] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        pieces.append(text[position : match.start()])
        expr = match.group(1).strip()
        if expr.startswith("$"):
            name = expr[1:]
            if name not in CONTEXT_NAMES:
                raise ValueError(f"unknown variable ${name}; known: " + ", ".join("$" + n for n in CONTEXT_NAMES))
            pieces.append(lambda _item, ctx, name=name: ctx.get(name))
        else:
            getter = _path_getter(expr)
            pieces.append(lambda item, _ctx, getter=getter: getter(item))
        position = match.end()
    pieces.append(text[position:])

    def render(item: dict[str, Any], ctx: dict[str, str]) -> str | None:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = snow_string(piece(item, ctx))
            if value is None or value == "":
                return None
            out.append(value)
        return "".join(out)

    return render


def _tag_getter(key: str) -> Callable[[Any], Any]:
    def get(item: Any) -> Any:
        tags = item.get("Tags") or item.get("TagList") or item.get("tags")
        if isinstance(tags, dict):
            return tags.get(key)
        for tag in tags or ():
            if isinstance(tag, dict) and tag.get("Key") == key:
                return tag.get("Value")
        return None

    return get


def compile_field(spec: FieldSpec) -> Evaluator:
    """A field spec -> ``f(item, context) -> str | None``."""
    if spec.template is not None:
        base: Evaluator = _template(spec.template)
    elif spec.path is not None:
        getter = _path_getter(spec.path)
        base = lambda item, _ctx: getter(item)  # noqa: E731
    elif spec.tag is not None:
        getter = _tag_getter(spec.tag)
        base = lambda item, _ctx: getter(item)  # noqa: E731
    else:
        constant = spec.value
        base = lambda _item, _ctx: constant  # noqa: E731
    transforms = [make_transform(t) for t in spec.transform]
    value_map = spec.map
    default = snow_string(spec.default)

    def evaluate(item: dict[str, Any], ctx: dict[str, str]) -> str | None:
        value = base(item, ctx)
        for fn in transforms:
            value = fn(value)
        value = snow_string(value)
        if value_map is not None and value is not None:
            value = value_map.get(value, value_map.get("*", value))
        if value is None or value == "":
            return default if default is not None else value
        return value

    return evaluate


def _compile_source(spec) -> CompiledSource:
    return CompiledSource(
        name=spec.name,
        kind=spec.kind,
        service=spec.service,
        operation=spec.operation,
        params=dict(spec.params),
        items=jmespath.compile(spec.items).search if spec.items else None,
        id=_path_getter(spec.id),
        scope=spec.scope,
        items_text=spec.items,
    )


def _compile_one(path: Path, problems: list[str]) -> Mapping | None:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: invalid TOML: {exc}")
        return None
    try:
        spec = MappingFile.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{path}: {loc}: unknown key")
            elif err["type"] == "missing":
                problems.append(f"{path}: {loc}: required key is missing")
            else:
                problems.append(f"{path}: {loc or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
        return None

    table = spec.target.table or path.stem
    if table != path.stem:
        problems.append(f"{path}: target.table: {table!r} differs from the file name; name the file {table}.toml")
        return None

    def compiled(key: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except JMESPathError as exc:
            problems.append(f"{path}: {key}: JMESPath does not compile: {str(exc).splitlines()[0]}")
        except KeyError as exc:
            problems.append(f"{path}: {key}: unknown transform {exc.args[0]!r}")
        except ValueError as exc:
            problems.append(f"{path}: {key}: {exc}")
        return None

    source = compiled("source", lambda: _compile_source(spec.source))
    fields = {name: compiled(f"fields.{name}", lambda v=value: compile_field(v)) for name, value in spec.fields.items()}
    relations = tuple(
        CompiledRelation(rel.type, rel.to, rel.role, compiled(f"relations[{i}].identity", lambda r=rel: compile_field(r.identity)))
        for i, rel in enumerate(spec.relations)
    )
    if source is None or None in fields.values() or any(r.identity is None for r in relations):
        return None
    return Mapping(
        table=table,
        file=path,
        source=source,
        identity_field=spec.target.identity,
        fields=fields,
        relations=relations,
        retire=dict(spec.lifecycle.retire),
        revive=dict(spec.lifecycle.revive),
    )


def load_mappings(folder: Path | None = None) -> MappingSet:
    """Every ``*.toml`` of ``folder`` (default: the built-in mappings)."""
    folder = folder or builtin_mappings_dir()
    if not folder.is_dir():
        raise MappingError(f"{folder}: mappings folder not found (reconcile.mappings_dir)")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise MappingError(f"{folder}: no mapping files (*.toml) in this folder")
    problems: list[str] = []
    result = MappingSet()
    for path in files:
        mapping = _compile_one(path, problems)
        if mapping is not None:
            result.mappings[mapping.table] = mapping
    _check_across_files(result, problems)
    if problems:
        raise MappingError(f"{len(problems)} problem(s) in the mapping files:\n  " + "\n  ".join(problems), problems)
    return result


def _check_across_files(result: MappingSet, problems: list[str]) -> None:
    by_source: dict[str, Mapping] = {}
    for mapping in result.mappings.values():
        for i, rel in enumerate(mapping.relations):
            if rel.to not in result.mappings:
                problems.append(f"{mapping.file}: relations[{i}].to: no mapping file defines class {rel.to!r}")
        first = by_source.setdefault(mapping.source.name, mapping)
        if first is not mapping and first.source.call_signature() != mapping.source.call_signature():
            problems.append(
                f"{mapping.file}: source.name: {mapping.source.name!r} is also defined, differently, in {first.file.name}"
            )
