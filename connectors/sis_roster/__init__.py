"""The SIS roster connector: OneRoster rosters from a student information system."""
