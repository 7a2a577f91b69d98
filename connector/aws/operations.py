"""The AWS calls the mapping files name, checked against botocore's service models.

A mapping file is TOML that a CMDB admin edits: a misspelled service,
operation (``describe_instancez``) or parameter (``Fliters``) would otherwise
pass ``validate`` and fail every unit of its source at run time, with
botocore's bare ``KeyError`` or ``ParamValidationError``. Checked before the
first AWS call of a run and by ``validate``, it is one problem per name, with
the file, the key and the nearest real name.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

import botocore.session
import jmespath
from botocore import xform_name
from botocore.exceptions import UnknownServiceError

from ..errors import MappingError, did_you_mean
from ..mapping.load import MappingSet
from ..models import ORGANIZATION_KINDS

ORGANIZATIONS = "organizations"
ORG_ITEMS = ("account", *ORGANIZATION_KINDS)  # the kinds whose items (and tags) come through Organizations


@lru_cache(maxsize=1)
def _services() -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_available_services())


def _first_member(path: str) -> str | None:
    """The member of the answer a JMESPath reads first (``Vpcs`` of ``Vpcs[].VpcId``), or None where it
    does not begin with one (``@``, a literal, ``a || b``)."""
    node = jmespath.compile(path).parsed
    while node["type"] in ("subexpression", "index_expression", "projection", "value_projection", "flatten",
                           "filter_projection", "pipe") and node["children"]:
        node = node["children"][0]
    return node["value"] if node["type"] == "field" else None


@lru_cache(maxsize=None)
def _members(service: str, side: str) -> dict[str, frozenset[str]]:
    """The service's operations as boto3 names them (describe_instances) -> the members of their ``side``:
    "input", the names of their parameters; "output", those of their answers (an operation whose answer
    is not a structure is left out: nothing to check against)."""
    model = botocore.session.get_session().get_service_model(service)
    found = {}
    for name in model.operation_names:
        shape = getattr(model.operation_model(name), f"{side}_shape")
        if shape is not None and shape.type_name == "structure":
            found[xform_name(name)] = frozenset(shape.members)
        elif side == "input":
            found[xform_name(name)] = frozenset()
    return found


def unknown_operations(mappings: MappingSet) -> list[str]:
    """One problem per service, operation or parameter of the mapping files that botocore does not know."""
    problems: list[str] = []
    for mapping in mappings.mappings.values():
        source = mapping.source
        # the items of the other kinds come from the accounts stage; their tags, through Organizations
        service = source.service if source.kind == "api" else ORGANIZATIONS if source.kind in ORG_ITEMS else None
        if not service:
            continue
        if service not in _services():
            problems.append(f"{mapping.file}: source.service: {service!r} is not an AWS service botocore "
                            f"knows{did_you_mean(service, _services())}")
            continue
        try:
            operations = _members(service, "input")
        except UnknownServiceError:  # listed, but no model to load: nothing to check it against
            continue
        # (key, operation, {where each parameter is named: its name})
        calls = [("source", source.operation, _named("source", source.params))] if source.kind == "api" else []
        if source.detail:
            calls.append(("source.detail", source.detail.operation, _named("source.detail", source.detail.params)))
        for n, join in enumerate(source.joins):
            key = "source.join" if len(source.joins) == 1 else f"source.join[{n}]"
            named = {f"{key}.param": join.param} if join.param else {f"{key}.filter": "Filters"}
            calls.append((key, join.operation, {**named, **_named(key, join.params)}))
        if source.tags_call:
            calls.append(("tags", source.tags_call.operation, _named("tags", source.tags_call.params)))
        for key, operation, params in calls:
            if not operation:
                continue
            if operation not in operations:
                problems.append(f"{mapping.file}: {key}.operation: {operation!r} is not an operation of "
                                f"{service}{did_you_mean(operation, frozenset(operations))}")
                continue
            known = operations[operation]
            problems.extend(f"{mapping.file}: {where}: not a parameter of {service} {operation}"
                            f"{did_you_mean(name, known)}" for where, name in params.items() if name not in known)
        problems.extend(_unanswered(mapping.file, service, source.answer_paths, operations))
    return problems


def _unanswered(file: Any, service: str, paths: Iterable[tuple[str, str, str]], operations: Iterable[str]) -> list[str]:
    """A JMESPath that reads a member the call does not answer (``items = "Vpc"`` for describe_vpcs'
    ``Vpcs``) would find nothing in every answer: each resource of the source gone, its CIs retired."""
    problems = []
    for key, operation, path in paths:
        members = _members(service, "output").get(operation) if operation in operations else None
        first = _first_member(path) if members else None
        if first is not None and first not in members:
            problems.append(f"{file}: {key}: {path!r} reads {first!r}, which {service} {operation} does not answer"
                            f"{did_you_mean(first, members)}; it answers {', '.join(sorted(members))}")
    return problems


def _named(key: str, params: dict) -> dict[str, str]:
    return {f"{key}.params.{name}": name for name in params}


def check_operations(mappings: MappingSet) -> None:
    """``unknown_operations``, raised as one MappingError (exit 2) when there are any."""
    problems = unknown_operations(mappings)
    if problems:
        raise MappingError.listing(problems)
