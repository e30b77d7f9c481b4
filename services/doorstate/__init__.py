"""doorstate: live door lock states per school and lockdown confirmation (faust worker)."""
