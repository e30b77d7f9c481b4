"""Embedded infrastructure for running SafeHub on one machine (broker, later the store)."""

from __future__ import annotations

from safehub.embedded.broker import EmbeddedBroker

__all__ = ["EmbeddedBroker"]
