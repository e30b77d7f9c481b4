"""psap_cad: EIDO to CAD, the ledger, status back."""
