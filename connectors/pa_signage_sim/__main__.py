"""``python -m connectors.pa_signage_sim``."""

from connectors.pa_signage_sim.service import main

main()
