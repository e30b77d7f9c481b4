"""The doorstate service: live door lock states per school, and lockdown confirmation.

A faust worker (:mod:`safehub.kernel.streams`) with one agent over two co-partitioned
topics keyed by school (``safehub.doors.v1``, ``safehub.door-commands.v1``) and two
changelog-backed tables (rules in :mod:`services.doorstate.model`):

* ``door_states``: the latest report of every door, for the query API and to confirm
  commands whose door reported before the command was read;
* ``lock_commands``: the lock commands of each school under way. A report of the target
  state confirms a door; ``LockdownProgress`` goes to the incident when every door confirmed
  and, once, when the deadline passes with doors unconfirmed (a timer checks every
  ``check_interval_s``). Each (command, outcome) is published once; its event id is derived
  from both, so a repeat after a crash is recognisable downstream.

State after a restart: faust replays both changelogs. On tansu its end offset comes from a
fetch high watermark, not ListOffsets (see :mod:`safehub.kernel.streams`), so recovery is
exact; the source offsets faust commits are never ahead of the changelog (it flushes the
producer first), and events after them are read again and are no-ops (same event id or not
newer). Outcome records written by the timer are confirmed before the next check; a crash
between publishing and recording an outcome repeats it with the same event id.

Which doors a command covers, and whether a school exists, come from the live directory
(:func:`~safehub.kernel.views.follow_directory`, read to its end before the worker starts,
closed at shutdown), read once per command and per query: a door or a school added or
removed at run time counts from the next one, without a restart.

Query API (faust web): ``GET /doors/{school}`` (routed to the worker that owns the school's
partition), ``GET /stats``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import structlog
from opentelemetry.context import Context

from safehub.contracts.names import EventType
from safehub.kernel import tracing
from safehub.kernel.bus import ConsumedEvent
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, DirectorySource, UnknownPlaceError
from safehub.kernel.settings import load_settings
from safehub.kernel.streams import (
    StreamIO,
    assigned_partitions,
    make_app,
    raw_topic,
    run_worker,
    set_table_key,
)
from safehub.kernel.topics import (
    DEAD_LETTER,
    DIRECTORY,
    DOOR_COMMANDS,
    DOORS,
    INCIDENTS,
    TopicCatalog,
)
from safehub.kernel.views import follow_directory
from services.doorstate import model
from services.doorstate.settings import DoorstateSettings

log = structlog.get_logger(__name__)

TOPICS = (DOORS, DOOR_COMMANDS, INCIDENTS, DEAD_LETTER, DIRECTORY)

DOOR_STATE = EventType.DOOR_LOCK_STATE
LOCK_COMMAND = EventType.LOCK_COMMAND


class Doorstate:
    """The handlers, the deadline check and the queries over the two tables."""

    def __init__(
        self,
        app: faust.App,
        io: StreamIO,
        directory: DirectorySource,
        settings: DoorstateSettings,
    ) -> None:
        section = settings.doorstate
        self.app = app
        self.io = io
        self._directory = directory
        self.deadline_s = section.confirm_deadline_s
        self.retention = timedelta(seconds=section.retention_s)
        self.commands_topic = io.catalog.name(DOOR_COMMANDS)
        # JSON values; keys are "<school>/<door>" and "<school>" strings.
        schema: faust.Schema[str, Any] = faust.Schema(key_serializer="raw", value_serializer="json")
        self.door_states = app.Table("door_states", schema=schema, partitions=12)
        self.lock_commands = app.Table("lock_commands", schema=schema, partitions=12)
        self.progress_published = 0
        self.deadline_checks = 0
        self._index: dict[str, set[str]] = {}
        self._indexed = 0

    # -- agent -------------------------------------------------------------------------

    async def handle(self, consumed: ConsumedEvent) -> None:
        """Fold one event from either input topic."""
        if consumed.event_type == DOOR_STATE:
            await self._door_state(consumed)
        elif consumed.event_type == LOCK_COMMAND:
            await self._lock_command(consumed)
        else:
            log.warning("ignoring unexpected event type", event_type=consumed.event_type)

    async def _door_state(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        school = model.school_of(event)
        record = model.door_record(event)
        key = model.door_key(school, record["door_id"])
        if not model.supersedes(record, self.door_states.get(key)):
            return  # duplicate or older than what we have: out-of-order safe
        self.door_states[key] = record
        keys = self._index.setdefault(school, set())
        if key not in keys:
            keys.add(key)
            self._indexed += 1
        school_commands = self.lock_commands.get(school)
        if not school_commands:
            return
        commands = school_commands["commands"]
        now = datetime.now(UTC)
        changed = False
        for entry in commands.values():
            if model.confirms(entry, record):
                entry["confirmed"].append(record["door_id"])
                changed = True
                await self._report_due(entry, now, wait=False, only=model.COMPLETE)
        if changed:
            self.lock_commands[school] = school_commands

    async def _lock_command(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        envelope = consumed.envelope
        school = model.school_of(event)
        command_id = event["command_id"]
        school_commands = self.lock_commands.get(school) or {"commands": {}}
        commands = school_commands["commands"]
        if command_id in commands:
            return  # redelivered or duplicated command: already tracked
        if not envelope.get("incident_id") or event["target"] == "UNKNOWN":
            # Progress is reported on the incident; without one there is nobody to tell.
            log.info("lock command not tracked", command_id=command_id, reason="no incident")
            return
        # The doors the directory lists now: a door added or removed at run time counts for
        # the next command.
        expected = model.expected_doors(event, self._directory.current())
        if not expected:
            log.warning("lock command covers no known door", command_id=command_id)
            return
        traceparent = next(
            (v.decode("latin-1") for k, v in consumed.headers if k == "traceparent"), None
        )
        entry = model.new_command(
            event,
            expected,
            deadline_s=self.deadline_s,
            partition=consumed.partition,
            traceparent=traceparent,
        )
        now = datetime.now(UTC)
        model.supersede(commands, entry, now)
        model.confirm_known(entry, school, self.door_states.get)
        commands[command_id] = entry
        await self._report_due(entry, now, wait=False, only=model.COMPLETE)
        self.lock_commands[school] = school_commands
        log.info(
            "lock command tracked",
            command_id=command_id,
            incident_id=entry["incident_id"],
            doors=len(expected),
            confirmed=len(entry["confirmed"]),
        )

    async def _report_due(
        self, entry: dict[str, Any], now: datetime, *, wait: bool, only: str | None = None
    ) -> bool:
        """Publish the outcome due for ``entry`` (if any, and if ``only`` allows it).

        Handlers report completion only; deadlines are the timer's, so a command read late
        (backlog, restart) is not reported unconfirmed before the reports queued behind it
        were read.
        """
        outcome = model.due_outcome(entry, now)
        if outcome is None or only not in (None, outcome):
            return False
        event = model.progress_event(entry, outcome, now)
        # Marked before the await: the agent and the timer interleave there, and the other
        # one must not see the same outcome still due.
        model.mark_reported(entry, outcome, now)
        try:
            await self.io.publish(event, wait=wait)
        except BaseException:
            model.unmark_reported(entry, outcome)
            raise
        self.progress_published += 1
        log.info(
            "lockdown progress",
            command_id=entry["command_id"],
            incident_id=entry["incident_id"],
            outcome=outcome,
            unconfirmed=len(set(entry["expected"]) - set(entry["confirmed"])),
            exercise=entry["exercise"],
        )
        return True

    # -- timer -------------------------------------------------------------------------

    async def check_deadlines(self) -> None:
        """Report commands whose deadline passed; forget long-finished ones."""
        if self.app.rebalancing:
            return
        try:
            await self._check_deadlines()
        except Exception:
            # Keep the timer alive: what failed is still due and is retried on the next tick.
            log.exception("deadline check failed")
        else:
            self.deadline_checks += 1

    async def _check_deadlines(self) -> None:
        owned = assigned_partitions(self.app, self.commands_topic)
        now = datetime.now(UTC)
        for school, school_commands in list(self.lock_commands.items()):
            commands = school_commands["commands"]
            # A revoked partition's keys may linger in the memory store; its new owner reports.
            partitions = {entry["partition"] for entry in commands.values()}
            if not partitions or not partitions <= owned:
                continue
            changed = False
            for command_id, entry in list(commands.items()):
                if model.expired(entry, now, self.retention):
                    del commands[command_id]
                    changed = True
                elif model.due_outcome(entry, now) is not None:
                    # The report joins the trace of the command it is about.
                    with tracing.tracer().start_as_current_span(
                        "lockdown deadline", context=_trace_context(entry["traceparent"])
                    ):
                        # Confirmed by the broker before it is recorded as reported.
                        changed |= await self._report_due(entry, now, wait=True)
            if changed:
                set_table_key(self.lock_commands, min(partitions), school, school_commands)

    # -- queries -----------------------------------------------------------------------

    @property
    def directory(self) -> Directory:
        """The directory now (a snapshot)."""
        return self._directory.current()

    def doors_of(self, school: str) -> dict[str, Any]:
        """The latest report of every door of ``school`` known to this worker."""
        if self._indexed != len(self.door_states):
            self._reindex()  # keys restored from the changelog bypass the handlers
        keys = sorted(self._index.get(school, ()))
        return {
            "school": school,
            "doors": {key.split("/", 1)[1]: self.door_states.get(key) for key in keys},
        }

    def _reindex(self) -> None:
        index: dict[str, set[str]] = {}
        for key in list(self.door_states.keys()):
            index.setdefault(key.split("/", 1)[0], set()).add(key)
        self._index = index
        self._indexed = sum(len(keys) for keys in index.values())

    def stats(self) -> dict[str, Any]:
        """Counters for operators and the benchmark."""
        stats = self.io.stats
        open_commands = sum(
            1
            for school_commands in self.lock_commands.values()
            for entry in school_commands["commands"].values()
            if entry["closed_at"] is None
        )
        return {
            "events_processed": stats.handled,
            "events_by_topic": dict(stats.by_topic),
            "dead_lettered": stats.dead_lettered,
            "first_event_at": stats.first_event_at,
            "last_event_at": stats.last_event_at,
            "now": time.time(),
            "door_states": len(self.door_states),
            "open_commands": open_commands,
            "progress_published": self.progress_published,
            "deadline_checks": self.deadline_checks,
        }


def _trace_context(traceparent: str | None) -> Context:
    return tracing.extract([("traceparent", traceparent)] if traceparent else [])


def build_app(settings: DoorstateSettings) -> Any:
    """The faust app of the service (agents, timer, tables and web views registered)."""
    section = settings.doorstate
    catalog = TopicCatalog(settings.kafka.topic_prefix)
    app = make_app(
        "doorstate",
        settings,
        web_port=section.web_port,
        web_bind=section.web_bind,
        web_host=section.web_host,
        data_dir=section.data_dir,
    )
    codec = Codec.from_contracts()
    io = StreamIO(app, codec, catalog, max_bytes=settings.kafka.max_message_bytes)
    # Schools, buildings and doors from the live directory, read once per lock command and
    # per query: what changes at run time counts from the next one, without a restart.
    directory = follow_directory(
        settings.kafka,
        catalog,
        codec,
        section.directory_file,
        name="doorstate-directory",
        ready_timeout=section.directory_ready_s,
    )

    def stop_following(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        directory.close()  # the follower polls 0.2 s at a time: a short join at shutdown

    app.on_before_shutdown.connect(stop_following)

    service = Doorstate(app, io, directory, settings)

    @app.agent(raw_topic(app, catalog, DOORS, DOOR_COMMANDS), name="doorstate")
    async def process(stream: Any) -> None:
        await io.consume(stream, service.handle)

    # Called rather than applied as a decorator: faust's timer decorator is untyped.
    app.timer(section.check_interval_s, name="doorstate-deadlines")(service.check_deadlines)

    doors_topic = raw_topic(app, catalog, DOORS)

    @app.page("/doors/{school}")
    @app.topic_route(topic=doors_topic, match_info="school")
    async def doors(view: Any, request: Any, school: str) -> Any:
        answer = service.doors_of(school)
        if not answer["doors"]:
            try:
                service.directory.school(school)
            except UnknownPlaceError:
                # Not in the directory and nothing reported: a typo, not an empty school.
                return view.json({"error": f"unknown school {school[:100]!r}"}, status=404)
        return view.json(answer)

    @app.page("/stats")
    async def stats(view: Any, request: Any) -> Any:
        return view.json(service.stats())

    return app


def main() -> None:
    """Run the doorstate worker until SIGTERM."""
    settings = load_settings(DoorstateSettings)
    run_worker(build_app(settings), settings, topics=TOPICS)
