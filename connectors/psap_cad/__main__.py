"""``python -m connectors.psap_cad`` runs the connector."""

from connectors.psap_cad.service import main

main()
