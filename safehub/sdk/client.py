"""The client side of SafeHub's connector protocol: the SDK a vendor connector is written against.

A vendor system (door access control, PA / intercom, signage) keeps the gateway's
``ConnectorService.Attach`` stream (protos/safehub/connector/v1/connector.proto) open over mTLS.
:class:`ConnectorSession` speaks the protocol: it dials with exponential backoff (re-reading the
gateway's port file on every attempt), says Hello for its schools and capabilities, feeds an
outbox queue into the request stream, answers Pings, hands each command to a hook at most once
per command_id (the hub redelivers after a reconnect), reconnects when the stream ends and stops
cleanly. A vendor subclasses it, declares its capabilities and overrides the hooks of the
commands it executes; its settings section extends :class:`ConnectorClientConfig`::

    class Doors(ConnectorSession):
        def capabilities(self) -> list[connector_pb2.Capability.ValueType]:
            return [connector_pb2.CAPABILITY_DOOR_LOCK_CONTROL]

        def on_lock_command(self, command: connector_pb2.LockCommand) -> None:
            self.send_result(command.command_id, connector_pb2.COMMAND_OUTCOME_ACCEPTED)
            ...
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field

from safehub.gen.safehub.common.v1 import door_pb2, place_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.errors import ConfigError
from safehub.kernel.runtime import Runtime
from safehub.kernel.settings import ENV_PREFIX, NESTED_DELIMITER, TlsFileSettings
from safehub.kernel.tls import TlsFiles, tls_files

log = structlog.get_logger(__name__)

_Outbox = queue.Queue[connector_pb2.ConnectorMessage | None]


def timestamp_now() -> Timestamp:
    """The current time as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class ConnectorClientConfig(TlsFileSettings):
    """Who a connector is and how it reaches the gateway; a connector's settings section extends it.

    A subclass sets ``section`` to its settings section's name so that errors name its
    variables (``SAFEHUB_<SECTION>__<FIELD>``).
    """

    section: ClassVar[str] = "CONNECTOR"

    client_id: str = Field(description="client certificate CN and connector id")
    vendor: str = Field(description="vendor name sent in the Hello")
    gateway_address: str = Field(default="127.0.0.1:50051", description="host:port")
    gateway_port_file: Path | None = Field(
        default=None, description="read the gateway's port from here on every (re)connect"
    )
    directory_file: Path | None = Field(default=None, description="default: demo directory")
    school_ids: list[str] = Field(
        default_factory=list, description="schools served; empty: every school of the client"
    )
    reconnect_initial_s: float = Field(default=0.2, gt=0, le=60)
    reconnect_max_s: float = Field(default=5.0, gt=0, le=600)

    def variable(self, field: str) -> str:
        """The environment variable of one of this section's fields."""
        return f"{ENV_PREFIX}{self.section}{NESTED_DELIMITER}{field.upper()}"

    def resolved_directory_file(self) -> Path:
        """The directory file; ConfigError naming the variable if there is none."""
        path = self.directory_file or default_directory_file()
        if not path.is_file():
            raise ConfigError(
                f"directory file {path} does not exist: set {self.variable('directory_file')}"
            )
        return path

    def tls(self) -> TlsFiles:
        """This client's checked TLS files (or a dev PKI certificate of ``client_id``)."""
        return tls_files(self.section, self)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials from the configured files or a development PKI."""
        return self.tls().channel_credentials()

    def gateway_target(self) -> str | None:
        """Where to dial now; None while the gateway has not written its port file yet."""
        if self.gateway_port_file is None:
            return self.gateway_address
        try:
            port = int(Path(self.gateway_port_file).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        host = self.gateway_address.rsplit(":", 1)[0]
        return f"{host}:{port}"


ConfigT = TypeVar("ConfigT", bound=ConnectorClientConfig)


class ConnectorSession(ABC, Generic[ConfigT]):
    """A connector's session with the hub; ``run()`` blocks until ``close()`` or ``stop``.

    Subclasses declare :meth:`capabilities` and override :meth:`on_lock_command` and/or
    :meth:`on_announcement`; the hooks run on the stream's thread, so long work belongs in
    :meth:`call_later`. A command kind a subclass does not handle is answered UNSUPPORTED.
    """

    #: Sent in the Hello.
    software_version: ClassVar[str] = "1"

    def __init__(
        self,
        config: ConfigT,
        directory: Directory,
        credentials: grpc.ChannelCredentials,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._stop = stop or threading.Event()
        client = directory.client(config.client_id)
        if client is None:
            raise ConfigError(f"client {config.client_id!r} is not in the directory")
        #: The district the client belongs to.
        self.district = next(d for d in directory.districts if d.id == client.district)
        allowed = [
            s.id for s in self.district.schools if not client.schools or s.id in client.schools
        ]
        #: The schools named in the Hello.
        self.schools = list(config.school_ids or allowed)
        #: Set while the hub has acknowledged the Hello of the current session.
        self.connected = threading.Event()
        #: How many sessions the hub has acknowledged so far.
        self.sessions = 0
        self._executed: set[str] = set()
        self._lock = threading.Lock()
        self._outbox: _Outbox | None = None
        self._call: grpc.Future | None = None
        self._timers: list[threading.Timer] = []

    @classmethod
    def from_settings(cls, config: ConfigT, *, stop: threading.Event | None = None) -> Self:
        """A session built from its settings section (directory file and credentials)."""
        directory = Directory.load(config.resolved_directory_file())
        return cls(config, directory, config.channel_credentials(), stop=stop)

    @classmethod
    def serve(cls, runtime: Runtime[Any], config: ConfigT, *, name: str) -> Self:
        """Run a session built from ``config`` in a thread of ``runtime``, closed on drain."""
        session = cls.from_settings(config, stop=runtime.stop)
        runtime.on_close(session.close)
        runtime.spawn(session.run, name=name)
        return session

    # -- what a vendor provides -----------------------------------------------------------

    @abstractmethod
    def capabilities(self) -> list[connector_pb2.Capability.ValueType]:
        """The capabilities declared in the Hello."""

    def on_lock_command(self, command: connector_pb2.LockCommand) -> None:
        """Execute a LockCommand (called once per command_id)."""
        self._unsupported(command.command_id)

    def on_announcement(self, announcement: connector_pb2.Announcement) -> None:
        """Play or show an Announcement (called once per command_id)."""
        self._unsupported(announcement.command_id)

    # -- what a vendor calls --------------------------------------------------------------

    def send_result(
        self,
        command_id: str,
        outcome: connector_pb2.CommandOutcome.ValueType,
        detail: str = "",
        *,
        door_id: str = "",
        endpoint_id: str = "",
    ) -> None:
        """Report progress or the outcome of a command (per door or endpoint, or as a whole)."""
        self._send(
            connector_pb2.ConnectorMessage(
                command_result=connector_pb2.CommandResult(
                    command_id=command_id,
                    door_id=door_id,
                    endpoint_id=endpoint_id,
                    outcome=outcome,
                    detail=detail,
                    observed_at=timestamp_now(),
                )
            )
        )

    def send_door_state(
        self,
        door_id: str,
        state: door_pb2.DoorState.ValueType,
        *,
        place: place_pb2.Place,
        exterior: bool,
        client_event_id: str,
        exercise: bool = False,
    ) -> None:
        """Report a door's state as seen now (``client_event_id`` lets the hub drop repeats)."""
        self._send(
            connector_pb2.ConnectorMessage(
                door_state_report=connector_pb2.DoorStateReport(
                    client_event_id=client_event_id,
                    place=place,
                    door_id=door_id,
                    state=state,
                    exterior=exterior,
                    occurred_at=timestamp_now(),
                    exercise=exercise,
                )
            )
        )

    def call_later(self, delay: float, action: Callable[..., object], *args: object) -> None:
        """Run ``action(*args)`` after ``delay`` seconds on a timer that ``close()`` cancels."""
        timer = threading.Timer(delay, action, args)
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Attach, serve, and reconnect with backoff until stopped."""
        backoff = self.config.reconnect_initial_s
        while not self._stop.is_set():
            target = self.config.gateway_target()
            if target is not None:
                try:
                    if self._session(target):
                        backoff = self.config.reconnect_initial_s
                except grpc.RpcError as exc:
                    if not self._stop.is_set():
                        log.info("gateway session ended", code=str(exc.code()), target=target)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.config.reconnect_max_s)

    def close(self) -> None:
        """Stop: end the session and pending timers (idempotent)."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    # -- the stream -----------------------------------------------------------------------

    def _session(self, target: str) -> bool:
        """One Attach stream; True if the hub acknowledged the Hello."""
        outbox: _Outbox = queue.Queue()
        outbox.put(
            connector_pb2.ConnectorMessage(
                hello=connector_pb2.Hello(
                    connector_id=self.config.client_id,
                    vendor=self.config.vendor,
                    software_version=self.software_version,
                    capabilities=self.capabilities(),
                    school_ids=self.schools,
                )
            )
        )
        acknowledged = False
        with grpc.secure_channel(target, self._credentials) as channel:
            call = connector_pb2_grpc.ConnectorServiceStub(channel).Attach(self._requests(outbox))
            self._call = call
            self._outbox = outbox
            try:
                for message in call:
                    if not acknowledged:
                        acknowledged = True
                        self.sessions += 1
                        self.connected.set()
                        log.info("attached to gateway", target=target, schools=self.schools)
                    self._on_hub_message(message)
            finally:
                self.connected.clear()
                self._outbox = None
                self._call = None
                outbox.put(None)
        return acknowledged

    def _requests(self, outbox: _Outbox) -> Iterator[connector_pb2.ConnectorMessage]:
        while not self._stop.is_set():
            try:
                message = outbox.get(timeout=0.25)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message

    def _send(self, message: connector_pb2.ConnectorMessage) -> None:
        outbox = self._outbox
        if outbox is None:
            log.warning("not attached: message dropped", kind=message.WhichOneof("body"))
            return
        outbox.put(message)

    def _on_hub_message(self, message: connector_pb2.HubMessage) -> None:
        match message.WhichOneof("body"):
            case "ping":
                self._send(
                    connector_pb2.ConnectorMessage(
                        pong=connector_pb2.Pong(nonce=message.ping.nonce)
                    )
                )
            case "lock_command":
                if self._first_delivery(message.lock_command.command_id):
                    self.on_lock_command(message.lock_command)
            case "announcement":
                if self._first_delivery(message.announcement.command_id):
                    self.on_announcement(message.announcement)
            case kind:
                # A kind added by a newer hub: this connector cannot know it; say so once per
                # message rather than fail the session.
                log.info("hub message of an unknown kind ignored", kind=kind)

    def _first_delivery(self, command_id: str) -> bool:
        """False for a command redelivered after a reconnect: it is executed at most once."""
        with self._lock:
            if command_id in self._executed:
                return False
            self._executed.add(command_id)
            return True

    def _unsupported(self, command_id: str) -> None:
        self.send_result(
            command_id, connector_pb2.COMMAND_OUTCOME_UNSUPPORTED, "not supported by this connector"
        )
