"""Incidents: the model, the service, recovery after a kill."""
