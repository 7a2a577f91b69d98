"""Authentication: basic, or OAuth bearer tokens from ``/oauth_token.do``.

One token provider is shared by every worker session (each session still has
its own cookie). A token is renewed a minute before it expires, with the
refresh token when there is one, and at once when ServiceNow answers 401.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import requests
from requests.auth import AuthBase

from ..errors import ServiceNowAuthError, ServiceNowUnavailable
from ..settings import ServiceNowSettings
from .transport import unreachable_reason

log = logging.getLogger(__name__)
EARLY_RENEWAL_SECONDS = 60


class OAuthToken(AuthBase):
    def __init__(
        self,
        token_url: str,
        form: dict[str, str],
        *,
        verify: bool | str = True,
        timeout: float = 60,
        clock: Callable[[], float] = time.time,
    ):
        self._url = token_url
        self._form = form  # grant_type and credentials; never logged
        self._verify = verify
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0
        self.fetches = 0

    def __repr__(self) -> str:
        return f"OAuthToken({self._url!r}, grant_type={self._form.get('grant_type')!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def token(self) -> str:
        with self._lock:
            if self._access is None or self._clock() >= self._expires_at - EARLY_RENEWAL_SECONDS:
                self._renew()
            assert self._access is not None
            return self._access

    def invalidate(self, refused: str | None) -> None:
        """ServiceNow refused ``refused``: the next request gets a new token."""
        with self._lock:
            if refused is None or refused == self._access:
                self._access = None

    def _renew(self) -> None:
        if self._refresh:
            try:
                self._fetch({"grant_type": "refresh_token", "refresh_token": self._refresh,
                             "client_id": self._form["client_id"], "client_secret": self._form["client_secret"]})
                return
            except ServiceNowAuthError:
                log.info("OAuth refresh token refused; asking for a new token")
        self._fetch(self._form)

    def _fetch(self, form: dict[str, str]) -> None:
        try:
            response = requests.post(self._url, data=form, headers={"Accept": "application/json"},
                                     verify=self._verify, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ServiceNowUnavailable(
                f"cannot reach ServiceNow for an OAuth token: {unreachable_reason(exc, self._url)}",
                method="POST", url="/oauth_token.do") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        grant = form.get("grant_type")
        if response.status_code != 200:
            reason = body.get("error_description") if isinstance(body.get("error_description"), str) else ""
            raise ServiceNowAuthError(
                f"ServiceNow refused the OAuth {grant} grant: {reason or response.reason}. "
                "Check servicenow.client_id and the secrets", status=response.status_code,
                method="POST", url="/oauth_token.do",
            )
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            # a single sign-on page or a proxy's answers with 200 too: not a token, and no traceback
            kind = "an HTML page" if b"<html" in response.content[:2048].lower() else "an answer without access_token"
            raise ServiceNowAuthError(
                f"ServiceNow answered the OAuth {grant} grant with {kind}: is {self._url} behind a single sign-on "
                "page or a proxy? Check servicenow.instance_url", status=response.status_code,
                method="POST", url="/oauth_token.do",
            )
        self._access = access
        refresh = body.get("refresh_token")
        self._refresh = refresh if isinstance(refresh, str) and refresh else self._refresh
        self._expires_at = self._clock() + _seconds(body.get("expires_in"))
        self.fetches += 1


def _seconds(expires_in: object) -> float:
    """A token's ``expires_in`` (a number, or its text); 1800 (ServiceNow's default) if it is neither."""
    try:
        seconds = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1800.0
    return seconds if seconds > 0 else 1800.0


def make_auth(settings: ServiceNowSettings, verify: bool | str) -> AuthBase | tuple[str, str]:
    """What a session authenticates with, by ``servicenow.auth``."""
    if settings.auth == "basic":
        return (settings.username, settings.password.get_secret_value())
    form = {
        "client_id": settings.client_id,
        "client_secret": settings.client_secret.get_secret_value(),
    }
    if settings.auth == "oauth_password":
        form.update(grant_type="password", username=settings.username,
                    password=settings.password.get_secret_value())
    else:
        form.update(grant_type="client_credentials")
    return OAuthToken(f"{settings.instance_url}/oauth_token.do", form, verify=verify, timeout=settings.timeout_seconds)
