"""The simulated PA, intercom and signage system: plays the hub's Announcements, reports back.

A :class:`~safehub.sdk.client.ConnectorSession` that declares its outputs as capabilities
and plays each Announcement once: a CommandResult ACCEPTED for the command, then, after
``play_delay_ms``, one per endpoint (``<school>/pa``, ``<school>/intercom``,
``<school>/signage``): SUCCEEDED once played or shown, FAILED for a configured failing
endpoint. An announcement past its ``expires_at`` is not played (TIMED_OUT); one for a school
it does not serve is REJECTED; one for no output it has is UNSUPPORTED. A drill is spoken with
"This is a drill." first.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import grpc
import structlog

from safehub.gen.safehub.common.v1 import srp_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.kernel.directory import Directory
from safehub.sdk.client import ConnectorSession, timestamp_now
from vendors.pa_signage_sim.settings import PaSignageSimSection

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


def spoken_text(text: str, language: str, exercise: bool) -> str:
    """The text as played: a drill says so first unless the text already does."""
    if not exercise:
        return text
    word, notice = DRILL_NOTICE.get(language.split("-", maxsplit=1)[0].lower(), DRILL_NOTICE["en"])
    return text if word in text.lower() else f"{notice} {text}"


class PaSignageSim(ConnectorSession[PaSignageSimSection]):
    """One simulated PA / signage system; ``run()`` blocks until ``close()`` or ``stop``."""

    def __init__(
        self,
        config: PaSignageSimSection,
        directory: Directory,
        credentials: grpc.ChannelCredentials,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(config, directory, credentials, stop=stop)
        self.outputs = list(dict.fromkeys(config.outputs))
        self.failing = frozenset(config.failing_endpoints)
        self._played: list[Played] = []
        self._played_lock = threading.Lock()

    @property
    def played(self) -> list[Played]:
        """Every announcement played so far, per endpoint, in order."""
        with self._played_lock:
            return list(self._played)

    def capabilities(self) -> list[connector_pb2.Capability.ValueType]:
        """One capability per configured output."""
        return [OUTPUTS[o][0] for o in self.outputs]

    def on_announcement(self, announcement: connector_pb2.Announcement) -> None:
        """Check the announcement, accept it, and play it after ``play_delay_ms``."""
        command_id = announcement.command_id
        if announcement.HasField("expires_at") and timestamp_now().ToDatetime() >= (
            announcement.expires_at.ToDatetime()
        ):
            self.send_result(command_id, connector_pb2.COMMAND_OUTCOME_TIMED_OUT, "expired")
            return
        if announcement.place.school_id not in self.schools:
            self.send_result(command_id, connector_pb2.COMMAND_OUTCOME_REJECTED, "not served")
            return
        asked = set(announcement.outputs)
        outputs = [o for o in self.outputs if not asked or OUTPUTS[o][0] in asked]
        if not outputs:
            self.send_result(command_id, connector_pb2.COMMAND_OUTCOME_UNSUPPORTED, "no output")
            return
        if not announcement.texts:
            self.send_result(command_id, connector_pb2.COMMAND_OUTCOME_FAILED, "no text")
            return
        self.send_result(command_id, connector_pb2.COMMAND_OUTCOME_ACCEPTED)
        self.call_later(self.config.play_delay_ms / 1000, self._play, announcement, outputs)

    def _play(self, announcement: connector_pb2.Announcement, outputs: list[str]) -> None:
        text = announcement.texts[0]
        school = announcement.place.school_id
        for output in outputs:
            endpoint = f"{school}/{OUTPUTS[output][1]}"
            if endpoint in self.failing:
                self.send_result(
                    announcement.command_id,
                    connector_pb2.COMMAND_OUTCOME_FAILED,
                    "amplifier offline" if output != "SIGNAGE" else "display offline",
                    endpoint_id=endpoint,
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
            self.send_result(
                announcement.command_id,
                connector_pb2.COMMAND_OUTCOME_SUCCEEDED,
                endpoint_id=endpoint,
            )

    def _record(self, played: Played) -> None:
        with self._played_lock:
            self._played.append(played)
            if self.config.played_file is not None:
                line = {**asdict(played), "played_at": datetime.now(UTC).isoformat()}
                with self.config.played_file.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")
        log.info(
            "announcement played",
            command_id=played.command_id,
            endpoint_id=played.endpoint_id,
            exercise=played.exercise,
        )
