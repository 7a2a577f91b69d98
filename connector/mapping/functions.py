"""The closed vocabulary of mapping transforms, and ServiceNow's string form.

No ``eval``: a mapping file can only name a transform from ``TRANSFORMS``.
A transform receives ``None`` only when the value is absent, and then returns
``None``: absent stays absent.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

SNOW_TIMESTAMP = "%Y-%m-%d %H:%M:%S"


def snow_time(text: str) -> datetime | None:
    """ServiceNow's UTC time (``SNOW_TIMESTAMP``) as an aware datetime; None if ``text`` is not one."""
    try:
        return datetime.strptime(text, SNOW_TIMESTAMP).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


_STRINGS_ONLY = {str}


def all_strings(values: Iterable[Any]) -> bool:
    """Are all these values strings already, ServiceNow's form, with nothing to convert?"""
    return set(map(type, values)) <= _STRINGS_ONLY


def snow_string(value: Any) -> str | None:
    """ServiceNow's string form of a value; ``None`` stays ``None`` (absent)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def snow_value(value: object) -> str:
    """The one normalisation: ServiceNow's string form (``8`` is ``"8"``, ``True``
    is ``"true"``), and absent or ``None`` compare equal to ``""``."""
    return "" if value is None else (value if type(value) is str else snow_string(value))


def _timestamp(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime(SNOW_TIMESTAMP)


def _to_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _scaled(divisor: float) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        number = _to_int(value)
        if number is None:
            return None
        scaled = number / divisor
        return int(scaled) if scaled.is_integer() else round(scaled, 2)

    return convert


def _product(value: Any) -> Any:
    """The product of a list of numbers (``[CoreCount, ThreadsPerCore]`` -> vCPUs); a number stays itself.
    Absent if any member is absent or not a number: a part unknown leaves the whole unknown."""
    members = value if isinstance(value, (list, tuple)) else [value]
    numbers = [_to_int(member) if not isinstance(member, bool) else None for member in members]
    if not numbers or None in numbers:
        return None
    product = 1
    for number in numbers:
        product *= number
    return product


def _join(separator: str) -> Callable[[Any], Any]:
    def join(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return separator.join(str(snow_string(v)) for v in value if v is not None)
        return value

    return join


def _truncate(arg: str | None) -> Callable[[Any], Any]:
    """A text value cut to its first ``arg`` characters, as a field of that length keeps it."""
    if arg is None or not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"truncate needs a length in characters, e.g. truncate:255; not {arg!r}")
    length = int(arg)
    return _str_only(lambda text: text[:length])


def _str_only(fn: Callable[[str], str]) -> Callable[[Any], Any]:
    return lambda value: fn(value) if isinstance(value, str) else value


# name -> factory(argument) -> function. The argument is the text after ":".
TRANSFORMS: dict[str, Callable[[str | None], Callable[[Any], Any]]] = {
    "lower": lambda _arg: _str_only(str.lower),
    "upper": lambda _arg: _str_only(str.upper),
    "strip": lambda _arg: _str_only(str.strip),
    "int": lambda _arg: _to_int,
    "bool": lambda _arg: lambda v: None if v is None else bool(v),
    "bytes_to_gb": lambda _arg: _scaled(1024**3),
    "mb_to_gb": lambda _arg: _scaled(1024),
    "timestamp": lambda _arg: _timestamp,
    "join": lambda arg: _join(", " if arg is None else arg),
    "first": lambda _arg: lambda v: (v[0] if v else None) if isinstance(v, list) else v,
    "product": lambda _arg: _product,
    "truncate": _truncate,
}


def make_transform(spec: str) -> Callable[[Any], Any]:
    """``"lower"`` or ``"join:,"`` -> a function. ``KeyError`` for an unknown name."""
    name, sep, arg = spec.partition(":")
    factory = TRANSFORMS[name]
    return factory(arg if sep else None)
