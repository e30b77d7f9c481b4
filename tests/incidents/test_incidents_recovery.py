"""kill -9 of the incidents worker while panics keep coming: every panic the gateway accepted
reaches the CAD exactly once (none lost, none twice), through the replacement worker.

The whole hub runs as ``safehub up`` runs it; the test only waits with a deadline, it asserts
no latency (``bench/recovery.py`` measures the takeover time).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from safehub.devstack.hub import Hub
from safehub.gen.safehub.common.v1 import place_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.settings import HubSettings, KafkaSettings
from services.incidents.model import incident_id_for
from tests.support.cad import CadAdmin
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

INCIDENTS = "services.incidents"
RATE = 10.0  # panics per second, before, during and after the kill


class Panics:
    """Sends panics at a steady rate from a thread; keeps the incident id of each accepted."""

    def __init__(self, stub: ingest_pb2_grpc.IngestServiceStub) -> None:
        self._stub = stub
        self._stop = threading.Event()
        self.accepted: list[str] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="panics", daemon=True)

    def _send(self) -> None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(datetime.now(UTC))
        answer = self._stub.ReportPanic(
            ingest_pb2.ReportPanicRequest(
                client_event_id=str(uuid.uuid4()),
                place=place_pb2.Place(school_id="sch-lincoln-hs", building="B", room="214"),
                device_id="badge-0042",
                reporter_role=ingest_pb2.REPORTER_ROLE_TEACHER,
                panic_type=ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT,
                silent=True,
                occurred_at=stamp,
            ),
            timeout=10,
        )
        self.accepted.append(incident_id_for(answer.event_id))

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            try:
                self._send()
            except grpc.RpcError as exc:  # the gateway did not accept it: not ours to track
                self.errors.append(exc)
            n += 1
            self._stop.wait(max(0.0, start + n / RATE - time.monotonic()))

    def __enter__(self) -> Panics:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)


@pytest.fixture
def hub(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    settings = HubSettings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=f"rec{uuid.uuid4().hex[:6]}.",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
    )
    # Every panic its own incident (correlation runs on the hub's clock): one dispatch each.
    env = {"SAFEHUB_INCIDENTS__CORRELATION_WINDOW_S": "0.001"}
    with Hub(settings, run_dir=tmp_path_factory.mktemp("hub"), cad_auto=False, env=env) as hub:
        yield hub


def test_kill_9_of_incidents_while_panics_flow_dispatches_each_exactly_once(hub: Hub) -> None:
    cad = CadAdmin(hub.cad_simulator_url, hub.pki)
    channel = hub.pki.grpc_channel(hub.gateway_address, "panic-badges-north")
    try:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        def at_cad() -> Counter[str]:
            return Counter(i["trackingId"] for i in cad.incidents())

        with Panics(stub) as panics:
            wait_until(lambda: len(at_cad()) >= 10, timeout=60, what="steady dispatches")
            # kill -9 as a crash: no drain, no commit, no LeaveGroup. The hub's supervisor
            # starts the replacement, as Kubernetes would.
            killed = hub.crash_component(INCIDENTS)
            killed_with = len(panics.accepted)
            wait_until(
                lambda: hub.processes[INCIDENTS].pid != killed and hub.restarts[INCIDENTS] == 1,
                timeout=30,
                what="the supervisor starting a replacement",
            )
            wait_until(
                lambda: len(panics.accepted) >= killed_with + 60,
                timeout=60,
                what="panics accepted across and after the kill",
            )
            before = len(at_cad())
            # The replacement took over: panics sent after the kill reach CAD.
            wait_until(lambda: len(at_cad()) > before, timeout=60, what="dispatch after kill")
        sent = set(panics.accepted)
        assert len(sent) == len(panics.accepted)
        assert not panics.errors, f"gateway refused {len(panics.errors)} panics"
        wait_until(lambda: sent <= set(at_cad()), timeout=90, what="every panic at CAD")
        trackings = at_cad()
        assert all(trackings[i] == 1 for i in sent), "one CAD incident per panic"
        for incident in cad.incidents():
            if incident["trackingId"] in sent:
                assert incident["versions"] == [1], "no version accepted twice or skipped"
        # A repeated POST that CAD answered as a duplicate (Idempotency-Key) is not a second
        # dispatch; any other accepted POST of the same incident version would be.
        accepted = Counter(
            d["key"]
            for d in cad.deliveries()
            if d.get("httpStatus") in (200, 201) and d.get("outcome") != "duplicate"
        )
        twice = [k for k, n in accepted.items() if n > 1 and k.rsplit(":", 1)[0] in sent]
        assert not twice, f"dispatched twice: {twice[:5]}"
    finally:
        channel.close()
        cad.close()
