"""The hub supervisor behind ``safehub up`` and ``safehub demo``.

Starts the embedded broker unless ``KAFKA_BOOTSTRAP_SERVERS`` names a real cluster, creates
the declared topics, issues development certificates, then runs each deployable as its own
process (``python -m <module>``), exactly as they run on Kubernetes, waiting for each to
report ready. What to run, in which order, with which variables and priority comes from each
deployable's ``manifest.toml`` (:mod:`safehub.devstack.manifest`). Before starting them it
imports the seed file's people into the people topic (once), so the demo's people come from
the live directory. Without a configured CAD it also runs the simulators standing in for
third parties (the 911 centre's CAD, the SMS provider, a mail server) so the hub works on a
laptop. Notify's API gets a fresh
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
from dataclasses import dataclass
from pathlib import Path

import structlog

from safehub.devstack.broker import EmbeddedBroker
from safehub.devstack.manifest import ROOT, Kind, Manifest, discover
from safehub.devstack.pki import DevPki
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import DIRECTORY_FILE_VARIABLE, default_directory_file
from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.live_directory import publish_directory_seed
from safehub.kernel.live_people import publish_seed
from safehub.kernel.people import People
from safehub.kernel.settings import HubSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)


#: Every deployable's manifest (services/, connectors/, vendors/, simulators/), by module.
MANIFESTS = discover()

#: Deployables ``safehub up`` runs, in start order (consumers before the gateway that feeds them).
DEFAULT_COMPONENTS: tuple[str, ...] = tuple(
    module for module, m in MANIFESTS.items() if m.kind is not Kind.SIMULATOR
)

#: A component that exits within this long of its start is crash-looping: its next restart
#: waits (doubling from RESTART_BACKOFF_S up to RESTART_BACKOFF_MAX_S) instead of spinning.
CRASH_LOOP_S = 10.0
#: The dev hub's tips analyst, and the phone number texts to Lincoln High School's tip line go to.
TIPS_ANALYST = "ana-state-centre"
TIP_LINE = "+15557770100"
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0


def free_port() -> int:
    """A free loopback port (released at once; the component binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Ports:
    """Loopback ports of the hub's endpoints, one per name a manifest uses (``port.<name>``)."""

    def __init__(self) -> None:
        self._ports: dict[str, int] = {}

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._ports:
            self._ports[name] = free_port()
        return self._ports[name]


class Secrets:
    """Random shared secrets of this hub, one per name a manifest uses (``secret.<name>``)."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._values:
            self._values[name] = secrets.token_urlsafe(32)
        return self._values[name]


@dataclass(frozen=True)
class _Tls:
    server_cert: str
    server_key: str
    ca: str
    client_cert: str = ""
    client_key: str = ""


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
        self.secrets = Secrets()
        #: Staff id → bearer token of notify's API, one per administrator of the directory.
        self.notify_tokens: dict[str, str] = {}
        #: The state-centre analyst's bearer token of the tips service's API.
        self.tips_analyst_token = ""
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
    def cad_token(self) -> str:
        """The bearer token the CAD (simulator) presents on status callbacks."""
        return self.secrets.cad_token

    @property
    def sms_auth_token(self) -> str:
        """The SMS provider (simulator) account's auth token, which signs its callbacks."""
        return self.secrets.sms_auth_token

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
    def tips_url(self) -> str:
        """Base URL of the tips service (public form and thread, SMS webhook, analysts' API)."""
        return f"http://127.0.0.1:{self.ports.tips_http}"

    @property
    def tips_analysts_file(self) -> Path:
        """The tips service's analysts file (the SHA-256 of each analyst's token)."""
        return self.run_dir / "tips" / "analysts.json"

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
            self._seed_directory()
            if self._cad_simulator:
                self._start_stand_ins()
            if "services.notify" in self._components:
                self._issue_notify_credentials()
            if "services.tips" in self._components:
                self._issue_tips_analysts()
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
        """The variables ``module`` reads (its manifest's ``[env]``), filled in for this hub."""
        manifest = MANIFESTS.get(module)
        if manifest is None:
            return {}
        return {name: self._fill(manifest, value) for name, value in manifest.env.items()}

    def _fill(self, manifest: Manifest, template: str) -> str:
        """One manifest template with this hub's ports, secrets, certificates and run dir."""
        server = self.pki.server()
        tls = _Tls(str(server.cert), str(server.key), str(self.pki.ca.cert))
        if manifest.client_id:
            client = self.pki.client(manifest.client_id)
            tls = _Tls(tls.server_cert, tls.server_key, tls.ca, str(client.cert), str(client.key))
        try:
            return template.format(
                port=self.ports,
                secret=self.secrets,
                tls=tls,
                client_id=manifest.client_id or "",
                run_dir=self.run_dir,
            )
        except (AttributeError, KeyError, IndexError, ValueError) as exc:
            raise SafeHubError(f"{manifest.path}: cannot fill {template!r} ({exc})") from exc

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
        manifest = MANIFESTS.get(name)
        if manifest is not None and manifest.niceness:
            os.setpriority(os.PRIO_PROCESS, process.pid, manifest.niceness)
        log.info("component started", component=name, pid=process.pid, log=str(log_path))
        return process

    def _start_stand_ins(self) -> None:
        """The simulators standing in for third parties the chosen components talk to."""
        mailbox.Maildir(self.maildir, create=True)  # the mail sink's folder, with tmp/new/cur
        for manifest in MANIFESTS.values():
            if manifest.kind is not Kind.SIMULATOR:
                continue
            if not set(manifest.stand_in_for) & set(self._components):
                continue
            argv = [sys.executable, "-m", manifest.module]
            argv += [self._fill(manifest, arg) for arg in manifest.args]
            if manifest.module == "simulators.cad" and self._cad_auto:
                argv.append("--auto")  # the CAD answers each incident (acknowledged, en route)
            env = {**self.base_env(), **self.component_env(manifest.module)}
            self._spawn(manifest.module, argv, env)
            port = manifest.ready_port
            if port is not None:
                self._wait_for_port(manifest.module, getattr(self.ports, port))

    def _seed_directory(self) -> None:
        """Import the seed file into the directory and people topics (once: re-seeding
        publishes nothing), so every service's places and people come from the live directory."""
        env = self.base_env()
        named = env.get(DIRECTORY_FILE_VARIABLE)
        codec = Codec.from_contracts()
        with EventProducer(
            self.settings.kafka, codec, self.catalog, client_id="hub-seed"
        ) as producer:
            for publish in (publish_directory_seed, publish_seed):
                publish(
                    producer,
                    Path(named) if named else default_directory_file(),
                    kafka=self.settings.kafka,
                    catalog=self.catalog,
                    codec=codec,
                )

    def _issue_notify_credentials(self) -> None:
        """A new random token per administrator in notify's people file (dev hub only)."""
        env = self.base_env()  # the file notify will load its people from, as notify resolves it
        named = env.get("SAFEHUB_NOTIFY__DIRECTORY_FILE") or env.get(DIRECTORY_FILE_VARIABLE)
        people = People.load(Path(named) if named else default_directory_file())
        admins = [
            (school.id, member.id)
            for school in people.schools
            for member in people.administrators(school.id)
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

    def _issue_tips_analysts(self) -> None:
        """One state-centre analyst (every district) with a new random token (dev hub only)."""
        self.tips_analyst_token = secrets.token_urlsafe(32)
        self.tips_analysts_file.parent.mkdir(parents=True, exist_ok=True)
        analyst = {
            "id": TIPS_ANALYST,
            "name": "State safety centre analyst",
            "token_sha256": hashlib.sha256(self.tips_analyst_token.encode()).hexdigest(),
            "districts": ["*"],
        }
        self.tips_analysts_file.write_text(json.dumps({"analysts": [analyst]}, indent=1))
        log.info("tips analyst credentials issued", analyst=TIPS_ANALYST)

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
