"""incidents: correlates school signals into incidents with SRP state (the emergency core)."""
