"""Tips under a burst: life-safety tips reach their first person while routine tips pile up.

Usage: ``python bench/tips.py [--json] [--tips 2000] [--clients 32]``

The tips service runs as its own process (as ``safehub up`` runs it) on the embedded tansu
broker (or ``KAFKA_BOOTSTRAP_SERVERS``) and SQLite; tip apps call ``safehub.tips.v1`` over
mTLS from this process. A reader here stamps each escalation call's NotificationRequested
(call 0: the first person of the school's call chain) as it lands on the notifications topic.

1. Quiet: 20 life-safety tips one after another; accepted (the RPC answered) → call 0 on the
   topic, p50/p99. This is the baseline of the same run.
2. Burst: ``--tips`` tips (17% life-safety, like Safe2Say's year; the rest routine) sent by
   ``--clients`` app threads at once, a 10-fold-and-more burst of the busiest day. For the
   life-safety ones: accepted → call 0 and, end to end, request sent → call 0, p50/p99
   (target p99 < 2 s), and how long their RPC took next to the routine ones' (routine tips
   take turns: ``routine_concurrency``).
   The time to triage the whole burst: first request → last TipSubmitted on the topic.
3. Reported: the ratio burst p99 / quiet p99, and the raw confluent-kafka round trip of the
   same broker in the same run (the floor under both).

notify runs too (its own process, e-mail to an SMTP server in this process, no SMS provider):
the first person's notification is that e-mail, so the run also gives accepted → first
e-mail at SMTP and notify's own request → SMTP time for the same tips, side by side.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from aiosmtpd.controller import Controller

from bench.common import broker, percentiles, raw_round_trip, report
from safehub.contracts.names import EventType
from safehub.devstack.pki import DevPki
from safehub.gen.safehub.tips.v1 import tips_pb2, tips_pb2_grpc
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import H_EVENT_TYPE, header
from safehub.kernel.codec import Codec
from safehub.kernel.directory import default_directory_file
from safehub.kernel.logging import configure_logging
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings, LogSettings
from safehub.kernel.topics import NOTIFICATIONS, TIPS, TopicCatalog

ROOT = Path(__file__).resolve().parents[1]
TIP_LINK = re.compile(r"/api/tips/([0-9a-f]{32})")
SCHOOLS = ("sch-lincoln-hs", "sch-washington-ms")
APP = "tips-app-north"
LIFE_SAFETY_SHARE = 0.17
ROUTINE_WORDS = [
    "kids vaping in the restroom by the gym after lunch",
    "a group keeps teasing a sixth grader on the bus every morning",
    "someone posted mean pictures of a classmate online",
    "older students are selling pills behind the library",
    "people are writing insults on the lockers on the second floor",
]
LIFE_SAFETY_WORDS = [
    "he said he will bring a gun tomorrow",
    "a student has a knife in his backpack",
    "there is a bomb threat written in the bathroom",
    "she says she is going to kill herself tonight",
]


NAMES = [
    "Jordan",
    "Avery",
    "Mateo",
    "Sofia",
    "Liam",
    "Aaliyah",
    "Noah",
    "Camila",
    "Ethan",
    "Zoe",
    "Diego",
    "Maya",
]
PLACES = [
    "by the east stairs",
    "in the cafeteria",
    "behind the gym",
    "at the bus loop",
    "in room 214",
    "near the library",
    "in the parking lot",
    "outside the band room",
]
WHEN = [
    "this morning",
    "after lunch",
    "last night",
    "during fourth period",
    "before practice",
    "on Friday",
]
DETAILS = [
    "it happened near the east stairs before first period, a friend saw it",
    "my cousin heard about it in the cafeteria and told me at practice",
    "people were talking about it in a group chat last night",
    "it was outside the band room during the passing period",
]


WANTED = {str(EventType.NOTIFICATION_REQUESTED), str(EventType.TIP_SUBMITTED)}


def _directory(workdir: Path) -> Path:
    """The demo directory with an hour per call-tree step: the run measures intake → the
    first call, and a burst nobody answers must not turn into a storm of repeated calls."""
    data = json.loads(default_directory_file().read_text())
    for tree in data["call_trees"]:
        for step in tree["steps"]:
            step["ack_within_seconds"] = 3600
    path = workdir / "directory.json"
    path.write_text(json.dumps(data))
    return path


class Mails:
    """An SMTP server standing in for the staff's mail: stamps the first e-mail per tip."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self._lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, _s: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        now = time.perf_counter()
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        part = (
            parsed.get_body(preferencelist=("plain",)) if isinstance(parsed, EmailMessage) else None
        )
        found = TIP_LINK.search(part.get_content() if part is not None else "")
        if found:
            with self._lock:
                self.first.setdefault(found.group(1), now)
        return "250 OK"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


class Calls:
    """Arrival (perf_counter) of each tip's call 0 and TipSubmitted, from a topic reader."""

    def __init__(self, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec) -> None:
        self.first_call: dict[str, float] = {}
        self.submitted: dict[str, float] = {}
        self._codec = codec
        self._stop = threading.Event()
        self._reader = TopicReader(
            kafka, catalog, [NOTIFICATIONS, TIPS], name="bench-tips", fetch_wait_ms=5
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._reader.poll(0.05):
                now = time.perf_counter()
                # Receipts and acknowledgements are most of the topic: passed over by header.
                if header(message.headers() or [], H_EVENT_TYPE) not in WANTED:
                    continue
                event = self._codec.decode(message.value() or b"")
                kind = event["envelope"]["event_type"]
                if kind.endswith("NotificationRequested"):
                    nid = str(event["notification_id"])
                    if nid.endswith("-0") and event["priority"] == "LIFE_SAFETY":
                        self.first_call.setdefault(str(event["envelope"]["case_id"]), now)
                elif kind.endswith("TipSubmitted"):
                    self.submitted.setdefault(str(event["tip_id"]), now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._reader.close()


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} not within {timeout} s")
        time.sleep(0.01)


def _stub(pki: DevPki, port: int) -> tuple[grpc.Channel, tips_pb2_grpc.TipServiceStub]:
    pair = pki.client(APP)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert.read_bytes(),
        private_key=pair.key.read_bytes(),
        certificate_chain=pair.cert.read_bytes(),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
    return channel, tips_pb2_grpc.TipServiceStub(channel)


def _request(life_safety: bool, n: int) -> tips_pb2.SubmitTipRequest:
    words = random.choice(LIFE_SAFETY_WORDS if life_safety else ROUTINE_WORDS)
    return tips_pb2.SubmitTipRequest(
        client_tip_id=f"bench-{uuid.uuid4().hex}",
        school_id=SCHOOLS[n % len(SCHOOLS)],
        category=tips_pb2.TIP_CATEGORY_OTHER,
        # Distinct details keep the reports from folding into one tip (folded ones are not
        # called: their primary was); the few that still fold are left out of the figures.
        text=(
            f"{random.choice(NAMES)} - {words}, {random.choice(PLACES)} {random.choice(WHEN)}; "
            f"{random.choice(DETAILS)}"
        ),
        anonymous=True,
    )


def _submit(stub: tips_pb2_grpc.TipServiceStub, request: tips_pb2.SubmitTipRequest) -> Any:
    started = time.perf_counter()
    answer = stub.SubmitTip(request, timeout=300)
    return answer, started, time.perf_counter()


def _tip_ids(workdir: Path) -> dict[str, str]:
    """tip code → tip id, read from the service's store after the run."""
    import sqlite3

    with sqlite3.connect(workdir / "tips.sqlite3") as db:
        return dict(db.execute("SELECT code, tip_id FROM tips_tips").fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tips", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))
    random.seed(7)
    workdir = Path(tempfile.mkdtemp(prefix="safehub-bench-tips-"))
    pki = DevPki(workdir / "pki")
    server = pki.server()
    codec = Codec.from_contracts()
    result: dict[str, Any] = {"tips": args.tips, "clients": args.clients}
    with broker() as bootstrap:
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500
        )
        catalog = TopicCatalog(prefix=f"bench{uuid.uuid4().hex[:6]}.")
        ensure_topics(kafka, catalog)
        ready = workdir / "tips.ready"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SAFEHUB_KAFKA__TOPIC_PREFIX": catalog.prefix,
            "SAFEHUB_READY_FILE": str(ready),
            "SAFEHUB_LOG__LEVEL": "WARNING",
            "SAFEHUB_TIPS__DATABASE_URL": f"sqlite:///{workdir / 'tips.sqlite3'}",
            "SAFEHUB_TIPS__SEAL_KEYS": "b1:" + base64.b64encode(os.urandom(32)).decode(),
            "SAFEHUB_TIPS__CONTACT_KEY": "bench-contact-key",
            "SAFEHUB_TIPS__HTTP_PORT": "0",
            "SAFEHUB_TIPS__GRPC_PORT": "0",
            "SAFEHUB_TIPS__GRPC_PORT_FILE": str(workdir / "grpc.port"),
            "SAFEHUB_TIPS__TLS_CERT_FILE": str(server.cert),
            "SAFEHUB_TIPS__TLS_KEY_FILE": str(server.key),
            "SAFEHUB_TIPS__TLS_CA_FILE": str(pki.ca.cert),
            "SAFEHUB_TIPS__SOURCE_LIMIT": "100000",
            "SAFEHUB_DIRECTORY_FILE": str(_directory(workdir)),
        }
        log = (workdir / "tips.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.tips"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        # notify delivers the calls: e-mail to this process's SMTP server (no SMS provider,
        # so the e-mail is the first person's notification).
        mails = Mails()
        mails.start()
        notify_ready = workdir / "notify.ready"
        notify_env = {
            **env,
            "SAFEHUB_READY_FILE": str(notify_ready),
            "SAFEHUB_NOTIFY__DATABASE_URL": f"sqlite:///{workdir / 'notify.sqlite3'}",
            "SAFEHUB_NOTIFY__HTTP_PORT": "0",
            "SAFEHUB_NOTIFY__ACK_SECRET": "bench-ack-secret",
            "SAFEHUB_NOTIFY__SMTP_PORT": str(mails.port),
            "SAFEHUB_NOTIFY__SMS_ENABLED": "false",
        }
        notify_log = (workdir / "notify.log").open("ab")
        notify = subprocess.Popen(
            [sys.executable, "-m", "services.notify"], cwd=ROOT, env=notify_env,
            stdout=notify_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        calls = Calls(kafka, catalog, codec)
        try:
            _wait(ready.exists, 60, "tips ready")
            _wait(notify_ready.exists, 60, "notify ready")
            channel, stub = _stub(pki, int((workdir / "grpc.port").read_text()))
            # Warm-up, outside the figures: the reader's first fetches, the channel, caches.
            for n in range(3):
                warm, _, _ = _submit(stub, _request(True, 900 + n))
                if not warm.duplicate:
                    warm_id = _tip_ids(workdir)[warm.tip_code]
                    _wait(lambda t=warm_id: t in calls.first_call, 60, "the warm-up call")
                    _wait(lambda t=warm_id: t in mails.first, 60, "the warm-up e-mail")
            # 1. quiet: one life-safety tip at a time
            quiet: list[tuple[str, float]] = []
            quiet_rpc: list[float] = []
            for n in range(20):
                answer, sent, accepted = _submit(stub, _request(True, n))
                quiet_rpc.append((accepted - sent) * 1000)
                if not answer.duplicate:
                    quiet.append((answer.tip_code, accepted))
            # 2. the burst
            plan = [random.random() < LIFE_SAFETY_SHARE for _ in range(args.tips)]
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                futures = [
                    (ls, pool.submit(_submit, stub, _request(ls, 1000 + n)))
                    for n, ls in enumerate(plan)
                ]
                burst = [(ls, f.result()) for ls, f in futures]
            accepted_all = time.perf_counter()
            codes = _tip_ids(workdir)
            every = [codes[a.tip_code] for _, (a, _, _) in burst]
            _wait(lambda: all(t in calls.submitted for t in every), 300, "every TipSubmitted")
            urgent = [
                (codes[a.tip_code], done) for ls, (a, _, done) in burst if ls and not a.duplicate
            ]
            _wait(lambda: all(t in calls.first_call for t, _ in urgent), 120, "every call 0")
            quiet_ids = [(codes[c], at) for c, at in quiet]
            _wait(lambda: all(t in calls.first_call for t, _ in quiet_ids), 60, "quiet calls")
            _wait(lambda: all(t in mails.first for t, _ in urgent), 300, "every first e-mail")
            channel.close()
        finally:
            calls.close()
            for running in (process, notify):
                running.terminate()
                running.wait(30)
            log.close()
            notify_log.close()
            mails.stop()
        quiet_ms = [(calls.first_call[t] - at) * 1000 for t, at in quiet_ids]
        burst_ms = [(calls.first_call[t] - at) * 1000 for t, at in urgent]
        sent_at = {codes[a.tip_code]: sent for ls, (a, sent, _) in burst if ls and not a.duplicate}
        burst_sent_ms = [(calls.first_call[t] - sent_at[t]) * 1000 for t, _ in urgent]
        rpc_urgent = [(done - sent) * 1000 for ls, (_, sent, done) in burst if ls]
        rpc_routine = [(done - sent) * 1000 for ls, (_, sent, done) in burst if not ls]
        result["quiet_accepted_to_first_call"] = percentiles(quiet_ms)
        result["quiet_rpc_life_safety"] = percentiles(quiet_rpc)
        result["burst_accepted_to_first_call"] = percentiles(burst_ms)
        result["burst_sent_to_first_call"] = percentiles(burst_sent_ms)
        result["burst_accepted_to_first_email"] = percentiles(
            [(mails.first[t] - at) * 1000 for t, at in urgent]
        )
        result["notify_request_to_smtp"] = percentiles(
            [(mails.first[t] - calls.first_call[t]) * 1000 for t, _ in urgent]
        )
        result["burst_rpc_life_safety"] = percentiles(rpc_urgent)
        result["burst_rpc_routine"] = percentiles(rpc_routine)
        result["burst_life_safety_tips"] = len(urgent)
        result["burst_folded"] = sum(1 for _, (a, _, _) in burst if a.duplicate)
        result["burst_accepted_s"] = round(accepted_all - started, 2)
        result["burst_triaged_s"] = round(max(calls.submitted[t] for t in every) - started, 2)
        result["burst_tips_per_s"] = round(args.tips / (accepted_all - started), 1)
        result["ratio_burst_to_quiet_p99"] = round(
            result["burst_accepted_to_first_call"]["p99_ms"]
            / max(result["quiet_accepted_to_first_call"]["p99_ms"], 0.01),
            2,
        )
        result["target_p99_ms"] = 2000
        result["raw_kafka_round_trip"] = raw_round_trip(bootstrap, rate=200, count=400)
    report(result, as_json=args.json)


if __name__ == "__main__":
    main()
