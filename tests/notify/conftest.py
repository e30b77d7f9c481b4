"""Fixtures of notify's tests: the real SMTP server and SMS provider notify delivers to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.notify import SmtpSink
from tests.support.sms import ProviderSimProcess


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server on a free port, recording every message."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[ProviderSimProcess]:
    """The SMS/voice provider simulator as a process."""
    (tmp_path / "sim").mkdir()
    with ProviderSimProcess(tmp_path / "sim") as process:
        yield process
