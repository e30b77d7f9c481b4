"""``python -m services.directory``."""

from services.directory.service import main

main()
