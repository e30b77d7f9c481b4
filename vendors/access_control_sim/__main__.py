"""``python -m vendors.access_control_sim``."""

from vendors.access_control_sim.service import main

main()
