"""``python -m vendors.pa_signage_sim``."""

from vendors.pa_signage_sim.service import main

main()
