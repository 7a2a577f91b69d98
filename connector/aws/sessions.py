"""sessions: one refreshable assumed-role session per account.

AssumeRole is called once when an account's session is opened, and again only
when botocore's refresh window (15 minutes before expiry) is reached. Clients
are cached per (account, region, service) and shared by the worker threads:
botocore clients are thread-safe once created, sessions are not.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import boto3
import botocore.client
import botocore.session
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from ..arn import partition_for
from ..models import DENIED, ERROR, OK, THROTTLED

log = logging.getLogger(__name__)

DENIED_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
    "InvalidClientTokenId",
    "ExpiredToken",
    "RegionDisabledException",
}
THROTTLED_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
}


def classify_error(exc: Exception) -> tuple[str, str]:
    """(status, reason) for an AWS failure. The reason never holds a secret."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", "")
        op = getattr(exc, "operation_name", "")
        reason = f"{code} on {op}: {message}".strip().rstrip(":")
        if code in DENIED_CODES:
            return DENIED, reason
        if code in THROTTLED_CODES:
            return THROTTLED, reason
        return ERROR, reason
    if isinstance(exc, BotoCoreError):
        return ERROR, f"{type(exc).__name__}: {exc}"
    return ERROR, f"{type(exc).__name__}: {exc}"


@dataclass
class RoleSettings:
    role_name: str
    external_id: str
    session_name: str
    duration_seconds: int
    max_attempts: int = 5
    max_pool_connections: int = 10


# -- one client class and service model per service for every member session ------
#
# botocore builds a new client class and a new service model for every client
# (about 20 ms of CPU for ec2, whose 600 operations are walked each time). A run
# makes one client per account, region and service: thousands in a large
# Organization, all of the same few services. Member sessions are made
# identically, so they share one class and one model per service. Other
# sessions are left alone: the cache is keyed on a marker that only member
# sessions' event emitters carry.
_SHARED: dict[tuple[str, str, str | None], Any] = {}
_SHARED_LOCK = threading.Lock()
_MARKER = "cmdb_connector_shared_classes"


def _shared(kind: str, key: tuple, build: Callable[[], Any]) -> Any:
    with _SHARED_LOCK:
        found = _SHARED.get((kind, *key))
    if found is None:
        found = build()
        with _SHARED_LOCK:
            found = _SHARED.setdefault((kind, *key), found)
    return found


def _install_client_caches() -> None:
    creator = botocore.client.ClientCreator
    make_class = getattr(creator, "_create_client_class", None)
    load_model = getattr(creator, "_load_service_model", None)
    if make_class is None or load_model is None or getattr(make_class, "_cmdb_cached", False):
        return

    def create_client_class(self, service_name, service_model):
        if not getattr(self._event_emitter, _MARKER, False):
            return make_class(self, service_name, service_model)
        return _shared("class", (service_name, service_model.api_version),
                       lambda: make_class(self, service_name, service_model))

    def load_service_model(self, service_name, api_version=None):
        if not getattr(self._event_emitter, _MARKER, False):
            return load_model(self, service_name, api_version)
        return _shared("model", (service_name, api_version), lambda: load_model(self, service_name, api_version))

    create_client_class._cmdb_cached = True  # type: ignore[attr-defined]
    creator._create_client_class = create_client_class
    creator._load_service_model = load_service_model


_install_client_caches()


def client_config(max_attempts: int, pool: int) -> Config:
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=pool,
        user_agent_extra="cmdb-connector",
    )


def assumed_session(
    base: boto3.Session,
    account_id: str,
    role: RoleSettings,
    sts_region: str,
) -> botocore.session.Session:
    """A session whose credentials come from AssumeRole and refresh themselves."""
    source = base._session  # the botocore session behind boto3's
    role_arn = f"arn:{partition_for(sts_region)}:iam::{account_id}:role/{role.role_name}"
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=functools.partial(
            source.create_client,
            region_name=sts_region,
            config=client_config(role.max_attempts, 2),
        ),
        source_credentials=source.get_credentials(),
        role_arn=role_arn,
        extra_args={
            "RoleSessionName": role.session_name,
            "ExternalId": role.external_id,
            "DurationSeconds": role.duration_seconds,
        },
    )
    credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials
    )
    member = botocore.session.Session()
    # Share the loaded service models: loading ec2's alone takes ~15 ms of CPU,
    # and a session per account would load it again.
    # (A boto3.Session around it would also grow the shared loader's search
    # path once per account: plain botocore sessions are all the connector needs.)
    member.register_component("data_loader", source.get_component("data_loader"))
    setattr(member.get_component("event_emitter"), _MARKER, True)
    member._credentials = credentials
    return member


@dataclass
class AccountSession:
    account_id: str
    session: botocore.session.Session
    _clients: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, service: str, region: str, config: Config):
        key = (service, region)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                found = self.session.create_client(service, region_name=region, config=config)
                self._clients[key] = found
            return found


class SessionPool:
    """Opens and keeps the assumed-role session of every target account."""

    def __init__(self, base: boto3.Session, role: RoleSettings, sts_region: str):
        self._base = base
        self._role = role
        self._sts_region = sts_region
        self.default_region = sts_region
        self._sessions: dict[str, AccountSession] = {}
        self._lock = threading.Lock()
        self.config = client_config(role.max_attempts, role.max_pool_connections)

    def open(self, account_id: str) -> tuple[str, str | None]:
        """Assume the role now, so that a refusal is known before collection.

        Returns (status, reason): ("ok", None), or ("denied"|"error", why).
        An account already open is not assumed again.
        """
        with self._lock:
            if account_id in self._sessions:
                return OK, None
        session = assumed_session(self._base, account_id, self._role, self._sts_region)
        try:
            session.get_credentials().get_frozen_credentials()
        except Exception as exc:  # noqa: BLE001 - every failure is recorded per account
            status, reason = classify_error(exc)
            log.warning("account %s: cannot assume %s: %s", account_id, self._role.role_name, reason,
                        extra={"account": account_id})
            return status, reason
        with self._lock:
            self._sessions[account_id] = AccountSession(account_id, session)
        return OK, None

    def warm(self, services: set[str]) -> None:
        """Load each service's model once, here, before threads fan out.

        botocore's loader cache has no lock: sixteen threads making their first
        clients at once would each load and parse the same models (and list
        every service's folder) in parallel, several seconds of wasted CPU.
        """
        source = self._base._session
        for service in sorted(services):
            source.create_client(service, region_name=self.default_region, config=self.config,
                                 aws_access_key_id="warm", aws_secret_access_key="warm")

    def get(self, account_id: str) -> AccountSession:
        return self._sessions[account_id]

    def client(self, account_id: str, service: str, region: str):
        return self._sessions[account_id].client(service, region, self.config)
