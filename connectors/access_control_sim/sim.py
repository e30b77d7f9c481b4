"""The simulated access-control system: doors with lock states, driven by the hub's commands.

It attaches to the gateway's ConnectorService with its client certificate, says Hello for
its schools, answers Pings, and executes each LockCommand once (by command_id): after
``report_delay_ms`` every door it controls reports a DoorStateReport in the new state, then a
CommandResult SUCCEEDED. Jammed doors never move; they report TIMED_OUT at the command's
deadline. When the stream breaks it reconnects with exponential backoff.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from connectors.access_control_sim.settings import AccessControlSimSection
from safehub.embedded.pki import DevPki
from safehub.gen.safehub.common.v1 import door_pb2, place_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.kernel.directory import Directory, Door
from safehub.kernel.errors import ConfigError

log = structlog.get_logger(__name__)

_TARGET_STATE = {
    connector_pb2.LOCK_TARGET_STATE_LOCK: door_pb2.DOOR_STATE_LOCKED,
    connector_pb2.LOCK_TARGET_STATE_UNLOCK: door_pb2.DOOR_STATE_UNLOCKED,
}


@dataclass(frozen=True)
class SimDoor:
    """A door the simulator controls."""

    school: str
    building: str
    door: Door


def channel_credentials(section: AccessControlSimSection) -> grpc.ChannelCredentials:
    """mTLS credentials from the configured files or a development PKI."""
    if section.tls_cert_file and section.tls_key_file and section.tls_ca_file:
        cert, key, ca = section.tls_cert_file, section.tls_key_file, section.tls_ca_file
    elif section.dev_pki_dir is not None:
        pki = DevPki(section.dev_pki_dir)
        pair = pki.client(section.client_id)
        cert, key, ca = pair.cert, pair.key, pki.ca.cert
    else:
        raise ConfigError(
            "set SAFEHUB_ACCESS_CONTROL_SIM__TLS_CERT_FILE, __TLS_KEY_FILE and __TLS_CA_FILE "
            "(or SAFEHUB_ACCESS_CONTROL_SIM__DEV_PKI_DIR for development)"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class AccessControlSim:
    """One simulated vendor system; ``run()`` blocks until ``close()`` or ``stop``."""

    def __init__(
        self,
        section: AccessControlSimSection,
        directory: Directory,
        credentials: grpc.ChannelCredentials,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.section = section
        self._credentials = credentials
        self._stop = stop or threading.Event()
        client = directory.client(section.client_id)
        if client is None:
            raise ConfigError(f"client {section.client_id!r} is not in the directory")
        district = next(d for d in directory.districts if d.id == client.district)
        allowed = [s.id for s in district.schools if not client.schools or s.id in client.schools]
        self.schools = list(section.school_ids or allowed)
        self.doors: dict[str, SimDoor] = {
            door.id: SimDoor(school.id, building.id, door)
            for school in district.schools
            if school.id in self.schools
            for building in school.buildings
            for door in building.doors
        }
        #: Current state of every door (DoorState values); all start unlocked.
        self.states: dict[str, int] = dict.fromkeys(self.doors, door_pb2.DOOR_STATE_UNLOCKED)
        self.jammed = frozenset(section.jammed_doors)
        #: Set while the hub has acknowledged the Hello of the current session.
        self.connected = threading.Event()
        self.sessions = 0
        self._executed: set[str] = set()
        self._lock = threading.Lock()
        self._outbox: queue.Queue[connector_pb2.ConnectorMessage | None] | None = None
        self._call: grpc.Future | None = None
        self._timers: list[threading.Timer] = []

    @classmethod
    def from_settings(
        cls, section: AccessControlSimSection, *, stop: threading.Event | None = None
    ) -> AccessControlSim:
        """A simulator built from its settings section."""
        directory = Directory.load(section.resolved_directory_file())
        return cls(section, directory, channel_credentials(section), stop=stop)

    # -- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        """Attach, serve, and reconnect with backoff until stopped."""
        backoff = self.section.reconnect_initial_s
        while not self._stop.is_set():
            target = self._target()
            if target is not None:
                try:
                    if self._session(target):
                        backoff = self.section.reconnect_initial_s
                except grpc.RpcError as exc:
                    if not self._stop.is_set():
                        log.info("gateway session ended", code=str(exc.code()), target=target)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.section.reconnect_max_s)

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

    def _target(self) -> str | None:
        if self.section.gateway_port_file is None:
            return self.section.gateway_address
        try:
            port = int(Path(self.section.gateway_port_file).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None  # the gateway has not written its port yet
        host = self.section.gateway_address.rsplit(":", 1)[0]
        return f"{host}:{port}"

    def _session(self, target: str) -> bool:
        """One Attach stream; True if the hub acknowledged the Hello."""
        outbox: queue.Queue[connector_pb2.ConnectorMessage | None] = queue.Queue()
        outbox.put(
            connector_pb2.ConnectorMessage(
                hello=connector_pb2.Hello(
                    connector_id=self.section.client_id,
                    vendor=self.section.vendor,
                    software_version="1",
                    capabilities=[
                        connector_pb2.CAPABILITY_DOOR_LOCK_CONTROL,
                        connector_pb2.CAPABILITY_DOOR_STATE,
                    ],
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

    def _requests(
        self, outbox: queue.Queue[connector_pb2.ConnectorMessage | None]
    ) -> Iterator[connector_pb2.ConnectorMessage]:
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

    # -- the hub's messages --------------------------------------------------------------

    def _on_hub_message(self, message: connector_pb2.HubMessage) -> None:
        match message.WhichOneof("body"):
            case "ping":
                self._send(
                    connector_pb2.ConnectorMessage(
                        pong=connector_pb2.Pong(nonce=message.ping.nonce)
                    )
                )
            case "lock_command":
                self._on_command(message.lock_command)
            case _:
                pass

    def _on_command(self, command: connector_pb2.LockCommand) -> None:
        with self._lock:
            if command.command_id in self._executed:
                return  # redelivered after a reconnect: executed at most once
            self._executed.add(command.command_id)
        state = _TARGET_STATE.get(command.target_state)
        if state is None:
            self._result(command.command_id, "", connector_pb2.COMMAND_OUTCOME_REJECTED)
            return
        doors = self._doors_of(command)
        self._result(command.command_id, "", connector_pb2.COMMAND_OUTCOME_ACCEPTED)
        self._later(self.section.report_delay_ms / 1000, self._complete, command, doors, state)
        jammed = [d for d in doors if d in self.jammed]
        if jammed and command.HasField("deadline"):
            remaining = command.deadline.ToSeconds() - _now().ToSeconds()
            self._later(max(remaining, 0), self._time_out, command.command_id, jammed)

    def _doors_of(self, command: connector_pb2.LockCommand) -> list[str]:
        if command.WhichOneof("target") == "doors":
            return list(command.doors.door_ids)
        exterior_only = command.all_doors.scope == connector_pb2.DOOR_SCOPE_EXTERIOR
        return [
            door_id
            for door_id, door in self.doors.items()
            if door.school == command.place.school_id
            and command.place.building in ("", door.building)
            and (door.door.exterior or not exterior_only)
        ]

    def _later(self, delay: float, action: object, *args: object) -> None:
        timer = threading.Timer(delay, action, args)  # type: ignore[arg-type]
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def _complete(self, command: connector_pb2.LockCommand, doors: list[str], state: int) -> None:
        for door_id in doors:
            door = self.doors.get(door_id)
            if door is None or door.school != command.place.school_id:
                self._result(
                    command.command_id,
                    door_id,
                    connector_pb2.COMMAND_OUTCOME_REJECTED,
                    "unknown door",
                )
                continue
            if door_id in self.jammed:
                continue
            self.states[door_id] = state
            # The state report first, then the result: the hub confirms the door once.
            self._send(
                connector_pb2.ConnectorMessage(
                    door_state_report=connector_pb2.DoorStateReport(
                        client_event_id=f"{command.command_id}:{door_id}",
                        place=place_pb2.Place(school_id=door.school, building=door.building),
                        door_id=door_id,
                        state=state,  # type: ignore[arg-type]
                        exterior=door.door.exterior,
                        occurred_at=_now(),
                        exercise=command.exercise,
                    )
                )
            )
            self._result(command.command_id, door_id, connector_pb2.COMMAND_OUTCOME_SUCCEEDED)

    def _time_out(self, command_id: str, doors: list[str]) -> None:
        for door_id in doors:
            self._result(command_id, door_id, connector_pb2.COMMAND_OUTCOME_TIMED_OUT, "jammed")

    def _result(
        self,
        command_id: str,
        door_id: str,
        outcome: connector_pb2.CommandOutcome.ValueType,
        detail: str = "",
    ) -> None:
        self._send(
            connector_pb2.ConnectorMessage(
                command_result=connector_pb2.CommandResult(
                    command_id=command_id,
                    door_id=door_id,
                    outcome=outcome,
                    detail=detail,
                    observed_at=_now(),
                )
            )
        )

    def report(self, door_id: str, state: door_pb2.DoorState.ValueType) -> None:
        """Report a spontaneous state change of a door (forced open, held open …)."""
        door = self.doors[door_id]
        self.states[door_id] = state
        self._send(
            connector_pb2.ConnectorMessage(
                door_state_report=connector_pb2.DoorStateReport(
                    client_event_id=f"spontaneous:{door_id}:{_now().ToNanoseconds()}",
                    place=place_pb2.Place(school_id=door.school, building=door.building),
                    door_id=door_id,
                    state=state,
                    exterior=door.door.exterior,
                    occurred_at=_now(),
                )
            )
        )
