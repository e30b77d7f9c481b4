"""``python -m connectors.access_control_sim``."""

from connectors.access_control_sim.service import main

main()
