"""``python -m services.notify``."""

from services.notify.service import main

main()
