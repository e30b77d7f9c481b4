"""Typed settings, read from the environment once per deployable.

Every deployable declares one :class:`pydantic_settings.BaseSettings` subclass built from the
sections here. Variables are ``SAFEHUB_*`` (nested sections use ``__``, e.g.
``SAFEHUB_KAFKA__FETCH_WAIT_MAX_MS``); the Kafka bootstrap list also honours the conventional
``KAFKA_BOOTSTRAP_SERVERS``. Secrets are :class:`pydantic.SecretStr`: they print masked.
A wrong value fails at start with :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from safehub.kernel.errors import ConfigError

ENV_PREFIX = "SAFEHUB_"
NESTED_DELIMITER = "__"


class LogFormat(StrEnum):
    """How log lines are rendered."""

    JSON = "json"
    CONSOLE = "console"


class KafkaSettings(BaseModel):
    """Connection and tuning for the Kafka-protocol broker."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port list; unset means the embedded broker (safehub up).",
    )
    security_protocol: str = Field(
        default="PLAINTEXT", pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(default=None, description="CA bundle for SSL listeners")
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    replication_factor: int = Field(default=1, ge=1, le=5)
    session_timeout_ms: int = Field(default=6000, ge=1000, le=300_000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100, le=60_000)
    fetch_wait_max_ms: int = Field(default=50, ge=1, le=5000)
    linger_ms: int = Field(default=0, ge=0, le=1000)
    delivery_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_message_bytes: int = Field(default=1_048_576, ge=1024, le=16 * 1_048_576)

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        if not self.bootstrap_servers:
            raise ConfigError(
                "KAFKA_BOOTSTRAP_SERVERS (or SAFEHUB_KAFKA__BOOTSTRAP_SERVERS) is not set "
                "and no embedded broker was started"
            )
        config: dict[str, Any] = {
            # librdkafka's own log lines go through our structured logging, not stderr.
            "logger": logging.getLogger("librdkafka"),
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config


class LogSettings(BaseModel):
    """Structured logging."""

    level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    format: LogFormat = LogFormat.CONSOLE


class TracingSettings(BaseModel):
    """Where spans go besides OTLP (which the standard ``OTEL_*`` variables configure)."""

    to_timeline: bool = Field(
        default=True, description="publish finished spans to the spans topic for the timeline"
    )
    export_delay_ms: int = Field(
        default=200, ge=10, le=60_000, description="how long spans are batched before export"
    )


class ListenSettings(BaseModel):
    """Where one server listens: every server (gRPC, HTTP) of every deployable takes this.

    A section keeps its own variable names for these and hands the server one of these.
    """

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=0, ge=0, le=65535, description="0: pick a free port")
    port_file: Path | None = Field(
        default=None, description="write the bound port here once listening (for port 0)"
    )

    @property
    def address(self) -> str:
        """``host:port`` as given (port 0 until bound)."""
        return f"{self.host}:{self.port}"


def directory_ready_field(default: float = 10.0) -> Any:
    """The ``directory_ready_s`` field of every section whose deployable follows the live
    directory (:func:`safehub.kernel.views.follow_directory`)."""
    return Field(
        default=default,
        ge=0,
        le=600,
        description="how long start waits for the live directory's topics to be read to "
        "their end; then it serves the seed file (and what it read) and keeps following",
    )


class TlsFileSettings(BaseModel):
    """The one TLS-files setting: a section that serves or dials mTLS extends this.

    Its variables are ``SAFEHUB_<SECTION>__TLS_CERT_FILE``, ``__TLS_KEY_FILE`` and
    ``__TLS_CA_FILE``; :func:`safehub.kernel.tls.tls_files` checks them, naming the variables.
    """

    tls_cert_file: Path | None = Field(default=None, description="own certificate (PEM)")
    tls_key_file: Path | None = Field(default=None, description="own private key (PEM)")
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle trusted for the peers' certificates (PEM)"
    )


class HubSettings(BaseSettings):
    """Settings every deployable shares; services extend this class with their own section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="ignore",
        validate_default=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    service_name: str = Field(default="safehub", pattern=r"^[a-z0-9_.-]+$")


SettingsT = TypeVar("SettingsT", bound=HubSettings)


def _variable_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + NESTED_DELIMITER.join(str(part).upper() for part in loc)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read ``cls`` from the environment, failing with the offending variable's name."""
    try:
        settings = cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable_name(err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap and not settings.kafka.bootstrap_servers and "kafka" not in overrides:
        settings.kafka.bootstrap_servers = bootstrap
    return settings
