"""``python -m services.tips``."""

from services.tips.service import main

main()
