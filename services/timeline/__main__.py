"""``python -m services.timeline``."""

from services.timeline.service import main

main()
