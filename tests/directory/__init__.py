"""The live directory: LivePeople, the seed import, the directory service, notify following it."""
