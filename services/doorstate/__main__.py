"""``python -m services.doorstate``."""

from services.doorstate.service import main

main()
