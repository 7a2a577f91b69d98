"""The shape of a mapping file, validated with ``extra="forbid"``.

One TOML file per CMDB class; the file name is the class (table). See
``mappings/README.md`` for the format with a worked example.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..models import query_term_field, query_terms
from .expressions import compile_field, compile_path

DEFAULT_RETIRE = {"install_status": "7", "operational_status": "6"}
DEFAULT_REVIVE = {"install_status": "1", "operational_status": "1"}
# The relation types of an instance's base system (cmdb_rel_type): a mapping's type not among them is likely
# misspelled, though an instance may have types of its own (validate says so; check-access asks the instance).
BASE_RELATION_TYPES = (
    "Hosted on::Hosts",
    "Contains::Contained by",
    "Located in::Houses",
    "Depends on::Used by",
    "Runs on::Runs",
    "Members::Member of",
    "Connected by::Connects",
    "Uses::Used by",
    "Provides::Provided by",
    "Owns::Owned by",
    "Virtualized by::Virtualizes",
    "Cluster of::Cluster",
    "IP Connection::IP Connection",
    "Instantiates::Instantiated by",
    "Managed by::Manages",
    "Stored on::Stores",
    "Allocated to::Allocated from",
    "Exposes::Exposed by",
)


def _path_compiles(path: str | None) -> str | None:
    if path is not None:
        compile_path(path)
    return path


# a JMESPath over the item that finds something where the item knows a field or a kind of relation
KnownWhen = Annotated[str | None, AfterValidator(_path_compiles)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# a ServiceNow table or field name: lower case, digits, underscores (a custom one starts with u_)
SNOW_NAME = r"^[a-z][a-z0-9_]*$"


class LookupSpec(_Strict):
    """A reference field set from a value the resource gives (a tag's e-mail address, a group's name):
    the sys_id of the one record of ``table`` whose ``field`` holds it, looked up at run time. ``where``:
    an encoded query such a record must also match (``active=true``)."""

    table: str = Field(pattern=SNOW_NAME)
    field: str = Field(pattern=SNOW_NAME)
    where: str = ""

    @model_validator(mode="after")
    def _where_narrows(self) -> "LookupSpec":
        if "^NQ" in self.where or self.where.startswith(("^", "NQ")):
            raise ValueError("where: one encoded query that narrows the lookup (active=true), without ^NQ "
                             "and without a leading ^")
        unnamed = [term for term in query_terms(self.where) if not query_term_field(term)]
        if unnamed:
            raise ValueError(f"where: {unnamed[0]!r} does not begin with a field name (lower case, as the table's "
                             "dictionary spells it): the instance would drop that condition and let every record "
                             "through")
        return self


def _as_lookup(value: Any) -> Any:
    """``"sys_user.email"`` is shorthand for ``{ table = "sys_user", field = "email" }``."""
    if isinstance(value, str):
        table, dot, name = value.partition(".")
        if not dot:
            raise ValueError(f"{value!r}: write the table and its field, as \"sys_user.email\"")
        return {"table": table, "field": name}
    return value


LookupValue = Annotated[LookupSpec, BeforeValidator(_as_lookup)]


class FieldSpec(_Strict):
    """One CMDB field. Exactly one of path, template, tag or value."""

    path: str | None = None
    template: str | None = None
    tag: str | None = None
    value: str | int | float | bool | None = None
    map: dict[str, str] | None = None
    default: str | int | float | bool | None = None
    transform: list[str] = Field(default_factory=list)
    # JMESPath over the item: when it finds nothing, the item does not know this field (an account listed
    # in aws.accounts has no name or Organization of its own): its value is then written only when the CI
    # is created, never over the value a CI holds.
    known_when: KnownWhen = None
    # a reference field: the value found is looked up, and the field gets that record's sys_id
    lookup: LookupValue | None = None
    # written when the CI is created only, never over the value a CI holds (people edit it afterwards)
    create_only: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "FieldSpec":
        given = [k for k in ("path", "template", "tag", "value") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of path, template, tag or value"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for key in ("template", "tag"):
            if getattr(self, key) is not None and not getattr(self, key).strip():
                raise ValueError(f"{key}: empty, so that the field would never have a value"
                                 + (': name the AWS tag, as tag = "Owner"' if key == "tag" else ""))
        if self.create_only and self.known_when is not None:
            raise ValueError("create_only writes the field on a create only, whatever the item knows: known_when "
                             "adds nothing to it")
        compile_field(self)  # JMESPath, template variables and transforms, checked now
        return self


def _as_field_spec(value: Any) -> Any:
    """A plain string is shorthand for ``{ path = "..." }``."""
    return {"path": value} if isinstance(value, str) else value


FieldValue = Annotated[FieldSpec, BeforeValidator(_as_field_spec)]


class DetailSpec(_Strict):
    """A call per item, for APIs that list first and describe after (EKS, S3)."""

    operation: str
    # parameter name -> JMESPath over the listed item ("@" for a plain string item)
    params: dict[str, str]
    # JMESPath into the answer; "@" keeps it whole
    result: str = "@"
    # where the result goes: under this key of the item; without it, merged into
    # the item (or replacing it, when the listed item is not a table)
    key: str | None = None

    @model_validator(mode="after")
    def _compiles(self) -> "DetailSpec":
        for expression in (*self.params.values(), self.result):
            compile_path(expression)
        return self


# EC2 refuses a call with more filter values than this, all its filters together: "FilterLimitExceeded: The
# maximum number of filter values specified on a single call is 200"
MAX_FILTER_VALUES = 200


class JoinSpec(_Strict):
    """One call (or a few) per collection unit, whose answers join its items: the specs of the instance
    types the unit's instances use (describe_instance_types), the AMIs they were launched from."""

    operation: str
    # the call's parameter that takes the values (a list), at most per_call of them a call; or
    param: str | None = None
    # an EC2-style filter that takes them: Filters = [{Name = filter, Values = [...]}] (a value no
    # resource has is left out of the answer, where an id in an ids parameter fails the call)
    filter: str | None = None
    # JMESPath over each item: the value it is joined on (InstanceType), or a list of them
    # (BlockDeviceMappings[].Ebs.VolumeId): the item then keeps a list, an entry for each
    on: str
    # JMESPath from an answer page to its entries (InstanceTypes)
    items: str
    # JMESPath over an entry: the value it is for (InstanceType)
    match: str
    # JMESPath over the matching entry: what the item keeps of it ("@": all of it)
    result: str = "@"
    # the item keeps it under this key
    key: str = Field(min_length=1)
    # other parameters of the call, as given
    params: dict[str, Any] = Field(default_factory=dict)
    per_call: int = Field(default=100, ge=1, le=1000)
    # true: the answers are AWS's own catalogue, the same for every account (instance types), so each
    # value is asked once per region per run, through whichever account's unit needs it first
    shared: bool = False
    # true: a value may have many entries (the volumes attached to an instance, by attachment.instance-id):
    # the item keeps the list of them all, in the answer's order ([] for none), not the one entry
    many: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> "JoinSpec":
        for expression in (self.on, self.items, self.match, self.result):
            compile_path(expression)
        if (self.param is None) == (self.filter is None):
            raise ValueError("give param (the call's parameter that takes the values) or filter (the name of an "
                             "EC2-style filter that takes them), one of the two")
        if self.param is not None and self.param in self.params:
            raise ValueError(f"params.{self.param}: the values go in {self.param!r} (param); not also in params")
        if self.filter is not None and not isinstance(self.params.get("Filters", []), list):
            raise ValueError("params.Filters: a list of filters ({ Name = ..., Values = [...] }), to which "
                             "the filter of the values is added")
        if self.filter is not None:
            given = sum(len(f.get("Values") or ()) for f in self.params.get("Filters", []) if isinstance(f, dict))
            if self.per_call + given > MAX_FILTER_VALUES:
                raise ValueError(
                    f"per_call: {self.per_call} values a call" + (f", and {given} in params.Filters" if given else "")
                    + f": EC2 takes at most {MAX_FILTER_VALUES} filter values in one call, all filters together "
                    f"(FilterLimitExceeded, which would fail the unit); per_call = {MAX_FILTER_VALUES - given} at most")
        return self


def _one_or_more(value: Any) -> Any:
    """``[source.join]`` (one table) is a list of one; ``[[source.join]]`` a list of them."""
    return [value] if isinstance(value, dict) else value


class SourceSpec(_Strict):
    """Where the items come from.

    kind = "api": one AWS call (paginated when botocore can), per account and
    region (scope = "regional") or per account (scope = "global").
    kind = "account": the account itself, from Organizations or the config.
    kind = "region": each collected region of each account.
    kind = "organization": the Organization (describe_organization, with its ``Roots``), and
    kind = "organizational_unit": each of its OUs, with ``Parent`` (Id, Type, Arn) and ``RootId``:
    read once per run through the account that lists the accounts, when they come from Organizations.
    """

    name: str = Field(pattern=r"^[a-z0-9-]+:[a-z0-9_-]+$")
    kind: Literal["api", "account", "region", "organization", "organizational_unit"] = "api"
    service: str | None = None
    operation: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    items: str | None = None
    id: str
    scope: Literal["regional", "global"] = "regional"
    detail: DetailSpec | None = None
    # each joins the items in turn; ``[source.join]`` is one, ``[[source.join]]`` several
    join: Annotated[list[JoinSpec], BeforeValidator(_one_or_more)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _api_needs_call(self) -> "SourceSpec":
        if self.kind == "api":
            missing = [k for k in ("service", "operation", "items") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"kind = 'api' needs {', '.join(missing)}")
        elif self.join:
            raise ValueError("join: only for kind = 'api' (its items come from the accounts stage, not a call)")
        keys = [join.key for join in self.join]
        if len(set(keys)) < len(keys):
            raise ValueError(f"join: two joins keep their answers under one key ({sorted(keys)}): give each its own")
        for expression in (self.items, self.id):
            if expression is not None:
                compile_path(expression)
        return self


class TargetSpec(_Strict):
    table: str | None = None
    identity: str = "correlation_id"


class RelationSpec(_Strict):
    type: str = Field(pattern=r"^[^:]+::[^:]+$")
    to: str
    identity: FieldValue
    # Whether the CI of this file is the parent ("Hosted on") or the child.
    role: Literal["parent", "child"] = "parent"
    # JMESPath over the item: when it finds nothing, the item does not tell which relations of this kind
    # its CI has (an account listed in aws.accounts, whose place in the Organization was not read): the
    # ones in the CMDB are kept, none deleted. Without it, an identity that builds nothing means none.
    known_when: KnownWhen = None


class TagsSpec(_Strict):
    """Where an item's tags are, for ``cmdb_key_value`` (written when ``reconcile.tags`` is on).

    ``path`` leads to a list of objects (``[{Key, Value}]``, as EC2 and RDS
    give them; ``key`` and ``value`` name their members) or to an object of
    key -> value (as EKS gives them). Where the listing carries no tags,
    ``operation`` names a call made per item for them (only when tags are
    on), with ``params`` as JMESPath over the item; ``path`` then reads its
    answer, and the error codes in ``none_when`` mean "no tags" (S3's
    ``NoSuchTagSet``).
    """

    path: str
    key: str = "Key"
    value: str = "Value"
    # tag keys left out, as shell-style patterns: ["aws:*"] drops AWS's own tags
    exclude: list[str] = Field(default_factory=list)
    operation: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    none_when: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _compiles(self) -> "TagsSpec":
        if self.operation is None and (self.params or self.none_when):
            raise ValueError("params and none_when go with operation (a call per item for its tags)")
        for expression in (self.path, *self.params.values()):
            compile_path(expression)
        return self


class LifecycleSpec(_Strict):
    retire: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_RETIRE))
    revive: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_REVIVE))

    @model_validator(mode="after")
    def _tells_retired_apart(self) -> "LifecycleSpec":
        """A CI reads as retired when it holds every value of ``retire``: with none, no CI ever would (each
        retired again on every run); with a ``revive`` that gives none of those fields another value, a
        revived CI would still read as retired (revived again on every run, or every live one retired)."""
        if not self.retire:
            raise ValueError('retire: empty, so that no CI would ever read as retired (each one retired again on '
                             'every run): give the values that mark it, as { install_status = "7" }')
        if not any(name in self.revive and self.revive[name] != value for name, value in self.retire.items()):
            raise ValueError(f"revive: gives none of retire's fields ({', '.join(sorted(self.retire))}) another "
                             "value, so that a revived CI would still read as retired (revived again on every run)")
        return self


class MappingFile(_Strict):
    source: SourceSpec
    target: TargetSpec = TargetSpec()
    fields: dict[str, FieldValue]
    relations: list[RelationSpec] = Field(default_factory=list)
    tags: TagsSpec | None = None
    lifecycle: LifecycleSpec = LifecycleSpec()
    description: str = ""

    @model_validator(mode="after")
    def _identity_is_mapped(self) -> "MappingFile":
        if self.target.identity not in self.fields:
            raise ValueError(
                f"the identity field {self.target.identity!r} (target.identity) has no entry in [fields]"
            )
        if self.fields[self.target.identity].known_when is not None:
            raise ValueError(f"the identity field {self.target.identity!r} takes no known_when: a CI is known by it")
        if self.fields[self.target.identity].create_only:
            raise ValueError(f"the identity field {self.target.identity!r} is not create_only: a CI is known by it")
        if self.fields[self.target.identity].lookup is not None:
            raise ValueError(f"the identity field {self.target.identity!r} takes no lookup: a CI is known by it, "
                             "as the resource gives it")
        return self


def _members(annotation: Any) -> list[Any]:
    """The types an annotation may be: itself, or each member of an Optional, a Union or an Annotated."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys a mapping file may hold where a validation error's ``loc`` points (its last part the key
    that is not one of them): those of the table it is in. [] where the place is not a table."""
    kinds: list[Any] = [MappingFile]
    for part in loc[:-1]:
        step: list[Any] = []
        for kind in (member for k in kinds for member in _members(k)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                if isinstance(part, str) and part in kind.model_fields:
                    step.append(kind.model_fields[part].annotation)
            elif get_origin(kind) in (list, dict) and get_args(kind):
                step.append(get_args(kind)[-1])  # an entry of the list, or a value of the table
        kinds = step
    return sorted({name for k in kinds for kind in _members(k)
                   if isinstance(kind, type) and issubclass(kind, BaseModel) for name in kind.model_fields})
