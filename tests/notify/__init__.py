"""Notify: audiences, channels (and their contract), CAP, approvals, the store."""
