"""One hierarchy of errors, grouped by what the caller should do.

- ``UsageError`` and its children: the user must fix input (exit code 2).
- ``ServiceNowError`` and its children: the instance refused or failed a
  request; ``retriable`` says whether trying again later can help.
- ``AwsScopeError``: one unit of collection failed; it is recorded as that
  unit's status and the run goes on.

Messages never carry a secret: callers put names and keys in them, never
values of secret settings.
"""

from __future__ import annotations


def key_path(parts) -> str:
    """A key path as every problem names it: ``relations[0].to``, ``source.join[1].key`` (list indices
    in brackets)."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".")


def did_you_mean(name: str, names) -> str:
    """`` (did you mean 'x'?)`` for the names nearest ``name``, or "" when none is near: up to three, and
    only those about as near as the nearest (names sharing a long prefix, cmdb_ci_..., are all somewhat
    near; the one a typo was meant for is much nearer)."""
    from difflib import SequenceMatcher, get_close_matches

    close = get_close_matches(name, sorted(names), n=3)
    if close:
        best = SequenceMatcher(None, close[0], name).ratio()
        close = [c for c in close if SequenceMatcher(None, c, name).ratio() >= best - 0.1]
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""

    exit_code = 1


class UsageError(ConnectorError):
    """Bad input from the user: config, mapping file, command line."""

    exit_code = 2


class ConfigError(UsageError):
    """The config file or an environment override is wrong."""


class MappingError(UsageError):
    """A mapping file is wrong. ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def listing(cls, problems: list[str]) -> "MappingError":
        """One error for ``problems`` (each naming its file and key), one per line."""
        return cls(f"{len(problems)} problem(s) in the mapping files:\n  " + "\n  ".join(problems), problems)


class InventoryError(UsageError):
    """A saved inventory file cannot be read."""


class ServiceNowError(ConnectorError):
    """ServiceNow answered with an error or with something that is not an answer."""

    retriable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str = "",
        method: str = "",
        url: str = "",
    ):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url

    def __str__(self) -> str:
        where = f"{self.method} {self.url}".strip()
        parts = [self.args[0] if self.args else self.__class__.__name__]
        if self.detail:
            parts.append(f"detail: {self.detail}")
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if where:
            parts.append(where)
        return " | ".join(parts)


class ServiceNowAuthError(ServiceNowError):
    """401: the credentials were refused."""


class ServiceNowPermissionError(ServiceNowError):
    """403: an ACL, business rule or data policy refused the request."""


class ServiceNowNotFound(ServiceNowError):
    """404: missing, or hidden by an ACL."""


class ServiceNowBadRequest(ServiceNowError):
    """400 and other 4xx answers that retrying will not change."""


class ServiceNowBadResponse(ServiceNowError):
    """An answer that is not the JSON the Table API promises (HTML, empty 202)."""

    retriable = True


class ServiceNowUnavailable(ServiceNowError):
    """429, 5xx or a connection failure: worth retrying after a pause."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServiceNowShiftedRead(ServiceNowError):
    """Rows were added to or removed from the table while it was read a page at a time: pages by offset
    then skip rows or repeat them, so the read is not complete (a CI skipped would be created twice)."""


class AmbiguousWriteError(ServiceNowError):
    """A create may or may not have been applied (the answer was lost).

    The request is never re-sent blindly: the caller looks the record up first.
    """

    retriable = True


class AwsScopeError(ConnectorError):
    """One (account, region, source) unit could not be collected in full."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason
