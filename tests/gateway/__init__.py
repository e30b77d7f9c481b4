"""The gateway: ingest, validation, limits, connector sessions, announcements."""
