"""Each deployable's ``manifest.toml``: what the dev supervisor needs to run it.

A deployable folder (``services/<name>``, ``connectors/<name>``, ``vendors/<name>``,
``simulators/<name>``) holds a small manifest beside its code::

    module = "connectors.psap_cad"   # what ``python -m`` runs
    kind = "connector"               # service | connector | vendor | simulator
    start_order = 40                 # consumers before the gateway that feeds them
    priority = "life-safety"         # life-safety | standard | bulk
    stand_in_for = []                # simulators: started when one of these runs
    args = []                        # extra command-line arguments (templates)
    ready = "file"                   # "file" (SAFEHUB_READY_FILE) or "port.<name>"

    [env]                            # the variables it reads, as templates
    SAFEHUB_PSAP_CAD__LISTEN_PORT = "{port.cad_callback}"

Templates are ``str.format`` strings over ``port.<name>`` (a free loopback port per name,
shared by every manifest that names it), ``secret.<name>`` (a random secret per name),
``tls.server_cert``/``server_key``/``ca``/``client_cert``/``client_key`` (dev PKI; the client
certificate is issued for the manifest's ``client_id``), ``client_id`` and ``run_dir``.
Adding a deployable is its folder and its manifest: the supervisor finds it here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from safehub.kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

#: Folders whose sub-folders are deployables, one manifest each.
HOMES = ("services", "connectors", "vendors", "simulators")


class Kind(StrEnum):
    """What sort of deployable a manifest describes."""

    SERVICE = "service"  # a hub service on the bus
    CONNECTOR = "connector"  # a hub-side adapter to an outside system (CAD, SIS, FHIR)
    VENDOR = "vendor"  # a gateway-attached program on the vendor's side
    SIMULATOR = "simulator"  # a stand-in for a third party that cannot run here


class Priority(StrEnum):
    """How the scheduler should treat it when the machine is saturated."""

    LIFE_SAFETY = "life-safety"
    STANDARD = "standard"
    BULK = "bulk"  # niced on a laptop; a lower priority class on Kubernetes


#: ``nice`` increment per priority on one box (Kubernetes uses priority classes instead).
NICENESS = {Priority.LIFE_SAFETY: 0, Priority.STANDARD: 0, Priority.BULK: 10}


@dataclass(frozen=True)
class Manifest:
    """One deployable, as its ``manifest.toml`` declares it."""

    module: str
    kind: Kind
    start_order: int
    priority: Priority = Priority.STANDARD
    client_id: str | None = None
    stand_in_for: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ready: str = "file"
    env: Mapping[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def niceness(self) -> int:
        """The ``nice`` increment the supervisor applies."""
        return NICENESS[self.priority]

    @property
    def ready_port(self) -> str | None:
        """The port name whose answer means ready (None: the ready file)."""
        return self.ready.removeprefix("port.") if self.ready.startswith("port.") else None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Parse one manifest (ConfigError naming the file and the field that is wrong)."""
        try:
            raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable TOML manifest ({exc})") from exc
        known = {
            "module", "kind", "start_order", "priority", "client_id", "stand_in_for",
            "args", "ready", "env",
        }  # fmt: skip
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown manifest field(s) {', '.join(unknown)}")
        try:
            manifest = cls(
                module=str(raw["module"]),
                kind=Kind(raw["kind"]),
                start_order=int(raw["start_order"]),
                priority=Priority(raw.get("priority", Priority.STANDARD)),
                client_id=raw.get("client_id"),
                stand_in_for=tuple(raw.get("stand_in_for", ())),
                args=tuple(str(a) for a in raw.get("args", ())),
                ready=str(raw.get("ready", "file")),
                env={str(k): str(v) for k, v in raw.get("env", {}).items()},
                path=path,
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: missing manifest field {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        # Our own deployables run from their folder; a third-party stand-in (the mail sink)
        # names the installed module it runs.
        folder = ".".join(path.parent.parts[-2:])
        if manifest.module.split(".")[0] in HOMES and manifest.module != folder:
            raise ConfigError(f"{path}: module is {manifest.module!r}, its folder says {folder!r}")
        return manifest


def discover(root: Path = ROOT, homes: Iterable[str] = HOMES) -> dict[str, Manifest]:
    """Every deployable's manifest under ``root``, by module, in start order."""
    found = [
        Manifest.load(path)
        for home in homes
        for path in sorted((root / home).glob("*/manifest.toml"))
    ]
    found.sort(key=lambda m: (m.start_order, m.module))
    return {m.module: m for m in found}
