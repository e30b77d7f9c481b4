"""The PA / signage simulator deployable (``python -m vendors.pa_signage_sim``)."""

from __future__ import annotations

from safehub.kernel.runtime import Runtime, run
from vendors.pa_signage_sim.settings import PaSignageSimSettings
from vendors.pa_signage_sim.sim import PaSignageSim

NAME = "pa_signage_sim"


def setup(runtime: Runtime[PaSignageSimSettings]) -> None:
    """Run the simulator in a runtime thread; stop it on drain."""
    PaSignageSim.serve(runtime, runtime.settings.pa_signage_sim, name="pa-signage-sim")


def main() -> None:
    """Entry point."""
    run(NAME, PaSignageSimSettings, setup)
