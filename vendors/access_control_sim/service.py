"""The access-control simulator deployable (``python -m vendors.access_control_sim``)."""

from __future__ import annotations

from safehub.kernel.runtime import Runtime, run
from vendors.access_control_sim.settings import AccessControlSimSettings
from vendors.access_control_sim.sim import AccessControlSim

NAME = "access_control_sim"


def setup(runtime: Runtime[AccessControlSimSettings]) -> None:
    """Run the simulator in a runtime thread; stop it on drain."""
    AccessControlSim.serve(runtime, runtime.settings.access_control_sim, name="access-control-sim")


def main() -> None:
    """Entry point."""
    run(NAME, AccessControlSimSettings, setup)
