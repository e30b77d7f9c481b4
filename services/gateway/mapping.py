"""Explicit tables between proto enum values and Avro enum symbols.

Tables, not name manipulation: a renamed or added value on either side shows up as a
missing entry (tests check both directions against the descriptors and the schemas) instead
of silently producing a wrong symbol. UNSPECIFIED values are absent on purpose: the
validators reject them before mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

from safehub.gen.safehub.common.v1 import door_pb2, srp_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2

#: ReporterRole → safehub.common.PersonRole. Unspecified is allowed (a fixed wall button).
REPORTER_ROLE: Mapping[int, str] = {
    ingest_pb2.REPORTER_ROLE_UNSPECIFIED: "UNKNOWN",
    ingest_pb2.REPORTER_ROLE_TEACHER: "TEACHER",
    ingest_pb2.REPORTER_ROLE_STAFF: "STAFF",
    ingest_pb2.REPORTER_ROLE_ADMINISTRATOR: "ADMINISTRATOR",
    ingest_pb2.REPORTER_ROLE_SCHOOL_RESOURCE_OFFICER: "SRO",
    # PersonRole has no security or health role; they are school staff.
    ingest_pb2.REPORTER_ROLE_SECURITY_OFFICER: "STAFF",
    ingest_pb2.REPORTER_ROLE_NURSE: "STAFF",
    ingest_pb2.REPORTER_ROLE_STUDENT: "STUDENT",
    ingest_pb2.REPORTER_ROLE_OTHER: "UNKNOWN",
}

#: PanicType → safehub.events.PanicType.
PANIC_TYPE: Mapping[int, str] = {
    ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT: "ACTIVE_ASSAILANT",
    ingest_pb2.PANIC_TYPE_MEDICAL: "MEDICAL",
    ingest_pb2.PANIC_TYPE_FIRE: "FIRE",
    ingest_pb2.PANIC_TYPE_OTHER: "OTHER",
}

#: CameraAnalytic → safehub.events.CameraAnalytic.
CAMERA_ANALYTIC: Mapping[int, str] = {
    ingest_pb2.CAMERA_ANALYTIC_WEAPON: "WEAPON",
    ingest_pb2.CAMERA_ANALYTIC_GUNSHOT: "GUNSHOT",
    ingest_pb2.CAMERA_ANALYTIC_TAMPER: "TAMPER",
    ingest_pb2.CAMERA_ANALYTIC_INTRUSION: "INTRUSION",
    ingest_pb2.CAMERA_ANALYTIC_FIGHT: "FIGHT",
    ingest_pb2.CAMERA_ANALYTIC_OTHER: "OTHER",
}

#: common.v1.DoorState → safehub.events.DoorState.
DOOR_STATE: Mapping[int, str] = {
    door_pb2.DOOR_STATE_LOCKED: "LOCKED",
    door_pb2.DOOR_STATE_UNLOCKED: "UNLOCKED",
    door_pb2.DOOR_STATE_FORCED_OPEN: "FORCED_OPEN",
    door_pb2.DOOR_STATE_HELD_OPEN: "HELD_OPEN",
    door_pb2.DOOR_STATE_OFFLINE: "OFFLINE",
}

#: common.v1.SrpAction → safehub.common.SrpAction.
SRP_ACTION: Mapping[int, str] = {
    srp_pb2.SRP_ACTION_HOLD: "HOLD",
    srp_pb2.SRP_ACTION_SECURE: "SECURE",
    srp_pb2.SRP_ACTION_LOCKDOWN: "LOCKDOWN",
    srp_pb2.SRP_ACTION_EVACUATE: "EVACUATE",
    srp_pb2.SRP_ACTION_SHELTER: "SHELTER",
    srp_pb2.SRP_ACTION_ALL_CLEAR: "ALL_CLEAR",
}

#: common.v1.ShelterHazard → safehub.common.ShelterHazard.
SHELTER_HAZARD: Mapping[int, str] = {
    srp_pb2.SHELTER_HAZARD_TORNADO: "TORNADO",
    srp_pb2.SHELTER_HAZARD_HAZMAT: "HAZMAT",
    srp_pb2.SHELTER_HAZARD_EARTHQUAKE: "EARTHQUAKE",
    srp_pb2.SHELTER_HAZARD_TSUNAMI: "TSUNAMI",
    srp_pb2.SHELTER_HAZARD_OTHER: "OTHER",
}

#: common.v1.ShelterStrategy → safehub.common.ShelterStrategy (names differ: DROP_COVER_HOLD).
SHELTER_STRATEGY: Mapping[int, str] = {
    srp_pb2.SHELTER_STRATEGY_EVACUATE_TO_SHELTER_AREA: "EVACUATE_TO_SHELTER_AREA",
    srp_pb2.SHELTER_STRATEGY_SEAL_THE_ROOM: "SEAL_THE_ROOM",
    srp_pb2.SHELTER_STRATEGY_DROP_COVER_AND_HOLD: "DROP_COVER_HOLD",
    srp_pb2.SHELTER_STRATEGY_GET_TO_HIGH_GROUND: "GET_TO_HIGH_GROUND",
    srp_pb2.SHELTER_STRATEGY_OTHER: "OTHER",
}

#: safehub.events.LockTarget → connector.v1.LockTargetState (UNKNOWN is never forwarded).
LOCK_TARGET: Mapping[str, connector_pb2.LockTargetState.ValueType] = {
    "LOCKED": connector_pb2.LOCK_TARGET_STATE_LOCK,
    "UNLOCKED": connector_pb2.LOCK_TARGET_STATE_UNLOCK,
}

#: The door state a LockCommand target leads to (to match reports to pending commands).
LOCK_TARGET_DOOR_STATE: Mapping[str, str] = {"LOCKED": "LOCKED", "UNLOCKED": "UNLOCKED"}

#: safehub.events.LockScope → connector.v1.DoorScope for commands sent as "all doors".
LOCK_SCOPE: Mapping[str, connector_pb2.DoorScope.ValueType] = {
    "ALL": connector_pb2.DOOR_SCOPE_ALL,
    "EXTERIOR": connector_pb2.DOOR_SCOPE_EXTERIOR,
}
