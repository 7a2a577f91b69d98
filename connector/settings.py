"""Settings: one TOML file, overridden by ``CMDB_<SECTION>__<KEY>`` variables.

Validated once, here, at the border. Every problem becomes a ``ConfigError``
that names the file, the key and the fix, and never shows a secret's value.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import os
import re
import ssl
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .errors import ConfigError, did_you_mean, key_path
from .tomlfile import read_toml_file, toml_kind

ENV_PREFIX = "CMDB_"
DEFAULT_CONFIG_NAME = "config.toml"
CONFIG_ENV = "CMDB_CONFIG"
SECRET_KEYS = {("aws", "external_id"), ("servicenow", "password"), ("servicenow", "client_secret")}

ACCOUNT_ID = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")  # us-east-1, us-gov-west-1, eu-isoe-west-1
_EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AwsSettings(_Section):
    role_name: str = "CMDBReadRole"
    external_id: SecretStr
    session_name: str = Field("CMDBInventorySession", min_length=2, max_length=64)
    session_duration_seconds: int = Field(3600, ge=1800, le=43200)
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"], min_length=1)
    accounts: list[str] = Field(default_factory=list)
    exclude_accounts: list[str] = Field(default_factory=list)
    organizational_units: list[str] = Field(default_factory=list)
    organization_account_id: str = ""
    max_workers: int = Field(16, ge=1, le=256)
    max_workers_per_account: int = Field(4, ge=1, le=64)
    max_attempts: int = Field(5, ge=1, le=20)

    @field_validator("external_id")
    @classmethod
    def _external_id_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError(f"is empty. Set it with {ENV_PREFIX}AWS__EXTERNAL_ID")
        if not _EXTERNAL_ID.match(value.get_secret_value()):
            # Say what is wrong without repeating the value.
            raise ValueError(
                "must be 2 to 1224 characters of letters, digits and +=,.@:/-"
            )
        return value

    @field_validator("regions")
    @classmethod
    def _region_names(cls, value: list[str]) -> list[str]:
        if "all" in value and len(value) > 1:
            raise ValueError('"all" stands alone (every region enabled for each account), not beside region names')
        bad = [v for v in value if v != "all" and not _REGION.match(v)]
        if bad:
            raise ValueError(f"not region names: {bad}; a region is named like us-east-1 (or \"all\")")
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            raise ValueError(f"listed more than once: {twice}")
        return value

    @field_validator("accounts", "exclude_accounts")
    @classmethod
    def _account_ids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not ACCOUNT_ID.match(v)]
        if bad:
            raise ValueError(f"account ids are 12 digits, as strings; not {bad}")
        return value

    @field_validator("organization_account_id")
    @classmethod
    def _org_account(cls, value: str) -> str:
        if value and not ACCOUNT_ID.match(value):
            raise ValueError(f"an account id is 12 digits, as a string; not {value!r}")
        return value

    @field_validator("session_duration_seconds", mode="before")
    @classmethod
    def _duration_reason(cls, value: Any) -> Any:
        if isinstance(value, int) and 0 < value < 1800:
            raise ValueError(
                "must be at least 1800: botocore refreshes 15 minutes before expiry, "
                "so a shorter session would re-assume the role on almost every call"
            )
        return value


AUTH_NEEDS = {
    "basic": ("username", "password"),
    "oauth_password": ("username", "password", "client_id", "client_secret"),
    "oauth_client_credentials": ("client_id", "client_secret"),
}


class ServiceNowSettings(_Section):
    instance_url: str
    auth: Literal["basic", "oauth_password", "oauth_client_credentials"] = "basic"
    username: str = ""
    password: SecretStr = SecretStr("")
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    discovery_source: str = Field("AWS CMDB Connector", min_length=1)
    page_size: int = Field(1000, ge=1, le=10000)
    workers: int = Field(8, ge=1, le=64)
    timeout_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(6, ge=1, le=30)
    max_retry_seconds: float = Field(300, gt=0)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    # 0 or 1: one request per write; N > 1: up to N writes per Batch API request.
    batch_size: int = Field(0, ge=0, le=1000)
    # "table": every write through the Table API; "ire": CI creates, updates and revives through the
    # Identification and Reconciliation API (see connector/servicenow/ire.py)
    writer: Literal["table", "ire"] = "table"

    @field_validator("instance_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must start with https:// (or http:// for a local stand-in)")
        parts = urlsplit(value)
        if "@" in parts.netloc:  # user:password@host would carry the password into logs and reports
            raise ValueError("must not hold a user name or password (user:password@): set servicenow.username, "
                             f"and the password with {ENV_PREFIX}SERVICENOW__PASSWORD")
        if parts.query or parts.fragment or parts.path.endswith(".do") or re.match(r"/(now|\$)", parts.path):
            # the address a browser shows (.../now/nav/ui/..., nav_to.do?uri=...): every API call would miss
            raise ValueError(f"the instance's address only, as {parts.scheme}://{parts.netloc}: this is the address "
                             "of one of its pages (a path is only for a proxy that serves the instance under one)")
        host = parts.hostname or ""
        if value.startswith("http://") and not _loopback(host):
            raise ValueError(f"http:// would send the credentials to {host} in clear text: use https:// "
                             "(plain http is for a stand-in on this host only: localhost, 127.0.0.1, ::1)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _auth_complete(self) -> "ServiceNowSettings":
        missing = []
        for key in AUTH_NEEDS[self.auth]:
            value = getattr(self, key)
            if not (value.get_secret_value() if isinstance(value, SecretStr) else value):
                missing.append(key)
        if missing:
            how = ", ".join(f"{k} ({ENV_PREFIX}SERVICENOW__{k.upper()})" for k in missing)
            raise ValueError(f"auth = {self.auth!r} needs {how}")
        return self


class ReconcileSettings(_Section):
    mappings_dir: Path | None = None
    retire: bool = True
    max_retire_fraction: float = Field(0.25, ge=0, le=1)
    # write AWS tags to cmdb_key_value, for the classes whose mapping has [tags]
    tags: bool = False
    # stamp last_discovered on every CI written, and again on an unchanged CI once its stamp is older
    # than this many days (between half and all of it, spread by sys_id); 0 never stamps it
    last_discovered_days: float = Field(7, ge=0, le=3650)
    # a CI gone from AWS is retired only once it has been gone this long (hours, over the runs between;
    # kept in report.output_dir); 0 retires it in the first run that does not find it
    retire_after_hours: float = Field(0, ge=0, le=87600)
    # run --approved refuses a reviewed plan older than this many hours; 0 takes a plan of any age
    approval_max_age_hours: float = Field(72, ge=0, le=87600)


class ReportSettings(_Section):
    output_dir: Path = Path("reports")
    # each run's report-<run_id>.json/.html/.csv older than this is removed after a run; 0 keeps them all
    keep_days: int = Field(30, ge=0, le=36500)


_TOML_DATA: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("_TOML_DATA")


class _TomlData(PydanticBaseSettingsSource):
    """The already-parsed TOML file, the lowest-priority source."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused API
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _TOML_DATA.get({})


class _EnvWithSecretFiles(PydanticBaseSettingsSource):
    """The environment, where a secret may also come from a file: ``CMDB_SERVICENOW__PASSWORD_FILE``
    names the file that holds ``servicenow.password`` (systemd's ``LoadCredential``, a Kubernetes or
    Docker secret), so that the secret is in no process's environment. One trailing line break is
    dropped; an empty or unreadable file, or the variable and its ``_FILE`` both set, is a ConfigError
    naming the variable and the path, never the content."""

    def __init__(self, settings_cls, env: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field, field_name):  # pragma: no cover - unused API
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        try:
            data = self._env()
        except SettingsError as exc:  # a list's variable not in JSON: pydantic-settings' own error names no variable
            lines = _env_not_json()
            raise ConfigError("\n".join(["environment: invalid configuration", *lines]) if lines
                              else f"environment: {exc}") from None
        for section, key in sorted(SECRET_KEYS):
            values = data.get(section)
            if not isinstance(values, dict) or f"{key}_file" not in values:
                continue
            variable = _env_name((section, key))
            if key in values:
                raise ConfigError(f"{variable} and {variable}_FILE are both set: set one of them")
            values[key] = _read_secret_file(Path(values.pop(f"{key}_file")), f"{variable}_FILE")
        return data


def _read_secret_file(path: Path, variable: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{variable}: cannot read {path}: {reason}") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigError(f"{variable}: {path} is empty")
    mode = _mode_others_may_read(path)
    if mode:
        logging.getLogger(__name__).warning(
            "%s (from %s) may be read by other users of this host (mode %o): chmod 600 it", path, variable, mode)
    return secret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    aws: AwsSettings
    servicenow: ServiceNowSettings
    reconcile: ReconcileSettings = ReconcileSettings()
    report: ReportSettings = ReportSettings()
    # Where relative paths are resolved from: the config file's folder.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls,
        init_settings,
        env_settings,
        dotenv_settings,
        file_secret_settings,
    ):
        return (init_settings, _EnvWithSecretFiles(settings_cls, env_settings), _TomlData(settings_cls))

    def path(self, value: Path) -> Path:
        """A configured path, resolved against the config file's folder."""
        return value if value.is_absolute() else (self.base_dir / value)

    def mappings_folder(self) -> Path | None:
        """reconcile.mappings_dir, resolved; None for the built-in mappings."""
        folder = self.reconcile.mappings_dir
        return self.path(folder) if folder else None


def _loopback(host: str) -> bool:
    """Whether ``host`` is this host: localhost, or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_of_unchecked_tls(settings: Settings) -> None:
    """servicenow.verify_tls = false is logged as a warning on every command: the credentials then go to
    whoever answers, so it should be a moment's measure, not a setting left in place."""
    servicenow = settings.servicenow
    if servicenow.verify_tls or not servicenow.instance_url.startswith("https://"):
        return
    unused = " (servicenow.ca_bundle is then not used)" if servicenow.ca_bundle else ""
    logging.getLogger(__name__).warning(
        "servicenow.verify_tls = false: the certificate of %s is not checked, so whoever answers in its place "
        "gets the credentials%s; name your proxy's CA in servicenow.ca_bundle instead",
        urlsplit(servicenow.instance_url).hostname, unused)


def find_config(explicit: str | None) -> Path:
    """--config, else ./config.toml, else $CMDB_CONFIG."""
    if explicit:
        return _config_file(Path(explicit), "")
    local = Path(DEFAULT_CONFIG_NAME)
    if local.is_file():
        return local
    env = os.environ.get(CONFIG_ENV)
    if env:
        return _config_file(Path(env), f" (from ${CONFIG_ENV})")
    raise ConfigError(
        f"no config: pass --config PATH, or put {DEFAULT_CONFIG_NAME} in the current "
        f"folder, or set ${CONFIG_ENV}. config.example.toml lists every key."
    )


def _config_file(path: Path, source: str) -> Path:
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file{source}: name the file, as "
                          f"{path / DEFAULT_CONFIG_NAME}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found{source}")
    return path


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return read_toml_file(path)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_settings(path: Path | None, data: dict[str, Any] | None = None) -> Settings:
    """Read and validate settings from ``path`` (or ``data``) plus the environment."""
    if data is None:
        assert path is not None
        data = read_toml(path)
        _warn_of_secrets_others_may_read(path, data)
    source = str(path) if path else "built-in settings"
    base_dir = path.resolve().parent if path else Path.cwd()
    stray = _unknown_env_sections()
    mistyped = _toml_type_problems(data)
    token = _TOML_DATA.set(data)
    try:
        settings = Settings(base_dir=base_dir)
    except ValidationError as exc:
        raise ConfigError("\n".join([format_validation_error(source, exc, mistyped), *stray])) from None
    finally:
        _TOML_DATA.reset(token)
    if stray or mistyped:
        raise ConfigError("\n".join([f"{source}: invalid configuration", *mistyped.values(), *stray]))
    settings = _with_ca_bundle(settings, source)
    _warn_of_unchecked_tls(settings)
    return settings


def _with_ca_bundle(settings: Settings, source: str) -> Settings:
    """``servicenow.ca_bundle`` resolved against the config file's folder, as every configured path is (the
    client would have looked for a relative one in the working folder: under systemd, ``/``), and checked
    to hold PEM certificates, so that a wrong path is this error and not every request's TLS failure."""
    bundle = settings.servicenow.ca_bundle
    if bundle is None:
        return settings
    resolved = settings.path(bundle)
    if settings.servicenow.verify_tls:
        try:
            ssl.create_default_context(cafile=str(resolved))
        except OSError as exc:  # ssl.SSLError is one: a file with no PEM certificate in it
            reason = exc.strerror or str(exc)
            raise ConfigError(f"{source}: invalid configuration\n  [servicenow] ca_bundle: {resolved}: {reason}. "
                              "Fix: name the PEM file of the CA certificates to trust (a proxy's), relative to "
                              "the config file's folder or absolute") from None
    servicenow = settings.servicenow.model_copy(update={"ca_bundle": resolved})
    return settings.model_copy(update={"servicenow": servicenow})


def _warn_of_secrets_others_may_read(path: Path, data: dict[str, Any]) -> None:
    """A secret in a config file that other users of the host may read (its group or others have read
    permission) is logged as a warning, named by key, never by value."""
    held = [f"{section}.{key}" for section, key in sorted(SECRET_KEYS)
            if isinstance(data.get(section), dict) and data[section].get(key)]
    mode = _mode_others_may_read(path)
    if held and mode:
        logging.getLogger(__name__).warning(
            "%s holds %s and other users of this host may read it (mode %o): chmod 600 it, or set the secret "
            "in the environment instead (%s)", path, ", ".join(held), mode,
            ", ".join(_env_name(tuple(name.split("."))) for name in held))


def _mode_others_may_read(path: Path) -> int:
    """The file's permission bits, if its group or others may read it; 0 if not (or if it is not known)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return 0
    return mode if mode & 0o044 else 0


def _unknown_env_sections() -> list[str]:
    """A ``CMDB_<SECTION>__<KEY>`` variable whose section does not exist (``CMDB_SERVICENOWW__PASSWORD``):
    the environment is not checked key by key as the file is, so it would be ignored without a word."""
    lines = []
    for name in sorted(os.environ):
        if name.upper().startswith(ENV_PREFIX) and "__" in name:
            section = name[len(ENV_PREFIX):].split("__", 1)[0].lower()
            if section not in SECTIONS:
                lines.append(f"  {name}: there is no section [{section}]. Fix: correct the variable's name "
                             f"(CMDB_<SECTION>__<KEY>); the sections are {', '.join(sorted(SECTIONS))}")
    return lines


_TOML_KINDS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", SecretStr: "str", Path: "str"}
_KIND_WANTED = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a text in quotes",
                "list": "a list, as [\"a\", \"b\"]"}


def _annotation_kind(annotation: Any) -> str | None:
    """What TOML type a key's annotation takes: ``Path | None`` and a ``Literal`` of texts take a text."""
    if annotation in _TOML_KINDS:
        return _TOML_KINDS[annotation]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return "list"
    if origin is Literal and all(isinstance(arg, str) for arg in args):
        return "str"
    kinds = {_annotation_kind(arg) for arg in args if arg is not type(None)}
    return kinds.pop() if origin in (Union, UnionType) and len(kinds) == 1 else None


def _toml_fits(value: Any, kind: str) -> bool:
    if kind == "float":
        return type(value) in (int, float)
    return type(value) is {"bool": bool, "int": int, "str": str, "list": list}[kind]


def _toml_type_problem(loc: tuple[Any, ...], value: Any, kind: str) -> str:
    fix = "correct the value"
    if kind in ("int", "float") and isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
        fix = f"write it without the quotes: {loc[-1]} = {value.strip()}"
    elif kind == "str" and type(value) in (int, float):
        shown = "..." if tuple(loc[:2]) in SECRET_KEYS else value
        fix = f'put it in quotes: {key_path(loc[1:])} = "{shown}"' if len(loc) == 2 else f'put it in quotes: "{shown}"'
    elif kind == "list" and isinstance(value, str):
        fix = f'write it as a list: {loc[-1]} = ["{value}"]'
    elif kind == "bool" and value in (0, 1) and type(value) is int:
        fix = f"write {loc[-1]} = {'true' if value else 'false'}"
    return f"  {_key_name(loc)}: {_KIND_WANTED[kind]}, not {toml_kind(value)}. Fix: {fix}"


def _toml_type_problems(data: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    """The file's values of the wrong TOML type, by key. Validation on its own would let them through as the
    environment's texts are let through (``verify_tls = 0`` as false, ``max_retire_fraction = true`` as 1,
    ``"300"`` as 300): in a typed file, each is more likely a mistake than meant. A key its variable
    overrides is the variable's; unknown sections and keys are left to validation. A secret's value is
    never shown."""
    overridden = {name.upper() for name in os.environ}
    problems: dict[tuple[Any, ...], str] = {}
    for section, values in data.items():
        model = SECTIONS.get(section)
        if model is None or not isinstance(values, dict):
            continue
        for key, value in values.items():
            field = model.model_fields.get(key)
            kind = _annotation_kind(field.annotation) if field is not None else None
            if kind is None or _env_name((section, key)) in overridden:
                continue
            if not _toml_fits(value, kind):
                problems[(section, key)] = _toml_type_problem((section, key), value, kind)
            elif kind == "list":
                for index, item in enumerate(value):
                    if type(item) is not str:
                        problems[(section, key, index)] = _toml_type_problem((section, key, index), item, "str")
    return problems


def _env_not_json() -> list[str]:
    """The ``CMDB_...`` variables of list keys (and of whole sections) whose value is not JSON, each with its
    fix. The value is not shown (a section's would hold its secrets)."""
    expected = {ENV_PREFIX + section.upper(): "a JSON object" for section in SECTIONS}
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            origin = get_origin(field.annotation)
            if origin in (list, dict, set, tuple):
                expected[_env_name((section, key))] = "a JSON object" if origin is dict else "a JSON list"
    lines = []
    for name in sorted(os.environ):
        kind = expected.get(name.upper())
        if kind is None:
            continue
        try:
            json.loads(os.environ[name])
        except ValueError:
            regions = name.upper().endswith("__REGIONS")
            example = "'[\"us-east-1\", \"eu-west-1\"]'" if regions else "'[\"first\", \"second\"]'"
            if kind == "a JSON list":
                fix = f"write it as JSON: {name}={example}"
            elif name.upper().removeprefix(ENV_PREFIX).lower() in SECTIONS:
                fix = f"set its keys one by one, as {name}__<KEY>"
            else:
                fix = f"write it as JSON: {name}='{{\"key\": \"value\"}}'"
            lines.append(f"  {name}: is not {kind}. Fix: {fix}")
    return lines


def _key_name(loc: tuple[Any, ...]) -> str:
    """``[aws] accounts[0]``: the section, then the key (``key_path``, as mapping problems write it)."""
    if not loc:
        return "(top level)"
    rest = key_path(loc[1:])
    return f"[{loc[0]}] {rest}" if rest else str(loc[0])


def _env_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ENV_PREFIX + "__".join(p.upper() for p in parts[:2])


SECTIONS: dict[str, type[BaseModel]] = {
    "aws": AwsSettings,
    "servicenow": ServiceNowSettings,
    "reconcile": ReconcileSettings,
    "report": ReportSettings,
}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    if len(loc) == 1:
        return sorted(SECTIONS)
    model = SECTIONS.get(str(loc[0]))
    return sorted(model.model_fields) if model else []


def _nearest_key(loc: tuple[Any, ...], known: list[str]) -> tuple[str, str]:
    """What an unknown key most likely is, and the fix: a key of another section (``regions`` at the top,
    ``workers`` in [reconcile]), to move there, or a near spelling of one of ``known``, the keys here."""
    name = str(loc[-1])
    homes = " or ".join(f"[{section}]" for section, model in sorted(SECTIONS.items())
                        if name in model.model_fields and section != str(loc[0]))
    if homes:
        return f" here ({name} is a key of {homes})", f"move it to {homes}"
    return did_you_mean(name, known), "remove it or correct the spelling"


def _missing(loc: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The keys to set for a missing one: a whole section missing is its required keys."""
    model = SECTIONS.get(str(loc[0])) if len(loc) == 1 else None
    required = [name for name, info in model.model_fields.items() if info.is_required()] if model else []
    return [(loc[0], name) for name in required] or [loc]


def format_validation_error(source: str, exc: ValidationError,
                            mistyped: dict[tuple[Any, ...], str] | None = None) -> str:
    """One line per problem: ``mistyped``'s (the file's values of the wrong TOML type), then pydantic's on
    the other keys."""
    lines = [f"{source}: invalid configuration", *(mistyped or {}).values()]
    told = {loc[:2] for loc in mistyped or {}}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if loc[:2] in told:
            continue
        key = _key_name(loc)
        env = _env_name(loc)
        secret = tuple(str(p) for p in loc[:2]) in SECRET_KEYS
        kind = err["type"]
        if kind == "extra_forbidden":
            known = _known_keys(loc)
            where = f" from {env}" if len(loc) == 2 and env in os.environ else ""
            hint, fix = _nearest_key(loc, known)
            lines.append(f"  {key}{where}: unknown key{hint}. Fix: {fix}; known keys here: {', '.join(known)}")
        elif kind == "missing":
            lines.extend(f"  {_key_name(at)}: required key is missing. Fix: set it in the file or with {_env_name(at)}"
                         for at in _missing(loc))
        else:
            message = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            # Only a leaf's own value is shown: a section's value holds its secrets, as a URL with
            # user:password@ does.
            shown = "" if secret or isinstance(value, (dict, list)) or "@" in str(value) else f" (got {value!r})"
            where = f" from {env}" if env in os.environ else ""
            lines.append(f"  {key}{where}: {message}{shown}. Fix: correct the value")
    return "\n".join(lines)
