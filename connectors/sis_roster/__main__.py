"""``python -m connectors.sis_roster`` runs the connector."""

from connectors.sis_roster.service import main

main()
