"""PSAP/CAD connector: incidents to 911 CAD as NENA EIDO, CAD status updates back to the hub."""
