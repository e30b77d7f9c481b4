"""The hub supervisor behind ``safehub up`` and ``safehub demo``.

Starts the embedded broker unless ``KAFKA_BOOTSTRAP_SERVERS`` names a real cluster, creates
the declared topics, issues development certificates, then runs each service and connector
as its own process (``python -m services.<name>``), exactly as they run on Kubernetes,
waiting for each to report ready. Without a configured CAD it also runs the CAD simulator
(a stand-in for the 911 centre) so the hub works on a laptop. Notify's API gets a fresh
random bearer token for every administrator in its directory: the digests go to notify's
operators file, the tokens to ``<run dir>/notify/credentials.json`` (owner-only) and to
:attr:`Hub.notify_tokens` for the demo.

The hub also supervises, as Kubernetes would (``restartPolicy: Always``): a component that
exits without being asked to (a crash, a kill -9) is started again at once, with a backoff
only when it keeps failing within seconds of its start. A replacement incidents worker thus
takes over the 911 path within its short group session (``bench/recovery.py``).

The kernel never imports a service; it only knows their module names and the variables
they read. On exit, components get SIGTERM (they drain: flush producers, commit offsets,
stop gRPC with grace) in reverse start order, then the broker stops.
"""

from __future__ import annotations

import hashlib
import json
import mailbox
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from safehub.embedded.broker import EmbeddedBroker
from safehub.embedded.pki import DevPki
from safehub.kernel.admin import ensure_topics
from safehub.kernel.directory import (
    DIRECTORY_FILE_VARIABLE,
    Directory,
    StaffRole,
    default_directory_file,
)
from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.settings import HubSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]

#: Deployables ``safehub up`` runs, in start order (consumers before the gateway that feeds them).
DEFAULT_COMPONENTS: tuple[str, ...] = (
    "services.timeline",
    "services.incidents",
    "services.doorstate",
    "connectors.psap_cad",
    "services.notify",
    "services.gateway",
    "connectors.access_control_sim",
    "connectors.pa_signage_sim",
)

CAD_SIMULATOR = "connectors.psap_cad.simulator"
#: Stand-in for the SMS/voice provider (Twilio's REST API and callbacks), for notify.
SMS_SIMULATOR = "services.notify.provider_sim"
#: The demo's mail server: aiosmtpd's own command line, storing every message in a Maildir.
MAIL_SINK = "aiosmtpd"

#: Bulk, non-life-safety components yield the CPU to the emergency path when a machine is
#: saturated (on Kubernetes the same intent is expressed with priority classes and requests).
NICENESS = {
    "services.doorstate": 10,
    "connectors.access_control_sim": 10,
    "connectors.pa_signage_sim": 10,
}

#: A component that exits within this long of its start is crash-looping: its next restart
#: waits (doubling from RESTART_BACKOFF_S up to RESTART_BACKOFF_MAX_S) instead of spinning.
CRASH_LOOP_S = 10.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0


def free_port() -> int:
    """A free loopback port (released at once; the component binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Ports:
    """Loopback ports of the hub's endpoints."""

    gateway: int = field(default_factory=free_port)
    cad_callback: int = field(default_factory=free_port)
    cad_simulator: int = field(default_factory=free_port)
    doorstate_web: int = field(default_factory=free_port)
    notify_web: int = field(default_factory=free_port)
    sms_simulator: int = field(default_factory=free_port)
    smtp: int = field(default_factory=free_port)
    timeline_http: int = field(default_factory=free_port)
    timeline_grpc: int = field(default_factory=free_port)


class Hub(Closing):
    """Broker + topics + PKI + component processes, as one context manager."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        run_dir: Path,
        durable_dir: Path | None = None,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        cad_simulator: bool = True,
        cad_auto: bool = True,
        env: Mapping[str, str] | None = None,
        grace_s: float = 15.0,
        restart: Collection[str] | None = None,
    ) -> None:
        """``restart``: components started again when they exit unasked (default: all)."""
        self.settings = settings
        self.run_dir = run_dir
        self._durable_dir = durable_dir
        self._components = list(components)
        self._cad_simulator = cad_simulator
        self._cad_auto = cad_auto
        self._env = dict(env or {})
        self._grace_s = grace_s
        self._broker: EmbeddedBroker | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.catalog = TopicCatalog(settings.kafka.topic_prefix)
        self.ports = Ports()
        self.pki = DevPki(run_dir / "pki")
        self.cad_token = secrets.token_urlsafe(24)
        self.sms_auth_token = secrets.token_urlsafe(24)
        self.notify_ack_secret = secrets.token_urlsafe(32)
        #: Staff id → bearer token of notify's API, one per administrator of the directory.
        self.notify_tokens: dict[str, str] = {}
        self._restart = frozenset(self._components if restart is None else restart)
        #: How often the supervisor started each component again after it exited unasked.
        self.restarts: Counter[str] = Counter()
        self._stopped: set[str] = set()  # stopped on purpose: never restarted
        self._started_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def bootstrap_servers(self) -> str:
        """Where the broker listens."""
        return self.settings.kafka.bootstrap_servers or ""

    @property
    def gateway_address(self) -> str:
        """host:port of the gateway's gRPC endpoint (mTLS)."""
        return f"127.0.0.1:{self.ports.gateway}"

    @property
    def cad_simulator_url(self) -> str:
        """Base URL of the CAD simulator."""
        return f"https://127.0.0.1:{self.ports.cad_simulator}"

    @property
    def doorstate_url(self) -> str:
        """Base URL of the door-state query API."""
        return f"http://127.0.0.1:{self.ports.doorstate_web}"

    @property
    def notify_url(self) -> str:
        """Base URL of notify's web endpoint (acknowledgement links, CAP feed, status)."""
        return f"http://127.0.0.1:{self.ports.notify_web}"

    @property
    def sms_simulator_url(self) -> str:
        """Base URL of the SMS/voice provider simulator."""
        return f"http://127.0.0.1:{self.ports.sms_simulator}"

    @property
    def timeline_url(self) -> str:
        """Base URL of the timeline's HTTP API and reviewer's view."""
        return f"http://127.0.0.1:{self.ports.timeline_http}"

    @property
    def maildir(self) -> Path:
        """Where the demo's mail server keeps every message it received (a Maildir)."""
        return self.run_dir / "mail"

    @property
    def notify_operators_file(self) -> Path:
        """notify's operators file: administrators and the SHA-256 of their tokens."""
        return self.run_dir / "notify" / "operators.json"

    @property
    def notify_credentials_file(self) -> Path:
        """The tokens themselves (owner-only), for whoever calls notify's API by hand."""
        return self.run_dir / "notify" / "credentials.json"

    @property
    def pa_played_file(self) -> Path:
        """JSON lines of every announcement the simulated PA/signage connector played."""
        return self.run_dir / "pa-played.jsonl"

    def __enter__(self) -> Hub:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.settings.kafka.bootstrap_servers:
                broker = EmbeddedBroker(
                    durable_dir=self._durable_dir, run_dir=self.run_dir / "broker"
                )
                broker.start()
                self._broker = broker
                self.settings.kafka.bootstrap_servers = broker.bootstrap_servers
            ensure_topics(self.settings.kafka, self.catalog)
            if self._cad_simulator and "connectors.psap_cad" in self._components:
                self._start_cad_simulator()
            if self._cad_simulator and "services.notify" in self._components:
                self._start_notify_stand_ins()
            if "services.notify" in self._components:
                self._issue_notify_credentials()
            for component in self._components:
                self.start_component(component)
            if self._restart:
                self._supervisor = threading.Thread(
                    target=self._supervise, name="hub-supervisor", daemon=True
                )
                self._supervisor.start()
        except BaseException:
            self.close()
            raise
        return self

    # -- environment of each component -------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """Environment every component process gets."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "SAFEHUB_KAFKA__TOPIC_PREFIX": self.settings.kafka.topic_prefix,
            "SAFEHUB_KAFKA__SESSION_TIMEOUT_MS": str(self.settings.kafka.session_timeout_ms),
            "SAFEHUB_KAFKA__HEARTBEAT_INTERVAL_MS": str(self.settings.kafka.heartbeat_interval_ms),
            "SAFEHUB_LOG__LEVEL": self.settings.log.level,
            "SAFEHUB_LOG__FORMAT": self.settings.log.format.value,
            **self._env,
        }

    def component_env(self, module: str) -> dict[str, str]:
        """The variables ``module`` reads, pointing at this hub's ports and certificates."""
        server = self.pki.server()
        ca = str(self.pki.ca.cert)
        match module:
            case "services.gateway":
                return {
                    "SAFEHUB_GATEWAY__PORT": str(self.ports.gateway),
                    "SAFEHUB_GATEWAY__TLS_CERT_FILE": str(server.cert),
                    "SAFEHUB_GATEWAY__TLS_KEY_FILE": str(server.key),
                    "SAFEHUB_GATEWAY__TLS_CA_FILE": ca,
                }
            case "services.doorstate":
                return {"SAFEHUB_DOORSTATE__WEB_PORT": str(self.ports.doorstate_web)}
            case "connectors.psap_cad":
                return {
                    "SAFEHUB_PSAP_CAD__CAD_URL": f"{self.cad_simulator_url}/eido/v1/incidents",
                    "SAFEHUB_PSAP_CAD__CA_BUNDLE": ca,
                    "SAFEHUB_PSAP_CAD__LISTEN_PORT": str(self.ports.cad_callback),
                    "SAFEHUB_PSAP_CAD__LISTEN_CERT": str(server.cert),
                    "SAFEHUB_PSAP_CAD__LISTEN_KEY": str(server.key),
                    "SAFEHUB_PSAP_CAD__INBOUND_TOKEN": self.cad_token,
                    "SAFEHUB_PSAP_CAD__LEDGER_URL": f"sqlite:///{self.run_dir}/psap_cad.db",
                }
            case "services.notify":
                return {
                    "SAFEHUB_NOTIFY__HTTP_PORT": str(self.ports.notify_web),
                    "SAFEHUB_NOTIFY__PUBLIC_URL": self.notify_url,
                    "SAFEHUB_NOTIFY__ACK_SECRET": self.notify_ack_secret,
                    "SAFEHUB_NOTIFY__DATABASE_URL": f"sqlite:///{self.run_dir}/notify.db",
                    "SAFEHUB_NOTIFY__SMTP_HOST": "127.0.0.1",
                    "SAFEHUB_NOTIFY__SMTP_PORT": str(self.ports.smtp),
                    "SAFEHUB_NOTIFY__SMS_ENABLED": "true",
                    "SAFEHUB_NOTIFY__TWILIO__API_BASE_URL": self.sms_simulator_url,
                    "SAFEHUB_NOTIFY__TWILIO__AUTH_TOKEN": self.sms_auth_token,
                    "SAFEHUB_NOTIFY__OPERATORS_FILE": str(self.notify_operators_file),
                }
            case "services.timeline":
                return {
                    "SAFEHUB_TIMELINE__DATABASE_URL": f"sqlite:///{self.run_dir}/timeline.db",
                    "SAFEHUB_TIMELINE__HTTP_PORT": str(self.ports.timeline_http),
                    "SAFEHUB_TIMELINE__GRPC_PORT": str(self.ports.timeline_grpc),
                    "SAFEHUB_TIMELINE__TLS_CERT_FILE": str(server.cert),
                    "SAFEHUB_TIMELINE__TLS_KEY_FILE": str(server.key),
                    "SAFEHUB_TIMELINE__TLS_CA_FILE": ca,
                }
            case "connectors.access_control_sim":
                client = self.pki.client("acme-access-north")
                return {
                    "SAFEHUB_ACCESS_CONTROL_SIM__CLIENT_ID": "acme-access-north",
                    "SAFEHUB_ACCESS_CONTROL_SIM__GATEWAY_ADDRESS": self.gateway_address,
                    "SAFEHUB_ACCESS_CONTROL_SIM__TLS_CERT_FILE": str(client.cert),
                    "SAFEHUB_ACCESS_CONTROL_SIM__TLS_KEY_FILE": str(client.key),
                    "SAFEHUB_ACCESS_CONTROL_SIM__TLS_CA_FILE": ca,
                }
            case "connectors.pa_signage_sim":
                client = self.pki.client("pa-signage-north")
                return {
                    "SAFEHUB_PA_SIGNAGE_SIM__CLIENT_ID": "pa-signage-north",
                    "SAFEHUB_PA_SIGNAGE_SIM__GATEWAY_ADDRESS": self.gateway_address,
                    "SAFEHUB_PA_SIGNAGE_SIM__TLS_CERT_FILE": str(client.cert),
                    "SAFEHUB_PA_SIGNAGE_SIM__TLS_KEY_FILE": str(client.key),
                    "SAFEHUB_PA_SIGNAGE_SIM__TLS_CA_FILE": ca,
                    "SAFEHUB_PA_SIGNAGE_SIM__PLAYED_FILE": str(self.pa_played_file),
                }
        return {}

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        if name in self.processes and self.processes[name].poll() is None:
            raise SafeHubError(f"{name} is already running")
        log_path = self.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        if NICENESS.get(name):
            os.setpriority(os.PRIO_PROCESS, process.pid, NICENESS[name])
        log.info("component started", component=name, pid=process.pid, log=str(log_path))
        return process

    def _start_cad_simulator(self) -> None:
        server = self.pki.server()
        argv = [
            sys.executable, "-m", CAD_SIMULATOR,
            "--port", str(self.ports.cad_simulator),
            "--cert", str(server.cert), "--key", str(server.key),
            "--ca", str(self.pki.ca.cert),
            "--callback", f"https://127.0.0.1:{self.ports.cad_callback}/eido/v1/status",
        ]  # fmt: skip
        if self._cad_auto:
            argv.append("--auto")
        env = {**self.base_env(), "SAFEHUB_SIM_CALLBACK_TOKEN": self.cad_token}
        self._spawn(CAD_SIMULATOR, argv, env)
        self._wait_for_port(CAD_SIMULATOR, self.ports.cad_simulator)

    def _issue_notify_credentials(self) -> None:
        """A new random token per administrator of notify's directory (dev hub only)."""
        env = self.base_env()  # the directory notify will load, as notify resolves it
        named = env.get("SAFEHUB_NOTIFY__DIRECTORY_FILE") or env.get(DIRECTORY_FILE_VARIABLE)
        directory = Directory.load(Path(named) if named else default_directory_file())
        admins = [
            (school.id, member.id)
            for district in directory.districts
            for school in district.schools
            for member in school.staff
            if member.role is StaffRole.ADMINISTRATOR
        ]
        self.notify_tokens = {staff_id: secrets.token_urlsafe(32) for _, staff_id in admins}
        folder = self.notify_operators_file.parent
        folder.mkdir(parents=True, exist_ok=True)
        operators = [
            {"staff_id": staff_id, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
            for staff_id, token in self.notify_tokens.items()
        ]
        self.notify_operators_file.write_text(json.dumps({"operators": operators}, indent=1))
        tokens = {
            staff_id: {"school": school_id, "token": self.notify_tokens[staff_id]}
            for school_id, staff_id in admins
        }
        # Created owner-only before anything is written: these tokens release family messages.
        self.notify_credentials_file.unlink(missing_ok=True)
        descriptor = os.open(
            self.notify_credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(tokens, out, indent=1)
        log.info(
            "notify API credentials issued",
            administrators=len(tokens),
            file=str(self.notify_credentials_file),
        )

    def _start_notify_stand_ins(self) -> None:
        """The mail server and the SMS provider that notify delivers to on a laptop."""
        mailbox.Maildir(self.maildir, create=True)  # with its tmp/new/cur folders
        argv = [
            sys.executable, "-m", MAIL_SINK, "--nosetuid",
            "--listen", f"127.0.0.1:{self.ports.smtp}",
            "--class", "aiosmtpd.handlers.Mailbox", str(self.maildir),
        ]  # fmt: skip
        self._spawn(MAIL_SINK, argv, self.base_env())
        self._wait_for_port(MAIL_SINK, self.ports.smtp)
        argv = [
            sys.executable, "-m", SMS_SIMULATOR,
            "--port", str(self.ports.sms_simulator),
            "--inbound-url", f"{self.notify_url}/providers/twilio/inbound",
        ]  # fmt: skip
        # The token goes by environment, not argv, so it does not show in ps.
        env = {**self.base_env(), "SAFEHUB_SIM_TWILIO_AUTH_TOKEN": self.sms_auth_token}
        self._spawn(SMS_SIMULATOR, argv, env)
        self._wait_for_port(SMS_SIMULATOR, self.ports.sms_simulator)

    def ready_file(self, module: str) -> Path:
        """The file ``module`` writes (its pid) once ready; removed when it is (re)started."""
        return self.run_dir / "ready" / module

    def start_component(self, module: str, *, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start ``python -m module`` and (by default) wait until it reports ready."""
        process = self._launch(module, restarting=False)
        assert process is not None  # only a restart can be called off
        if wait:
            self._wait(module, self.ready_file(module).exists)
        return process

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            process = self.processes[name]
            if process.poll() is not None:
                raise SafeHubError(
                    f"{name} exited with code {process.returncode}; see "
                    f"{self.run_dir / 'logs' / (name + '.log')}"
                )
            if time.monotonic() > deadline:
                raise SafeHubError(f"{name} was not ready within {timeout} s")
            time.sleep(0.05)

    def _wait_for_port(self, name: str, port: int) -> None:
        def answers() -> bool:
            with socket.socket() as sock:
                sock.settimeout(0.2)
                return sock.connect_ex(("127.0.0.1", port)) == 0

        self._wait(name, answers)

    def _launch(self, module: str, *, restarting: bool) -> subprocess.Popen[bytes] | None:
        """Spawn ``module``; a restart is called off if it was stopped on purpose meanwhile."""
        ready = self.ready_file(module)
        ready.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.base_env(), **self.component_env(module), "SAFEHUB_READY_FILE": str(ready)}
        with self._lock:  # one start at a time: the supervisor never races start/stop
            if restarting and module in self._stopped:
                return None
            ready.unlink(missing_ok=True)
            process = self._spawn(module, [sys.executable, "-m", module], env)
            self._stopped.discard(module)
            self._started_at[module] = time.monotonic()
        return process

    def _supervise(self) -> None:
        """Start again every supervised component that exited without being stopped."""
        while not self._closing.wait(0.05):
            for module in sorted(self._restart):
                with self._lock:
                    if self._closing.is_set():
                        return
                    process = self.processes.get(module)
                    if process is None or module in self._stopped or process.poll() is None:
                        continue
                    now = time.monotonic()
                    if module not in self._not_before:
                        # First look at this exit: restart at once, unless it is crash-looping.
                        if now - self._started_at.get(module, 0.0) < CRASH_LOOP_S:
                            delay = self._backoff.get(module, RESTART_BACKOFF_S / 2) * 2
                            self._backoff[module] = min(delay, RESTART_BACKOFF_MAX_S)
                        else:
                            self._backoff.pop(module, None)
                        self._not_before[module] = now + self._backoff.get(module, 0.0)
                        log.warning(
                            "component exited unasked, restarting",
                            component=module,
                            code=process.returncode,
                            after_s=round(self._backoff.get(module, 0.0), 2),
                        )
                    if now < self._not_before[module]:
                        continue
                    del self._not_before[module]
                try:
                    if self._launch(module, restarting=True) is not None:
                        self.restarts[module] += 1
                except (OSError, SafeHubError):
                    log.exception("restart failed", component=module)

    def crash_component(self, module: str) -> int:
        """kill -9 ``module`` as a crash would (not a stop: the supervisor restarts it).

        Returns the pid killed; ``processes[module]`` holds another pid once restarted.
        """
        process = self.processes[module]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
        return process.pid

    def stop_component(self, module: str, *, kill: bool = False) -> int | None:
        """SIGTERM (drain) or SIGKILL (crash) one component and wait for it.

        Stopped on purpose: the supervisor does not start it again (``start_component`` does).
        """
        with self._lock:
            self._stopped.add(module)
            self._not_before.pop(module, None)
        process = self.processes.get(module)
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return process.wait(timeout=self._grace_s)
        except subprocess.TimeoutExpired:
            log.warning("component did not drain in time, killing", component=module)
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait(timeout=5)

    def close(self) -> None:
        """Stop components (reverse start order), then the embedded broker."""
        self._closing.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join(timeout=10)
        for module in reversed(list(self.processes)):
            self.stop_component(module)
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.stop()
