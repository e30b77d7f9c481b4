"""gRPC contracts: generated code imports and works, drift and compatibility checks catch changes.

The drift and breaking-change tests run on temporary copies of the repository (protos, tools,
generated code), never on the real tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from safehub.gen.safehub.common.v1 import door_pb2, place_pb2, srp_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "safehub" / "gen"
INGEST_PROTO = Path("protos/safehub/ingest/v1/ingest.proto")
GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "user.name=t", "-c", "user.email=t@t"]


def _buf() -> str:
    local = Path(sys.executable).parent / "buf"
    found = str(local) if local.is_file() else shutil.which("buf")
    if found is None:
        pytest.skip("buf not installed (pip install buf-bin)")
    return found


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **env},
    )


def _copy_repo(dest: Path) -> Path:
    """Copy what the proto tooling needs (protos, tools, generated code) into ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "protos", dest / "protos", ignore=ignore)
    shutil.copytree(REPO / "tools", dest / "tools", ignore=ignore)
    shutil.copytree(GEN, dest / "safehub" / "gen", ignore=ignore)
    return dest


def _commit_as_main(repo: Path) -> None:
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["commit", "-q", "-m", "contracts"],
    ):
        proc = _run([*GIT, *cmd], repo)
        assert proc.returncode == 0, proc.stderr


def _delete_device_id(repo: Path) -> None:
    """A breaking change: ReportPanicRequest.device_id (field 3) is removed."""
    proto = repo / INGEST_PROTO
    text = proto.read_text()
    assert "  string device_id = 3;\n" in text
    proto.write_text(text.replace("  string device_id = 3;\n", "  reserved 3;\n", 1))


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return _copy_repo(tmp_path / "repo")


@pytest.fixture
def committed_copy(repo_copy: Path) -> Path:
    _commit_as_main(repo_copy)
    return repo_copy


# --- generated code -------------------------------------------------------------------------


def test_generated_messages_round_trip() -> None:
    occurred = Timestamp(seconds=1_760_000_000, nanos=5)
    place = place_pb2.Place(school_id="sch-1", building="B", room="214")
    panic = ingest_pb2.ReportPanicRequest(
        client_event_id="c-1",
        place=place,
        device_id="btn-9",
        reporter_role=ingest_pb2.REPORTER_ROLE_TEACHER,
        panic_type=ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT,
        silent=True,
        occurred_at=occurred,
    )
    back = ingest_pb2.ReportPanicRequest.FromString(panic.SerializeToString())
    assert back == panic
    assert back.place.room == "214"
    assert back.occurred_at.nanos == 5

    response = ingest_pb2.ReportPanicResponse(event_id="e-1")
    assert not response.HasField("incident_hint")
    response.incident_hint = "inc-7"
    assert ingest_pb2.ReportPanicResponse.FromString(response.SerializeToString()).HasField(
        "incident_hint"
    )

    command = connector_pb2.HubMessage(
        lock_command=connector_pb2.LockCommand(
            command_id="cmd-1",
            place=place_pb2.Place(school_id="sch-1", building="B"),
            all_doors=connector_pb2.AllDoors(scope=connector_pb2.DOOR_SCOPE_EXTERIOR),
            target_state=connector_pb2.LOCK_TARGET_STATE_LOCK,
            deadline=occurred,
        )
    )
    parsed = connector_pb2.HubMessage.FromString(command.SerializeToString())
    assert parsed.WhichOneof("body") == "lock_command"
    assert parsed.lock_command.WhichOneof("target") == "all_doors"
    assert srp_pb2.SrpAction.Name(srp_pb2.SRP_ACTION_ALL_CLEAR) == "SRP_ACTION_ALL_CLEAR"
    assert door_pb2.DoorState.Value("DOOR_STATE_FORCED_OPEN") == door_pb2.DOOR_STATE_FORCED_OPEN


def test_generated_modules_live_under_safehub_gen() -> None:
    # Messages report their real module; proto names and gRPC paths keep the proto package.
    assert ingest_pb2.ReportPanicRequest.__module__ == "safehub.gen.safehub.ingest.v1.ingest_pb2"
    assert ingest_pb2.ReportPanicRequest.DESCRIPTOR.full_name == (
        "safehub.ingest.v1.ReportPanicRequest"
    )
    stray = re.compile(r"^\s*(from|import)\s+safehub\.(?!gen\.)", re.MULTILINE)
    sources = sorted(GEN.rglob("*.py")) + sorted(GEN.rglob("*.pyi"))
    assert sources
    offenders = [p.relative_to(REPO) for p in sources if stray.search(p.read_text())]
    assert offenders == []
    for package in (GEN, GEN / "safehub", GEN / "safehub" / "ingest" / "v1"):
        assert (package / "__init__.py").is_file()
    assert "make protos" in (GEN / "README.md").read_text()


class _Ingest(ingest_pb2_grpc.IngestServiceServicer):
    def ReportPanic(
        self, request: ingest_pb2.ReportPanicRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ReportPanicResponse:
        return ingest_pb2.ReportPanicResponse(
            event_id=f"evt-{request.client_event_id}", incident_hint="inc-1"
        )

    def StreamDoorStates(
        self, request_iterator: Iterator[ingest_pb2.ReportDoorStateRequest], context: object
    ) -> ingest_pb2.StreamDoorStatesResponse:
        response = ingest_pb2.StreamDoorStatesResponse()
        for index, item in enumerate(request_iterator):
            if item.place.school_id:
                response.accepted_count += 1
            else:
                response.rejected_count += 1
                response.errors.add(
                    index=index,
                    client_event_id=item.client_event_id,
                    reason=ingest_pb2.REJECT_REASON_INVALID_ARGUMENT,
                )
        return response


class _Connector(connector_pb2_grpc.ConnectorServiceServicer):
    def Attach(
        self, request_iterator: Iterator[connector_pb2.ConnectorMessage], context: object
    ) -> Iterator[connector_pb2.HubMessage]:
        for message in request_iterator:
            if message.WhichOneof("body") == "hello":
                yield connector_pb2.HubMessage(ping=connector_pb2.Ping(nonce="n-1"))


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # The .pyi stubs declare every RPC abstract; the runtime base answers UNIMPLEMENTED.
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(_Ingest(), server)  # type: ignore[abstract]
    connector_pb2_grpc.add_ConnectorServiceServicer_to_server(_Connector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        server.stop(grace=None)


def test_generated_stubs_serve_unary_client_and_bidi_streams(channel: grpc.Channel) -> None:
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)
    reply = ingest.ReportPanic(ingest_pb2.ReportPanicRequest(client_event_id="c-1"), timeout=10)
    assert (reply.event_id, reply.incident_hint) == ("evt-c-1", "inc-1")
    with pytest.raises(grpc.RpcError) as unimplemented:
        ingest.ReportCameraAlert(ingest_pb2.ReportCameraAlertRequest(), timeout=10)
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED

    items = [
        ingest_pb2.ReportDoorStateRequest(
            client_event_id=f"d-{i}",
            place=place_pb2.Place(school_id="sch-1" if i != 1 else ""),
            door_id=f"door-{i}",
            state=door_pb2.DOOR_STATE_LOCKED,
        )
        for i in range(3)
    ]
    summary = ingest.StreamDoorStates(iter(items), timeout=10)
    assert (summary.accepted_count, summary.rejected_count) == (2, 1)
    assert [(e.index, e.client_event_id) for e in summary.errors] == [(1, "d-1")]

    connector = connector_pb2_grpc.ConnectorServiceStub(channel)
    hello = connector_pb2.ConnectorMessage(
        hello=connector_pb2.Hello(connector_id="acme-1", school_ids=["sch-1"])
    )
    replies = list(connector.Attach(iter([hello]), timeout=10))
    assert [r.ping.nonce for r in replies] == ["n-1"]


# --- drift check ----------------------------------------------------------------------------


def test_drift_check_passes_on_clean_tree(repo_copy: Path) -> None:
    proc = _run([sys.executable, "tools/gen_protos.py", "--check"], repo_copy)
    assert proc.returncode == 0, proc.stderr


def test_drift_check_fails_after_generated_file_is_modified(repo_copy: Path) -> None:
    edited = repo_copy / "safehub/gen/safehub/ingest/v1/ingest_pb2.py"
    edited.write_text(edited.read_text() + "# hand edit\n")
    (repo_copy / "safehub/gen/safehub/common/v1/srp_pb2.pyi").unlink()
    (repo_copy / "safehub/gen/safehub/stray.py").write_text("")

    proc = _run([sys.executable, "tools/gen_protos.py", "--check"], repo_copy)

    assert proc.returncode == 1, proc.stderr
    assert "safehub/gen/safehub/ingest/v1/ingest_pb2.py (differs)" in proc.stderr
    assert "safehub/gen/safehub/common/v1/srp_pb2.pyi (missing)" in proc.stderr
    assert "safehub/gen/safehub/stray.py (unexpected)" in proc.stderr
    assert "ingest_pb2_grpc.py" not in proc.stderr


def test_drift_check_fails_when_protos_change_without_regeneration(repo_copy: Path) -> None:
    proto = repo_copy / INGEST_PROTO
    proto.write_text(
        proto.read_text().replace(
            "  string note = 9;\n", "  string note = 9;\n  // New.\n  string ticket = 10;\n"
        )
    )
    proc = _run([sys.executable, "tools/gen_protos.py", "--check"], repo_copy)
    assert proc.returncode == 1
    assert "ingest_pb2.py (differs)" in proc.stderr

    regen = _run([sys.executable, "tools/gen_protos.py"], repo_copy)
    assert regen.returncode == 0, regen.stderr
    assert _run([sys.executable, "tools/gen_protos.py", "--check"], repo_copy).returncode == 0


# --- buf ------------------------------------------------------------------------------------


def test_buf_lint_passes() -> None:
    proc = _run([_buf(), "lint", "protos"], REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_buf_lint_requires_documentation(repo_copy: Path) -> None:
    proto = repo_copy / INGEST_PROTO
    proto.write_text(
        proto.read_text().replace(
            "  string note = 9;\n", "  string note = 9;\n  string ticket = 10;\n"
        )
    )
    proc = _run([_buf(), "lint", "protos"], repo_copy)
    assert proc.returncode == 100
    assert 'Field "ticket" should have a non-empty comment' in proc.stdout


def test_buf_breaking_reports_removed_field(committed_copy: Path) -> None:
    buf = _buf()
    against = ".git#branch=main,subdir=protos"
    clean = _run([buf, "breaking", "protos", "--against", against], committed_copy)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    _delete_device_id(committed_copy)
    proc = _run([buf, "breaking", "protos", "--against", against], committed_copy)
    assert proc.returncode == 100
    assert 'field "3" with name "device_id"' in proc.stdout


def test_buf_breaking_reports_renumbered_field(committed_copy: Path) -> None:
    proto = committed_copy / INGEST_PROTO
    proto.write_text(proto.read_text().replace("string clip_url = 6;", "string clip_url = 16;"))
    proc = _run(
        [_buf(), "breaking", "protos", "--against", ".git#branch=main,subdir=protos"],
        committed_copy,
    )
    assert proc.returncode == 100
    assert "clip_url" in proc.stdout


# --- tools/check_protos.sh ------------------------------------------------------------------


def _check_script(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(["bash", "tools/check_protos.sh"], repo, PYTHON=sys.executable, BUF=_buf(), **env)


def test_check_script_skips_breaking_without_main(repo_copy: Path) -> None:
    proc = _check_script(repo_copy)
    assert proc.returncode == 0, proc.stderr
    assert "not a git checkout; skipping buf breaking" in proc.stderr


def test_check_script_passes_on_clean_tree(committed_copy: Path) -> None:
    proc = _check_script(committed_copy)
    assert proc.returncode == 0, proc.stderr
    assert "buf breaking: passed against main" in proc.stderr


@pytest.mark.parametrize("mode", ["git", "archive"])
def test_check_script_fails_on_breaking_change(committed_copy: Path, mode: str) -> None:
    _delete_device_id(committed_copy)
    proc = _check_script(committed_copy, PROTOS_AGAINST_MODE=mode)
    assert proc.returncode == 1
    assert 'field "3" with name "device_id"' in proc.stdout
    assert "breaking changes against 'main'" in proc.stderr


def test_check_script_falls_back_when_buf_cannot_read_git(
    committed_copy: Path, tmp_path: Path
) -> None:
    # A buf that fails on any .git input, as it would on a repository it cannot read.
    wrapper = tmp_path / "buf"
    wrapper.write_text(
        '#!/usr/bin/env bash\nfor a in "$@"; do [[ "$a" == .git#* ]] && exit 1; done\n'
        f'exec "{_buf()}" "$@"\n'
    )
    wrapper.chmod(0o755)
    _delete_device_id(committed_copy)
    proc = _run(
        ["bash", "tools/check_protos.sh"], committed_copy, PYTHON=sys.executable, BUF=str(wrapper)
    )
    assert proc.returncode == 1
    assert "retrying on an exported copy" in proc.stderr
    assert 'field "3" with name "device_id"' in proc.stdout


def test_check_script_fails_on_drift(committed_copy: Path) -> None:
    edited = committed_copy / "safehub/gen/safehub/connector/v1/connector_pb2.pyi"
    edited.write_text(edited.read_text() + "\n")
    proc = _check_script(committed_copy)
    assert proc.returncode == 1
    assert "connector_pb2.pyi (differs)" in proc.stderr
