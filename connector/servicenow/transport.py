"""The HTTP layer under pysnow: one place that validates answers and retries.

``validate_response`` maps every status to an error class, once. The session
retries what is retriable (429, 502, 503, 504, HTML outage pages, connection
errors), honouring ``Retry-After``, bounded in attempts and in total time.
A POST is never re-sent when it may have been applied: that raises
``AmbiguousWriteError`` and the caller looks the record up first.
"""

from __future__ import annotations

import logging
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import orjson
import requests
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError
from urllib3.exceptions import SSLError as Urllib3SSLError

from ..errors import (
    AmbiguousWriteError,
    ServiceNowAuthError,
    ServiceNowBadRequest,
    ServiceNowBadResponse,
    ServiceNowError,
    ServiceNowNotFound,
    ServiceNowPermissionError,
    ServiceNowUnavailable,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}
USER_AGENT = "cmdb-connector"


def _error_body(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or ""), str(error.get("detail") or "")
    result = body.get("result") if isinstance(body, dict) else None
    items = result.get("items") if isinstance(result, dict) else None
    if isinstance(items, list):  # an IRE answer, refused as a whole: its items' own errors say why
        errors = [f"{e.get('error', '')}: {e.get('message', '')}".strip(": ") for item in items if isinstance(item, dict)
                  for e in item.get("errors") or [] if isinstance(e, dict)]
        if errors:
            return "IRE: " + "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else ""), ""
    return "", ""


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _short_url(response: requests.Response) -> str:
    # The path only: no query string, which may be long, and never credentials.
    return requests.utils.urlparse(response.request.url).path if response.request else ""


def _read_whole_body(response: requests.Response) -> None:
    """Read the body in one go. requests reads it in 10 KB chunks, a Python
    loop that costs more CPU than parsing the JSON of a 1,000-row page."""
    raw = response.raw
    unread = getattr(response, "_content", None) is False and getattr(response, "_content_consumed", True) is False
    if unread and hasattr(raw, "read"):  # else (another requests, a mock) requests reads it as usual
        try:
            response._content = raw.read(decode_content=True) or b""
        except ProtocolError as exc:  # as requests itself turns them
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from None
        except ReadTimeoutError as exc:
            raise requests.exceptions.ConnectionError(exc) from None
        except Urllib3SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        response._content_consumed = True


def _table_answer_problem(parsed: Any) -> str:
    """What is wrong with a Table API answer's JSON, or "": an object whose ``result`` is a record (an
    object) or a list of them. Checked here, once, so that no reader meets a row that is not a record
    (and no such answer reads as a table with no rows)."""
    if type(parsed) is not dict:
        return f"JSON that is not an object ({type(parsed).__name__})"
    result = parsed.get("result")
    if type(result) is dict:
        return ""
    if type(result) is not list:
        return "no result" if result is None else f"a result that is not a list of records ({type(result).__name__})"
    if result and not set(map(type, result)) <= {dict}:
        return "a result whose rows are not all records"
    return ""


def validate_response(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """Raise the typed error for anything that is not a usable Table API answer."""
    _read_whole_body(response)
    status = response.status_code
    method = response.request.method if response.request else ""
    where = {"status": status, "method": method, "url": _short_url(response)}
    if 200 <= status < 300:
        if status == 204:
            return response
        if not response.content:
            raise ServiceNowBadResponse(
                "ServiceNow answered with no body (an empty 202 means the instance dropped a "
                "queued request)", **where
            )
        try:
            parsed = orjson.loads(response.content)
        except ValueError:  # orjson.JSONDecodeError is one
            kind = "an HTML page" if b"<html" in response.content[:2048].lower() else "something that is not JSON"
            raise ServiceNowBadResponse(
                f"ServiceNow answered with {kind}: the instance may be hibernating, upgrading "
                "or behind a proxy error page", **where
            ) from None
        if "/api/now/table/" in where["url"]:
            problem = _table_answer_problem(parsed)
            if problem:
                raise ServiceNowBadResponse(f"ServiceNow answered with {problem}, not the Table API's "
                                            "{\"result\": ...}: a proxy or a scripted endpoint in the way?", **where)
        # Parsed once: pysnow and the batch writer read it again through .json().
        response.json = lambda **_kwargs: parsed  # type: ignore[method-assign]
        return response
    message, detail = _error_body(response)
    if not message and b"request header is too large" in response.content[:4096].lower():
        message = ("Request header is too large: the request's URL and headers are longer than the instance's "
                   "web server takes")
    if not message and "json" not in response.headers.get("Content-Type", ""):
        message = "answer is not JSON (an HTML error page?)"
    if status == 401:
        raise ServiceNowAuthError(
            f"ServiceNow refused the credentials: {message or 'User Not Authenticated'}", detail=detail, **where
        )
    if status == 403:
        raise ServiceNowPermissionError(f"ServiceNow refused the request: {message}", detail=detail, **where)
    if status == 404:
        raise ServiceNowNotFound(f"ServiceNow: {message or 'No Record found'}", detail=detail, **where)
    if status in RETRY_STATUSES or status >= 500:
        raise ServiceNowUnavailable(
            f"ServiceNow unavailable: {message or response.reason}",
            retry_after=_retry_after(response), detail=detail, **where,
        )
    raise ServiceNowBadRequest(f"ServiceNow rejected the request: {message or response.reason}", detail=detail, **where)


def _tls_reason(exc: requests.exceptions.SSLError) -> str:
    """What the TLS layer said ("certificate verify failed: self-signed certificate in certificate chain")."""
    text = str(exc)
    start = text.find("certificate verify failed")
    return text[start:].split(" (_ssl")[0].rstrip("')\" ") if start >= 0 else type(exc).__name__


# what the socket layer says, as requests and urllib3 word it, for a host name that does not resolve
_NOT_RESOLVED = ("NameResolutionError", "Name or service not known", "nodename nor servname", "getaddrinfo failed",
                 "Temporary failure in name resolution", "No address associated with hostname")


def unreachable_reason(exc: requests.RequestException, url: str) -> str:
    """Why ``url``'s host could not be reached, for an operator: the host and port, and what went wrong
    (a name that does not resolve, a refused connection, no answer in time, a dropped connection), the
    exception's class where it is none of those. No more of the URL than the host and port."""
    parts = requests.utils.urlparse(url)
    where = f"{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")
    text = repr(exc)
    if any(sign in text for sign in _NOT_RESOLVED):
        return f"the host name {parts.hostname!r} was not found (DNS): check servicenow.instance_url"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return f"{where} refused the connection (nothing listens there?): check servicenow.instance_url"
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection to {where} in time (a firewall, a proxy needed, or the wrong address?)"
    if isinstance(exc, requests.ReadTimeout):
        return f"{where} did not answer in time (servicenow.timeout_seconds)"
    if "Connection reset" in text or "Connection aborted" in text or "RemoteDisconnected" in text:
        return f"{where} closed the connection before its answer ({type(exc).__name__})"
    return f"{type(exc).__name__} ({where})"


def _connection_failure(exc: requests.RequestException, method: str, url: str) -> ServiceNowError:
    path = requests.utils.urlparse(url).path
    if isinstance(exc, requests.exceptions.SSLError):  # not a failure that passes: no retry, and the fix
        return ServiceNowError(
            f"the instance's TLS certificate was not accepted: {_tls_reason(exc)}. If a TLS-inspecting proxy "
            "sits in between, set servicenow.ca_bundle to its CA certificate (PEM)", method=method, url=path)
    if isinstance(exc, requests.exceptions.ProxyError):
        return ServiceNowUnavailable("cannot reach ServiceNow through the proxy (HTTPS_PROXY): it refused or is out "
                                     "of reach", method=method, url=path)
    not_sent = isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError) and "NewConnectionError" in repr(exc)
    )
    if method == "POST" and not not_sent:
        return AmbiguousWriteError(f"connection lost during a create: {unreachable_reason(exc, url)}", method=method,
                                   url=path)
    return ServiceNowUnavailable(f"cannot reach ServiceNow: {unreachable_reason(exc, url)}", method=method, url=path)


class ServiceNowSession(requests.Session):
    """A ``requests.Session`` that validates every answer and retries with care."""

    def __init__(
        self,
        *,
        timeout: float = 60,
        max_attempts: int = 6,
        max_retry_seconds: float = 300,
        verify: bool | str = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_retry_seconds = max_retry_seconds
        self.verify = verify
        self._sleep = sleep
        self.retries = 0
        self.headers.update(
            {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": USER_AGENT}
        )
        self.hooks["response"].append(validate_response)

    def _backoff(self, attempt: int) -> float:
        return min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        method = method.upper()
        kwargs.setdefault("timeout", self.timeout)
        # Per request, so that REQUESTS_CA_BUNDLE in the environment cannot
        # override the configured servicenow.ca_bundle / verify_tls.
        kwargs.setdefault("verify", self.verify)
        deadline = time.monotonic() + self.max_retry_seconds
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            try:
                return super().request(method, url, **kwargs)
            except ServiceNowAuthError as exc:
                renew = getattr(self.auth, "invalidate", None)
                if renew is None or renewed:
                    raise
                # An OAuth token expired or was revoked: one new token, one retry.
                renewed = True
                renew(None)
                log.info("ServiceNow %s %s: %s; renewing the OAuth token", method, exc.url, exc.args[0])
                attempt -= 1
                continue
            except ServiceNowError as exc:
                error: ServiceNowError = exc
                if method == "POST" and exc.retriable and exc.status != 429:
                    # 502/503/504, an HTML page or an empty 202 on a create: it
                    # may have been applied. The caller checks before re-sending.
                    raise AmbiguousWriteError(str(exc.args[0]), status=exc.status, detail=exc.detail,
                                              method=exc.method, url=exc.url) from None
            except requests.RequestException as exc:
                error = _connection_failure(exc, method, url)
                if isinstance(error, AmbiguousWriteError):
                    raise error from None
            if not error.retriable or attempt >= self.max_attempts:
                raise error
            wait = getattr(error, "retry_after", None)
            wait = self._backoff(attempt) if wait is None else wait
            if time.monotonic() + wait > deadline:
                raise error
            self.retries += 1
            log.info("ServiceNow %s %s: %s; retry %d in %.1fs", method, error.url, error.args[0], attempt, wait)
            self._sleep(wait)
