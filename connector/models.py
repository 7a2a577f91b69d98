"""Plain data passed from one pipeline stage to the next. No behaviour here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

# Status of an account or of one collection unit.
OK = "ok"
DENIED = "denied"
THROTTLED = "throttled"
ERROR = "error"
SKIPPED = "skipped"
SCOPE_STATUSES = (OK, DENIED, THROTTLED, ERROR, SKIPPED)

GLOBAL_REGION = "global"
# one empty mapping and one empty set for the CIs that need none (an empty frozenset is 200 bytes)
NOTHING: Mapping[str, Any] = MappingProxyType({})
NONE_UNKNOWN: frozenset = frozenset()
# The source kinds read from the Organization's structure, once per run, not per account
ORGANIZATION_KINDS = ("organization", "organizational_unit")


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    status: str = OK
    error: str | None = None
    # The raw Organizations item (or a minimal one for an explicit list).
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # skipped for its state (suspended, closing): its own CI is still written, with that state
    closed: bool = False


@dataclass(frozen=True)
class OrganizationTree:
    """The Organization's structure, for the mapping files of kind "organization" and
    "organizational_unit": the Organization (with its roots) and every OU (with its parent). The
    accounts' parents are on their items. It belongs to the management account's scope."""

    management_account: str
    organization: dict[str, Any]
    units: list[dict[str, Any]]
    # account id -> its parent ({Id, Type, Arn}), put on the account's item
    parents: dict[str, dict[str, str]] = field(default_factory=dict)
    # why it was not read (the walk was refused or failed: status, reason); None when it was
    failure: tuple[str, str] | None = None


@dataclass(frozen=True)
class Scope:
    """One unit of collection: (account, region, source), and how it ended."""

    account_id: str
    region: str
    source: str
    status: str = OK
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.account_id, self.region, self.source)


@dataclass(frozen=True)
class Record:
    """One raw API item, tagged with where it came from."""

    account_id: str
    region: str
    source: str
    resource: dict[str, Any]


@dataclass
class Inventory:
    accounts: list[Account] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    # Every account the configuration targets, in any shard: listed (by Organizations, under
    # aws.organizational_units if set, or in aws.accounts) and not in aws.exclude_accounts; suspended ones
    # too. None when not known (an inventory written without it). A CI of ours in any other account is
    # one that no run collects any more (see plan_changes' ``targeted``).
    targeted: frozenset[str] | None = None


@dataclass(frozen=True)
class RelationRef:
    """A relation from the CI that declares it to another CI.

    ``role`` says which end the declaring CI is: "parent" (the dependent CI,
    as a VM is "Hosted on" its datacenter) or "child".
    """

    type: str
    table: str
    identity: str
    role: str = "parent"


@dataclass(frozen=True)
class DesiredCI:
    """What the CMDB should hold for one AWS resource."""

    table: str
    identity: str
    fields: dict[str, str | None]
    relations: tuple[RelationRef, ...]
    scope: tuple[str, str, str]
    # key -> value for cmdb_key_value; None when its tags are not managed
    tags: dict[str, str] | None = None
    # (relation type, other table) of the relations this CI's item could not tell: the CMDB's are kept
    unknown_relations: frozenset[tuple[str, str]] = frozenset()
    # fields the item does not know (a mapping's known_when): their values are written by a create only
    create_only: Mapping[str, str | None] = field(default_factory=dict)


# The CMDB's records are read by the ten thousand: named tuples, which are as
# immutable as a frozen dataclass and built in a quarter of its time.
class ExistingCI(NamedTuple):
    """A CI as read from the CMDB: every value in ServiceNow's string form."""

    table: str
    sys_id: str
    fields: dict[str, str]


class ExistingRelation(NamedTuple):
    sys_id: str
    parent: str
    child: str
    type: str  # the cmdb_rel_type sys_id


class ExistingKeyValue(NamedTuple):
    """A ``cmdb_key_value`` row: one tag of one CI."""

    sys_id: str
    ci: str  # the configuration_item sys_id
    key: str
    value: str


class Lookup(NamedTuple):
    """How a reference field gets its sys_id from the value a resource gives: the one record of ``table``
    whose ``field`` holds that value (compared without case) and that matches the encoded query ``where``."""

    table: str
    field: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.table}.{self.field}" + (f" ({self.where})" if self.where else "")

    def where_fields(self) -> list[str]:
        """The fields ``where`` names (of a dot-walk, the first), each once: the instance drops a condition
        on a field the table lacks, and would then answer with more records than ``where`` lets through."""
        return list(dict.fromkeys(name for name in map(query_term_field, query_terms(self.where)) if name))


# the field a term of an encoded query begins with: a ServiceNow field name, lower case (an operator,
# IN, LIKE, =, follows it)
_TERM_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
# terms that name no field: the order of the answer, and the end of a query
_FIELDLESS_TERMS = ("ORDERBY", "GROUPBY", "EQ")


def query_terms(query: str) -> list[str]:
    """The conditions of an encoded query, each without the OR it may begin with; not the terms that
    only order the answer (ORDERBY)."""
    terms = []
    for term in query.split("^") if query else ():
        if term.startswith(_FIELDLESS_TERMS):
            continue
        terms.append(term[2:] if term.startswith("OR") else term)
    return terms


def query_term_field(term: str) -> str:
    """The field an encoded query's condition is on ("" when it does not begin with a field name)."""
    match = _TERM_FIELD.match(term)
    return match.group() if match else ""


@dataclass(frozen=True)
class MappingProblem:
    """An item that could not be mapped. Its scope then counts as incomplete."""

    scope: tuple[str, str, str]
    table: str
    message: str
