"""Tests of the tips service's building blocks (pure, no broker)."""
