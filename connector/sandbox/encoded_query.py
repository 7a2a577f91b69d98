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


def _ordering(op: str, expected: str) -> Callable[[str], bool]:
    """>, <, >=, <=: numerically when both sides are numbers, else as strings."""
    compare = {">": lambda a, b: a > b, "<": lambda a, b: a < b,
               ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}[op]
    number = _number(expected)

    def test(actual: str) -> bool:
        value = _number(actual)
        if value is None or number is None:
            return compare(actual, expected)
        return compare(value, number)

    return test


def _tester(op: str, expected: str) -> Callable[[str], bool]:
    """One condition's test of a value, with its operand prepared once."""
    low = expected.lower()
    if op == "=":
        return lambda actual: actual == expected
    if op == "!=":
        return lambda actual: actual != expected
    if op in ("IN", "NOT IN"):
        members = frozenset(expected.split(","))
        return (lambda actual: actual in members) if op == "IN" else (lambda actual: actual not in members)
    if op == "LIKE":
        return lambda actual: low in actual.lower()
    if op == "NOT LIKE":
        return lambda actual: low not in actual.lower()
    if op == "STARTSWITH":
        return lambda actual: actual.lower().startswith(low)
    if op == "ENDSWITH":
        return lambda actual: actual.lower().endswith(low)
    if op == "ISEMPTY":
        return lambda actual: actual == ""
    if op == "ISNOTEMPTY":
        return lambda actual: actual != ""
    return _ordering(op, expected)


# walker(field) -> a function of a row: the dot-walked field's string value, or None when a field on the way is unknown
Walker = Callable[[str], Callable[[dict], "str | None"]]
# (field, the row's value of it, test)
_Compiled = list[list[list[tuple[str, Callable[[dict], "str | None"], Callable[[str], bool]]]]]


def compile_query(query: EncodedQuery, fields: frozenset[str], walker: Walker) -> Callable[[dict], bool]:
    """The query as a row predicate, built once per query rather than interpreted per row.

    ``fields`` are the queried table's fields: a condition on any other
    (not dot-walked) field is dropped, and so is an OR group of nothing but
    such conditions, as a real instance does without a word. Each field,
    dot-walked or not, is read through ``walker(field)``, made once per query
    (None where the row's class lacks the field: its condition is dropped).
    """
    if not query.queries:
        return lambda row: True
    compiled: _Compiled = []
    for one in query.queries:
        groups = []
        for group in one.groups:
            tests = [(c.field, walker(c.field), _tester(c.op, c.value))
                     for c in group if c.field and ("." in c.field or c.field in fields)]
            if tests:
                groups.append(tests)
        compiled.append(groups)

    if len(compiled) == 1 and all(len(tests) == 1 for tests in compiled[0]):
        return _conjunction([tests[0] for tests in compiled[0]])

    def group_holds(row: dict, tests: list) -> bool:
        seen = False
        for _name, value_of, test in tests:
            value = value_of(row)
            if value is None:
                continue  # unknown for this row: the condition is dropped
            if test(value):
                return True
            seen = True
        return not seen

    def predicate(row: dict) -> bool:
        return any(all(group_holds(row, tests) for tests in groups) for groups in compiled)

    return predicate


def _conjunction(conditions: list[tuple[str, Callable[[dict], "str | None"], Callable[[str], bool]]]
                 ) -> Callable[[dict], bool]:
    """The usual query, conditions joined by ``^`` alone: each must hold where it is known.

    Plain fields are tested before dot-walked ones, which cost a lookup each.
    """
    conditions = sorted(conditions, key=lambda c: "." in c[0])

    def predicate(row: dict) -> bool:
        for _name, value_of, test in conditions:
            value = value_of(row)
            if value is not None and not test(value):
                return False
        return True

    return predicate
