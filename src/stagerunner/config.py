"""Settings from STAGERUNNER_* environment variables, validated once at boot.

No other module reads os.environ. A bad value or an unknown STAGERUNNER_* variable
raises ConfigError naming the variable, the value and (for unknown names) the
closest known name.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stagerunner import cpus, stageserver
from stagerunner.errors import ConfigError
from stagerunner.logs import redact

PREFIX = "STAGERUNNER_"
# Four consumers per usable CPU (affinity and cgroup quota: see cpus.py): a consumer spends
# most of a no-op job forking and waiting, and I/O-bound jobs wait on the network; more
# than that only adds RSS (see README).
CONSUMERS_PER_CPU = 4
CONSUMERS_MIN, CONSUMERS_MAX = 1, 512
JOB_TIMEOUT_DEFAULT = 1.0
MAX_JOB_TIMEOUT_DEFAULT = 30.0
POLL_INTERVAL_DEFAULT = 2.0
HEARTBEAT_INTERVAL_DEFAULT = 1.0
NODE_EXPIRY_DEFAULT = 3.0
MAX_RESTARTS_DEFAULT = 10
RESTART_WINDOW_DEFAULT = 10.0
RESULT_MAX_BYTES_DEFAULT = 1 << 20
PREFETCH_DEFAULT = 8
PREFETCH_REUSE_DEFAULT = 32
WEB_HOST_DEFAULT = "127.0.0.1"
WEB_PORT_DEFAULT = 8089
CENTURY_S = 100 * 365 * 86400.0
WEB_SECRET_MIN_LENGTH = 16  # a token or password guessed over the network must not be short
# Variables that belong to the test suite, not to the runner.
NOT_SETTINGS = ("STAGERUNNER_TEST_",)
def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "stagerunner" / "pgdata"


def derived_consumers(cpus: int) -> tuple[int, int]:
    """(the default consumer count for `cpus` usable CPUs, clamped into range; the value
    before clamping). A default the user never set must never fail validation."""
    raw = CONSUMERS_PER_CPU * cpus
    return max(CONSUMERS_MIN, min(CONSUMERS_MAX, raw)), raw


def _default_consumers() -> int:
    return derived_consumers(cpus.usable_cpus())[0]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of a node. Build it once in __main__ and pass it down."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid")

    database_url: SecretStr | None = None
    data_dir: Path = Field(default_factory=_default_data_dir)
    consumers: int = Field(default_factory=_default_consumers, ge=CONSUMERS_MIN, le=CONSUMERS_MAX)
    queues: Annotated[dict[str, int | None], NoDecode] = Field(default_factory=dict)
    job_timeout: float = Field(default=JOB_TIMEOUT_DEFAULT, gt=0, le=86400)
    max_job_timeout: float = Field(default=MAX_JOB_TIMEOUT_DEFAULT, gt=0, le=86400)
    task_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100)
    poll_interval: float = Field(default=POLL_INTERVAL_DEFAULT, gt=0, le=3600)
    heartbeat_interval: float = Field(default=HEARTBEAT_INTERVAL_DEFAULT, gt=0, le=60)
    node_expiry: float = Field(default=NODE_EXPIRY_DEFAULT, gt=0, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    child_reuse: int = Field(default=1, ge=1, le=1_000_000)
    prefetch: int | None = Field(default=None, ge=0, le=1000)
    job_memory_mb: int | None = Field(default=None, ge=16)
    result_max_bytes: int = Field(default=RESULT_MAX_BYTES_DEFAULT, ge=1024)
    max_restarts: int = Field(default=MAX_RESTARTS_DEFAULT, ge=0)
    restart_window: float = Field(default=RESTART_WINDOW_DEFAULT, gt=0)
    process_library: Literal["multiprocess", "multiprocessing"] = "multiprocessing"
    # seconds (0: keep forever); at most a century, which the database's dates can hold
    retention: float = Field(default=7 * 86400, ge=0, le=CENTURY_S)
    failed_retention: float = Field(default=30 * 86400, ge=0, le=CENTURY_S)  # error / timeout
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = Field(default="127.0.0.1", min_length=1)  # empty would bind 0.0.0.0
    # Through PgBouncer (see README, Deploying): "transaction" sends no startup parameter and
    # keeps no session state; LISTEN then needs a direct connection, else the node polls.
    pool_mode: Literal["session", "transaction"] = "session"
    listen_database_url: SecretStr | None = None
    fault: str = ""  # test-only: "stage:point" makes that stage SIGKILL itself there
    # The dashboard (python -m stagerunner web); see stagerunner/web/guard.py for the rules.
    web_host: str = Field(default=WEB_HOST_DEFAULT, min_length=1)
    web_port: int = Field(default=WEB_PORT_DEFAULT, ge=1, le=65535)
    web_token: SecretStr | None = Field(default=None, min_length=WEB_SECRET_MIN_LENGTH)
    web_user: str | None = Field(default=None, min_length=1)
    web_password: SecretStr | None = Field(default=None, min_length=WEB_SECRET_MIN_LENGTH)
    web_readonly: bool = False

    @field_validator("log_level", "log_format", "process_library", "pool_mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("data_dir", "metrics_host", "web_host", mode="before")
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        # an empty data directory is the working directory, an empty host every interface
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty")
        return value.strip() if isinstance(value, str) else value

    @field_validator("retention", "failed_retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("task_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        modules = _split(value)
        for name in modules or []:
            if not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"{name!r} is not a dotted module name")
        return modules

    @field_validator("queues", mode="before")
    @classmethod
    def _queues(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        queues: dict[str, int | None] = {}
        for part in _split(value):
            name, _, count = part.partition("=")
            if not name.strip():
                raise ValueError(f"{part!r} has no queue name (expected name=count)")
            if count and not count.strip().isdigit():
                raise ValueError(f"{part!r}: the consumer count must be a whole number")
            queues[name.strip()] = int(count) if count else None
        return queues

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.job_timeout > self.max_job_timeout:
            raise ValueError(
                f"STAGERUNNER_JOB_TIMEOUT={self.job_timeout} is above "
                f"STAGERUNNER_MAX_JOB_TIMEOUT={self.max_job_timeout}"
            )
        if self.node_expiry <= self.heartbeat_interval:
            raise ValueError(f"STAGERUNNER_NODE_EXPIRY={self.node_expiry:g} must be longer than "
                             f"STAGERUNNER_HEARTBEAT_INTERVAL={self.heartbeat_interval:g}")
        empty = [f"{q}={n}" for q, n in self.queues.items() if n is not None and n < 1]
        if empty:
            raise ValueError(f"STAGERUNNER_QUEUES: every queue needs at least 1 consumer, "
                             f"not {', '.join(empty)}")
        if self.web_user is not None and self.web_password is None:
            raise ValueError(f"STAGERUNNER_WEB_USER={self.web_user!r} needs "
                             "STAGERUNNER_WEB_PASSWORD as well")
        if self.web_password is not None and self.web_user is None:
            raise ValueError("STAGERUNNER_WEB_PASSWORD needs STAGERUNNER_WEB_USER as well")
        return self

    def window(self) -> int:
        """Tasks a consumer holds at once: the one it runs plus those prefetched. By default
        8 prefetched for fresh children and 32 with child reuse: the producer claims and
        writes outcomes in batches about half the node's window in size, and a claim costs
        about as much for one row as for eight (bin/bench; the README's performance
        section). A consumer hands its prefetched tasks back from behind a long job
        (``consumer.RETURN_AFTER_S``), so prefetch never makes a task wait behind one."""
        if self.prefetch is not None:
            return 1 + self.prefetch
        return 1 + (PREFETCH_DEFAULT if self.child_reuse == 1 else PREFETCH_REUSE_DEFAULT)

    def queue_consumers(self) -> dict[str, int]:
        """Consumers per queue this node serves."""
        if not self.queues:
            return {"default": self.consumers}
        # "default,mail=2": a queue without a count gets STAGERUNNER_CONSUMERS
        return {queue: n or self.consumers for queue, n in self.queues.items()}

    def dsn(self) -> str | None:
        """The database to use, or None for the embedded server.

        Order: STAGERUNNER_DATABASE_URL, then DATABASE_URL, then libpq's own PG*
        variables (PGHOST, PGDATABASE or PGSERVICE set), else None.
        """
        if self.database_url is not None:
            return normalize_dsn(self.database_url.get_secret_value(), "STAGERUNNER_DATABASE_URL")
        if os.environ.get("DATABASE_URL"):
            return normalize_dsn(os.environ["DATABASE_URL"], "DATABASE_URL")
        if any(os.environ.get(v) for v in ("PGHOST", "PGDATABASE", "PGSERVICE")):
            return ""  # an empty conninfo makes libpq read PG* itself
        return None

    @property
    def pooled(self) -> bool:
        """The DSN is a transaction-pooling PgBouncer (see ``store.connect``)."""
        return self.pool_mode == "transaction"

    def listen_dsn(self) -> str | None:
        """A direct connection for LISTEN (STAGERUNNER_LISTEN_DATABASE_URL), if set."""
        if self.listen_database_url is None:
            return None
        return normalize_dsn(self.listen_database_url.get_secret_value(),
                             "STAGERUNNER_LISTEN_DATABASE_URL")

    def job_environment(self) -> dict[str, str]:
        """The environment a job child runs with (``stageserver.job_environment``)."""
        return stageserver.job_environment()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '7d', '1w' -> seconds."""
    value = str(text).strip().lower()
    unit = _UNITS.get(value[-1:], None)
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 15m, 2h, 7d)") from None
    if seconds < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds


def normalize_dsn(dsn: str, variable: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+psycopg://) that psycopg rejects, and refuse
    a DSN libpq cannot parse, saying why without ever showing its password."""
    scheme, sep, rest = dsn.partition("://")
    if sep and "+" in scheme:
        scheme = scheme.split("+", 1)[0]
    if sep and scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{variable}: unsupported URL scheme {scheme!r} (expected postgresql://)")
    normalized = f"{scheme}{sep}{rest}" if sep else dsn
    from psycopg.conninfo import conninfo_to_dict  # pydantic is loaded already; so is this

    hint = (" (in a URL, percent-encode the password: '%' as %25, a space as %20, '@' as "
            "%40, '/' as %2F)" if sep else "")
    try:
        info = conninfo_to_dict(normalized)
    except Exception:
        raise ConfigError(f"{variable}={_masked(normalized)!r} is not a valid PostgreSQL "
                          f"URL or key=value string{hint}") from None
    # libpq parses any port text and fails only when it connects: at boot instead. The
    # port is not shown: a '/' in a URL's password makes a piece of it the "port".
    ports = str(info.get("port") or "").split(",")  # one per host, empty for the default
    if not all(p == "" or (p.isdigit() and 0 < int(p) < 65536) for p in ports):
        raise ConfigError(f"{variable}={_masked(normalized)!r}: its port is not a number from "
                          f"1 to 65535{hint}")
    return normalized


def _masked(dsn: str) -> str:
    """A DSN to show: in a URL everything between the user name and the last '@' (the
    password, whatever characters it holds), in key=value form the password value."""
    scheme, sep, rest = dsn.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return redact(dsn)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def field_env_names() -> dict[str, str]:
    return {PREFIX + name.upper(): name for name in Settings.model_fields}


def unknown_variables(environ: dict[str, str]) -> list[str]:
    known = field_env_names()
    return sorted(
        k for k in environ
        if k.startswith(PREFIX) and k not in known and not k.startswith(NOT_SETTINGS)
    )


def load(environ: dict[str, str] | None = None, *, check_dsn: bool = True,
         **overrides: Any) -> Settings:
    """Settings from the environment (plus overrides), or ConfigError saying what is wrong.
    `check_dsn=False` leaves the DSN's check (and psycopg's import, ~0.1 s) to the first
    ``dsn()`` call: a node launches its consumers first (``cli.cmd_run``)."""
    env = dict(os.environ if environ is None else environ)
    for name in unknown_variables(env):
        close = difflib.get_close_matches(name, field_env_names(), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        shown = _shown(close[0] if close else name, env[name])  # a misspelt secret is secret
        raise ConfigError(f"unknown setting {name}={shown}{hint}")
    values = {field: env[var] for var, field in field_env_names().items() if var in env}
    values.update(overrides)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env)) from None
    if check_dsn:
        settings.dsn()  # a DSN libpq cannot parse fails here, with its password masked
    return settings


def _shown(variable: str, value: str) -> str:
    secret = any(word in variable for word in ("DATABASE_URL", "TOKEN", "PASSWORD"))
    return "'***'" if secret else repr(value)


def _describe(exc: ValidationError, env: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        variable = PREFIX + field.upper() if field else "settings"
        value = env.get(variable)
        shown = f"={_shown(variable, value)}" if value is not None else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(message if variable == "settings" else f"{variable}{shown}: {message}")
    return "invalid configuration: " + "; ".join(lines)
