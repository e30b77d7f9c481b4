"""The simulated access-control system: doors with lock states, driven by the hub's commands.

A :class:`~safehub.sdk.client.ConnectorSession` for doors: it declares door lock control
and door state, and executes each LockCommand once: after ``report_delay_ms`` every door it
controls reports a DoorStateReport in the new state, then a CommandResult SUCCEEDED. Jammed
doors never move; they report TIMED_OUT at the command's deadline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from safehub.gen.safehub.common.v1 import door_pb2, place_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.kernel.directory import Directory, Door
from safehub.sdk.client import ConnectorSession, timestamp_now
from vendors.access_control_sim.settings import AccessControlSimSection

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

    @property
    def place(self) -> place_pb2.Place:
        """Where the door is."""
        return place_pb2.Place(school_id=self.school, building=self.building)


class AccessControlSim(ConnectorSession[AccessControlSimSection]):
    """One simulated door vendor system; ``run()`` blocks until ``close()`` or ``stop``."""

    def __init__(
        self,
        config: AccessControlSimSection,
        directory: Directory,
        credentials: grpc.ChannelCredentials,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(config, directory, credentials, stop=stop)
        self.doors: dict[str, SimDoor] = {
            door.id: SimDoor(school.id, building.id, door)
            for school in self.district.schools
            if school.id in self.schools
            for building in school.buildings
            for door in building.doors
        }
        #: Current state of every door (DoorState values); all start unlocked.
        self.states: dict[str, int] = dict.fromkeys(self.doors, door_pb2.DOOR_STATE_UNLOCKED)
        self.jammed = frozenset(config.jammed_doors)

    def capabilities(self) -> list[connector_pb2.Capability.ValueType]:
        """Door lock control and door state."""
        return [connector_pb2.CAPABILITY_DOOR_LOCK_CONTROL, connector_pb2.CAPABILITY_DOOR_STATE]

    def on_lock_command(self, command: connector_pb2.LockCommand) -> None:
        """Accept, then move the doors after ``report_delay_ms``; jammed ones time out."""
        state = _TARGET_STATE.get(command.target_state)
        if state is None:
            self.send_result(command.command_id, connector_pb2.COMMAND_OUTCOME_REJECTED)
            return
        doors = self._doors_of(command)
        self.send_result(command.command_id, connector_pb2.COMMAND_OUTCOME_ACCEPTED)
        self.call_later(self.config.report_delay_ms / 1000, self._complete, command, doors, state)
        jammed = [d for d in doors if d in self.jammed]
        if jammed and command.HasField("deadline"):
            remaining = command.deadline.ToSeconds() - timestamp_now().ToSeconds()
            self.call_later(max(remaining, 0), self._time_out, command.command_id, jammed)

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

    def _complete(
        self,
        command: connector_pb2.LockCommand,
        doors: list[str],
        state: door_pb2.DoorState.ValueType,
    ) -> None:
        for door_id in doors:
            door = self.doors.get(door_id)
            if door is None or door.school != command.place.school_id:
                self.send_result(
                    command.command_id,
                    connector_pb2.COMMAND_OUTCOME_REJECTED,
                    "unknown door",
                    door_id=door_id,
                )
                continue
            if door_id in self.jammed:
                continue
            # The state report first, then the result: the hub confirms the door once.
            self._move(door_id, state, f"{command.command_id}:{door_id}", command.exercise)
            self.send_result(
                command.command_id, connector_pb2.COMMAND_OUTCOME_SUCCEEDED, door_id=door_id
            )

    def _time_out(self, command_id: str, doors: list[str]) -> None:
        for door_id in doors:
            self.send_result(
                command_id, connector_pb2.COMMAND_OUTCOME_TIMED_OUT, "jammed", door_id=door_id
            )

    def report(self, door_id: str, state: door_pb2.DoorState.ValueType) -> None:
        """Report a spontaneous state change of a door (forced open, held open …)."""
        self._move(door_id, state, f"spontaneous:{door_id}:{timestamp_now().ToNanoseconds()}")

    def _move(
        self,
        door_id: str,
        state: door_pb2.DoorState.ValueType,
        client_event_id: str,
        exercise: bool = False,
    ) -> None:
        """Put a door in ``state`` and report it."""
        door = self.doors[door_id]
        self.states[door_id] = state
        self.send_door_state(
            door_id,
            state,
            place=door.place,
            exterior=door.door.exterior,
            client_event_id=client_event_id,
            exercise=exercise,
        )
