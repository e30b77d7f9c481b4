"""The simulated PA, intercom and signage system: plays the hub's Announcements, reports back.

It attaches to the gateway's ConnectorService with its client certificate, says Hello for its
schools with its outputs as capabilities, answers Pings, and plays each Announcement once (by
command_id): a CommandResult ACCEPTED for the command, then, after ``play_delay_ms``, one
per endpoint (``<school>/pa``, ``<school>/intercom``, ``<school>/signage``): SUCCEEDED once
played or shown, FAILED for a configured failing endpoint. An announcement past its
``expires_at`` is not played (TIMED_OUT); one for a school it does not serve is REJECTED; one
for no output it has is UNSUPPORTED. A drill is spoken with "This is a drill." first. When the
stream breaks it reconnects with exponential backoff.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from connectors.pa_signage_sim.settings import PaSignageSimSection
from safehub.embedded.pki import DevPki
from safehub.gen.safehub.common.v1 import srp_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.kernel.directory import Directory
from safehub.kernel.errors import ConfigError

log = structlog.get_logger(__name__)

#: Output name → (capability, endpoint suffix).
OUTPUTS: dict[str, tuple[connector_pb2.Capability.ValueType, str]] = {
    "PA_ANNOUNCEMENT": (connector_pb2.CAPABILITY_PA_ANNOUNCEMENT, "pa"),
    "INTERCOM": (connector_pb2.CAPABILITY_INTERCOM, "intercom"),
    "SIGNAGE": (connector_pb2.CAPABILITY_SIGNAGE, "signage"),
}

#: Primary language subtag → (what a drill is called, the sentence said first).
DRILL_NOTICE = {
    "en": ("drill", "This is a drill."),
    "es": ("simulacro", "Esto es un simulacro."),
}


@dataclass(frozen=True)
class Played:
    """An announcement played on one endpoint (what the speakers said or the sign showed)."""

    command_id: str
    endpoint_id: str
    school: str
    building: str
    output: str
    srp_action: str
    text: str
    language: str
    repeat: int
    exercise: bool


def channel_credentials(section: PaSignageSimSection) -> grpc.ChannelCredentials:
    """mTLS credentials from the configured files or a development PKI."""
    if section.tls_cert_file and section.tls_key_file and section.tls_ca_file:
        cert, key, ca = section.tls_cert_file, section.tls_key_file, section.tls_ca_file
    elif section.dev_pki_dir is not None:
        pki = DevPki(section.dev_pki_dir)
        pair = pki.client(section.client_id)
        cert, key, ca = pair.cert, pair.key, pki.ca.cert
    else:
        raise ConfigError(
            "set SAFEHUB_PA_SIGNAGE_SIM__TLS_CERT_FILE, __TLS_KEY_FILE and __TLS_CA_FILE "
            "(or SAFEHUB_PA_SIGNAGE_SIM__DEV_PKI_DIR for development)"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


def spoken_text(text: str, language: str, exercise: bool) -> str:
    """The text as played: a drill says so first unless the text already does."""
    if not exercise:
        return text
    word, notice = DRILL_NOTICE.get(language.split("-", maxsplit=1)[0].lower(), DRILL_NOTICE["en"])
    return text if word in text.lower() else f"{notice} {text}"


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class PaSignageSim:
    """One simulated PA / signage system; ``run()`` blocks until ``close()`` or ``stop``."""

    def __init__(
        self,
        section: PaSignageSimSection,
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
        self.outputs = list(dict.fromkeys(section.outputs))
        self.failing = frozenset(section.failing_endpoints)
        #: Set while the hub has acknowledged the Hello of the current session.
        self.connected = threading.Event()
        self.sessions = 0
        self._played: list[Played] = []
        self._executed: set[str] = set()
        self._lock = threading.Lock()
        self._outbox: queue.Queue[connector_pb2.ConnectorMessage | None] | None = None
        self._call: grpc.Future | None = None
        self._timers: list[threading.Timer] = []

    @classmethod
    def from_settings(
        cls, section: PaSignageSimSection, *, stop: threading.Event | None = None
    ) -> PaSignageSim:
        """A simulator built from its settings section."""
        directory = Directory.load(section.resolved_directory_file())
        return cls(section, directory, channel_credentials(section), stop=stop)

    @property
    def played(self) -> list[Played]:
        """Every announcement played so far, per endpoint, in order."""
        with self._lock:
            return list(self._played)

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
                    capabilities=[OUTPUTS[o][0] for o in self.outputs],
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
            case "announcement":
                self._on_announcement(message.announcement)
            case _:
                pass

    def _on_announcement(self, announcement: connector_pb2.Announcement) -> None:
        command_id = announcement.command_id
        with self._lock:
            if command_id in self._executed:
                return  # redelivered after a reconnect: played at most once
            self._executed.add(command_id)
        failed = connector_pb2.COMMAND_OUTCOME_FAILED
        if announcement.HasField("expires_at") and _now().ToDatetime() >= (
            announcement.expires_at.ToDatetime()
        ):
            self._result(command_id, "", connector_pb2.COMMAND_OUTCOME_TIMED_OUT, "expired")
            return
        if announcement.place.school_id not in self.schools:
            self._result(command_id, "", connector_pb2.COMMAND_OUTCOME_REJECTED, "not served")
            return
        asked = set(announcement.outputs)
        outputs = [o for o in self.outputs if not asked or OUTPUTS[o][0] in asked]
        if not outputs:
            self._result(command_id, "", connector_pb2.COMMAND_OUTCOME_UNSUPPORTED, "no output")
            return
        if not announcement.texts:
            self._result(command_id, "", failed, "no text")
            return
        self._result(command_id, "", connector_pb2.COMMAND_OUTCOME_ACCEPTED)
        self._later(self.section.play_delay_ms / 1000, self._play, announcement, outputs)

    def _later(self, delay: float, action: object, *args: object) -> None:
        timer = threading.Timer(delay, action, args)  # type: ignore[arg-type]
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def _play(self, announcement: connector_pb2.Announcement, outputs: list[str]) -> None:
        text = announcement.texts[0]
        school = announcement.place.school_id
        for output in outputs:
            endpoint = f"{school}/{OUTPUTS[output][1]}"
            if endpoint in self.failing:
                self._result(
                    announcement.command_id,
                    endpoint,
                    connector_pb2.COMMAND_OUTCOME_FAILED,
                    "amplifier offline" if output != "SIGNAGE" else "display offline",
                )
                continue
            played = Played(
                command_id=announcement.command_id,
                endpoint_id=endpoint,
                school=school,
                building=announcement.place.building,
                output=output,
                srp_action=srp_pb2.SrpAction.Name(announcement.srp_action).removeprefix(
                    "SRP_ACTION_"
                ),
                text=spoken_text(text.text, text.language, announcement.exercise),
                language=text.language,
                repeat=1 if output == "SIGNAGE" else max(announcement.repeat, 1),
                exercise=announcement.exercise,
            )
            self._record(played)
            self._result(announcement.command_id, endpoint, connector_pb2.COMMAND_OUTCOME_SUCCEEDED)

    def _record(self, played: Played) -> None:
        with self._lock:
            self._played.append(played)
            if self.section.played_file is not None:
                line = {**asdict(played), "played_at": datetime.now(UTC).isoformat()}
                with self.section.played_file.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")
        log.info(
            "announcement played",
            command_id=played.command_id,
            endpoint_id=played.endpoint_id,
            exercise=played.exercise,
        )

    def _result(
        self,
        command_id: str,
        endpoint_id: str,
        outcome: connector_pb2.CommandOutcome.ValueType,
        detail: str = "",
    ) -> None:
        self._send(
            connector_pb2.ConnectorMessage(
                command_result=connector_pb2.CommandResult(
                    command_id=command_id,
                    endpoint_id=endpoint_id,
                    outcome=outcome,
                    detail=detail,
                    observed_at=_now(),
                )
            )
        )
