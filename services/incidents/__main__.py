"""``python -m services.incidents``."""

from services.incidents.service import main

main()
