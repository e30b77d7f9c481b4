"""Rosters: the OneRoster CSV codec and the REST client against the SIS simulator."""
