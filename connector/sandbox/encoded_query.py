"""ServiceNow encoded queries, as the stand-in evaluates them.

``^`` is AND, ``^OR`` binds tighter than ``^`` (``a^ORb^c`` is ``(a or b) and c``),
``^NQ`` starts a new query whose rows are added. A condition on a field the
table does not have is dropped silently, as on a real instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

_CONDITION = re.compile(
    r"^(?P<field>[a-z0-9_.]+)"
    r"(?P<op>ISNOTEMPTY|ISEMPTY|NOT IN|NOT LIKE|STARTSWITH|ENDSWITH|LIKE|IN|!=|>=|<=|=|>|<)"
    r"(?P<value>.*)$",
    re.S,
)


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str


@dataclass
class Query:
    # AND of OR-groups
    groups: list[list[Condition]] = field(default_factory=list)


@dataclass
class EncodedQuery:
    queries: list[Query] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)


class QueryError(ValueError):
    pass


def parse(text: str) -> EncodedQuery:
    result = EncodedQuery()
    for part in (text or "").split("^NQ"):
        query = Query()
        for token in part.split("^"):
            token = token.strip()
            if not token or token == "EQ":
                continue
            if token.startswith("ORDERBYDESC"):
                result.order.append((token[len("ORDERBYDESC"):], True))
                continue
            if token.startswith("ORDERBY"):
                result.order.append((token[len("ORDERBY"):], False))
                continue
            is_or = token.startswith("OR") and query.groups
            condition = _condition(token[2:] if is_or else token)
            if is_or:
                query.groups[-1].append(condition)
            else:
                query.groups.append([condition])
        result.queries.append(query)
    return result


def _condition(token: str) -> Condition:
    match = _CONDITION.match(token)
    if not match:
        # Real instances ignore what they cannot parse; an unknown field name
        # followed by an operator still parses and is dropped later.
        return Condition("", "", token)
    return Condition(match["field"], match["op"], match["value"])


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _compare(op: str, actual: str, expected: str) -> bool:
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "IN":
        return actual in expected.split(",")
    if op == "NOT IN":
        return actual not in expected.split(",")
    if op == "LIKE":
        return expected.lower() in actual.lower()
    if op == "NOT LIKE":
        return expected.lower() not in actual.lower()
    if op == "STARTSWITH":
        return actual.lower().startswith(expected.lower())
    if op == "ENDSWITH":
        return actual.lower().endswith(expected.lower())
    if op == "ISEMPTY":
        return actual == ""
    if op == "ISNOTEMPTY":
        return actual != ""
    a, b = _number(actual), _number(expected)
    if a is None or b is None:
        a, b = actual, expected  # type: ignore[assignment]
    return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


# resolve(row, field) -> the field's string value, or None when the field is unknown
Resolver = Callable[[dict, str], "str | None"]


def matches(query: EncodedQuery, row: dict, resolve: Resolver) -> bool:
    if not query.queries:
        return True
    return any(_matches_one(q, row, resolve) for q in query.queries)


def _matches_one(query: Query, row: dict, resolve: Resolver) -> bool:
    for group in query.groups:
        known = [(c, resolve(row, c.field)) for c in group if c.field]
        known = [(c, v) for c, v in known if v is not None]
        if not known:
            continue  # every condition of the group is on an unknown field: dropped
        if not any(_compare(c.op, v, c.value) for c, v in known):
            return False
    return True
