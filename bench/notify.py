"""Mass notification: SRP action on the incidents topic → 2,000 staff messages at the channels.

Usage: ``python bench/notify.py [--json] [--staff 2000]``

A directory with one school of ``--staff`` staff (each with an email address and a phone)
is written to a temporary file. The notify service runs as its own process (as ``safehub
up`` runs it) against the embedded tansu broker (or ``KAFKA_BOOTSTRAP_SERVERS``), a local
SMTP server (aiosmtpd) and the Twilio-compatible provider simulator, both in this process
and both stamping the moment they accept each message.

1. Warm-up: a lockdown at a small school (connections, consumer groups, caches).
2. Measured: an IncidentOpened with SRP LOCKDOWN for the big school is published; the time
   from just before the publish to the last of the staff's emails accepted by the SMTP
   server and the last SMS accepted by the simulator (each staff member gets both: life
   safety goes out on two paths), and messages per second.
3. Baseline, same run, same servers: raw smtplib (one connection per sender thread, as many
   threads as notify's email workers) and raw httpx (one keep-alive client, as many threads
   as notify's SMS workers) sending the same number of messages, at the same time.
   Reported as the ratio notify / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.common import broker, report
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.logging import configure_logging
from safehub.kernel.people import People
from safehub.kernel.settings import KafkaSettings, LogSettings
from safehub.kernel.topics import TopicCatalog
from simulators.sms.server import (
    DEFAULT_ACCOUNT_SID,
    Account,
    ProviderSimulator,
    SimulatorOptions,
)

ROOT = Path(__file__).resolve().parents[1]
BIG = "sch-big-hs"
WARM = "sch-riverside-es"
AUTH_TOKEN = "bench-auth-token-0123456789"
BIG_MAIL_DOMAIN = "@big.example.org"
BIG_PHONE_PREFIX = "+15557"
EMAIL_WORKERS = 8
SMS_WORKERS = 16


class Stamps:
    """Arrival times (perf_counter) of accepted messages for the big school, thread-safe.

    Messages for other schools (the warm-up) are only counted: a late warm-up message must
    not pass for the first message of the measured run.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.others = 0
        self._lock = threading.Lock()

    def add(self, big: bool) -> None:
        with self._lock:
            if big:
                self.times.append(time.perf_counter())
            else:
                self.others += 1

    def count(self) -> int:
        with self._lock:
            return len(self.times)

    def reset(self) -> None:
        with self._lock:
            self.times.clear()
            self.others = 0


class SmtpHandler:
    """aiosmtpd handler: accept and stamp."""

    def __init__(self, stamps: Stamps) -> None:
        self.stamps = stamps

    async def handle_DATA(self, _s: SMTP, _session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.stamps.add(any(str(r).endswith(BIG_MAIL_DOMAIN) for r in envelope.rcpt_tos))
        return "250 OK"


class TimedSimulator(ProviderSimulator):
    """The provider simulator, stamping each accepted message."""

    def __init__(self, stamps: Stamps) -> None:
        super().__init__([Account(DEFAULT_ACCOUNT_SID, AUTH_TOKEN)], SimulatorOptions())
        self.stamps = stamps

    async def create_message(self, request: web.Request) -> web.Response:
        response = await super().create_message(request)
        if response.status == 201:
            form = await request.post()  # parsed once, cached by aiohttp
            self.stamps.add(str(form.get("To", "")).startswith(BIG_PHONE_PREFIX))
        return response


def serve_simulator(simulator: ProviderSimulator) -> tuple[int, Callable[[], None]]:
    """Run the simulator on a free port in its own thread; (port, stop)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(simulator.app(), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    loop.run_until_complete(site.start())
    port = int(runner.addresses[0][1])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return port, stop


def write_directory(path: Path, staff: int) -> Directory:
    """The demo directory plus one school of ``staff`` staff (email + phone each)."""
    data = json.loads(default_directory_file().read_text(encoding="utf-8"))
    data["districts"][0]["schools"].append(
        {
            "id": BIG,
            "name": "Big High School",
            "address": "1 Big Street, Northville",
            "psap_id": "psap-north-county",
            "buildings": [{"id": "A", "name": "Main"}],
            "staff": [
                {
                    "id": f"stf-big-{i:05d}",
                    "name": f"Staff {i}",
                    "role": "teacher",
                    "contact": {
                        "email": f"staff{i}{BIG_MAIL_DOMAIN}",
                        "phone": f"{BIG_PHONE_PREFIX}{i:06d}",
                        "language": "es" if i % 5 == 0 else "en",
                    },
                }
                for i in range(staff)
            ],
        }
    )
    path.write_text(json.dumps(data), encoding="utf-8")
    return Directory.load(path)


def lockdown(directory: Directory, school: str) -> dict[str, Any]:
    """IncidentOpened with SRP LOCKDOWN, as the incidents service publishes it."""
    incident_id = f"inc-{uuid.uuid4().hex[:12]}"
    return new_event(
        "IncidentOpened",
        source="incidents",
        tenant=directory.tenant(school),
        incident_id=incident_id,
        payload={
            "incident_id": incident_id,
            "version": 1,
            "incident_type": "ACTIVE_ASSAILANT",
            "state": "CONFIRMED",
            "srp_action": "LOCKDOWN",
            "correlated_event_ids": [],
            "dispatchable": True,
            "summary": "Active assailant; SRP LOCKDOWN in force",
        },
    )


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true (raises at the deadline)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def raw_baseline(smtp_port: int, sim_port: int, count: int) -> dict[str, float]:
    """The same number of emails and SMS with raw smtplib and raw httpx, concurrently."""
    local = threading.local()
    connections: list[smtplib.SMTP] = []

    def send_mail(i: int) -> None:
        smtp = getattr(local, "smtp", None)
        if smtp is None:
            smtp = local.smtp = smtplib.SMTP("127.0.0.1", smtp_port)
            connections.append(smtp)
        message = EmailMessage()
        message["From"] = "alerts@safehub.local"
        message["To"] = f"staff{i}{BIG_MAIL_DOMAIN}"
        message["Subject"] = "LOCKDOWN - Big High School"
        message.set_content("LOCKDOWN: Big High School. Locks, lights, out of sight.")
        smtp.send_message(message)

    client = httpx.Client(
        base_url=f"http://127.0.0.1:{sim_port}",
        auth=(DEFAULT_ACCOUNT_SID, AUTH_TOKEN),
        limits=httpx.Limits(max_connections=SMS_WORKERS, max_keepalive_connections=SMS_WORKERS),
    )
    path = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"

    def send_sms(i: int) -> None:
        client.post(
            path,
            data={
                "To": f"{BIG_PHONE_PREFIX}{i:06d}",
                "From": "+15550009999",
                "Body": "LOCKDOWN: Big High School. Locks, lights, out of sight. Reply 1.",
            },
        ).raise_for_status()

    took: dict[str, float] = {}

    def timed(name: str, work: Callable[[int], None], workers: int) -> None:
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(count)))
        took[name] = time.perf_counter() - start

    start = time.perf_counter()
    threads = [
        threading.Thread(target=timed, args=("email", send_mail, EMAIL_WORKERS)),
        threading.Thread(target=timed, args=("sms", send_sms, SMS_WORKERS)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - start
    for smtp in connections:
        smtp.quit()
    client.close()
    return {
        "email_s": round(took["email"], 3),
        "sms_s": round(took["sms"], 3),
        "total_s": round(total, 3),
        "messages_per_s": round(2 * count / total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--staff", type=int, default=2000)
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))
    # Callbacks still in flight when notify stops fail; that is the end of the run, not news.
    logging.getLogger("simulators.sms.server").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="safehub-bench-notify-"))
    directory = write_directory(workdir / "directory.json", args.staff)
    mail, sms = Stamps(), Stamps()
    smtp_port = free_port()
    controller = Controller(SmtpHandler(mail), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    sim_port, stop_sim = serve_simulator(TimedSimulator(sms))
    result: dict[str, Any] = {"staff": args.staff}
    try:
        with broker() as bootstrap:
            kafka = KafkaSettings(
                bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500
            )
            catalog = TopicCatalog(prefix=f"bench{uuid.uuid4().hex[:6]}.")
            ensure_topics(kafka, catalog)
            ready = workdir / "notify.ready"
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "SAFEHUB_KAFKA__TOPIC_PREFIX": catalog.prefix,
                "SAFEHUB_KAFKA__SESSION_TIMEOUT_MS": "6000",
                "SAFEHUB_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
                "SAFEHUB_READY_FILE": str(ready),
                "SAFEHUB_LOG__LEVEL": "WARNING",
                "SAFEHUB_NOTIFY__DIRECTORY_FILE": str(workdir / "directory.json"),
                "SAFEHUB_NOTIFY__DATABASE_URL": f"sqlite:///{workdir / 'notify.sqlite3'}",
                "SAFEHUB_NOTIFY__HTTP_PORT": "0",
                "SAFEHUB_NOTIFY__ACK_SECRET": "bench-ack-secret",
                "SAFEHUB_NOTIFY__SMTP_PORT": str(smtp_port),
                "SAFEHUB_NOTIFY__SMS_ENABLED": "true",
                "SAFEHUB_NOTIFY__TWILIO__API_BASE_URL": f"http://127.0.0.1:{sim_port}",
                "SAFEHUB_NOTIFY__TWILIO__AUTH_TOKEN": AUTH_TOKEN,
                "SAFEHUB_NOTIFY__TWILIO__MAX_CONNECTIONS": str(SMS_WORKERS),
                "SAFEHUB_NOTIFY__WORKERS": json.dumps(
                    {"EMAIL": EMAIL_WORKERS, "SMS": SMS_WORKERS, "VOICE": 2}
                ),
                # Provider limits are a deployment's contract; here they must not be the
                # bottleneck being measured (reported below).
                "SAFEHUB_NOTIFY__RATE_LIMITS": json.dumps(
                    {
                        "EMAIL": {"rate_per_s": 10000, "burst": 10000},
                        "SMS": {"rate_per_s": 10000, "burst": 10000},
                    }
                ),
            }
            log = (workdir / "notify.log").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "services.notify"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(ready.exists, 60, "notify ready")
                with EventProducer(kafka, Codec.from_contracts(), catalog) as producer:
                    warm = People.load(workdir / "directory.json").school(WARM).staff
                    producer.publish(lockdown(directory, WARM))
                    emails = sum(1 for m in warm if m.contact.email)
                    phones = sum(1 for m in warm if m.contact.phone)
                    wait_for(lambda: mail.others >= emails, 60, "warm-up emails")
                    wait_for(lambda: sms.others >= phones, 60, "warm-up SMS")
                    event = lockdown(directory, BIG)
                    cpu_before = cpu_seconds(process.pid)
                    start = time.perf_counter()
                    producer.publish(event)
                    wait_for(lambda: mail.count() >= args.staff, 300, "all emails")
                    wait_for(lambda: sms.count() >= args.staff, 300, "all SMS")
                    cpu_after = cpu_seconds(process.pid)
                last_mail, last_sms = max(mail.times), max(sms.times)
                first = min(*mail.times, *sms.times)
                total = max(last_mail, last_sms) - start
                result["notify"] = {
                    "first_message_ms": round((first - start) * 1000, 1),
                    "last_email_s": round(last_mail - start, 3),
                    "last_sms_s": round(last_sms - start, 3),
                    "all_messages_s": round(total, 3),
                    "messages": mail.count() + sms.count(),
                    "messages_per_s": round((mail.count() + sms.count()) / total),
                    "notify_cpu_s": (
                        round(cpu_after - cpu_before, 2)
                        if cpu_before is not None and cpu_after is not None
                        else None
                    ),
                    "email_workers": EMAIL_WORKERS,
                    "sms_workers": SMS_WORKERS,
                    "rate_limits_per_s": {"EMAIL": 10000, "SMS": 10000},
                }
            finally:
                process.terminate()
                process.wait(30)
                log.close()
            mail.reset()
            sms.reset()
            result["raw_baseline"] = raw_baseline(smtp_port, sim_port, args.staff)
            result["ratio_to_raw"] = round(
                result["notify"]["all_messages_s"] / result["raw_baseline"]["total_s"], 2
            )
    finally:
        stop_sim()
        controller.stop()
    report(result, as_json=args.json)


if __name__ == "__main__":
    main()
