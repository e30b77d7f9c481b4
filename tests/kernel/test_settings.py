"""Settings: typed, from SAFEHUB_* variables, secrets masked, wrong values named."""

from __future__ import annotations

import pytest

from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import HubSettings, load_settings


def test_reads_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHUB_KAFKA__FETCH_WAIT_MAX_MS", "10")
    monkeypatch.setenv("SAFEHUB_KAFKA__BOOTSTRAP_SERVERS", "broker:9092")
    settings = load_settings(HubSettings)
    assert settings.kafka.fetch_wait_max_ms == 10
    assert settings.kafka.client_config()["bootstrap.servers"] == "broker:9092"


def test_conventional_bootstrap_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEHUB_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    assert load_settings(HubSettings).kafka.bootstrap_servers == "k1:9092,k2:9092"


def test_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHUB_KAFKA__SESSION_TIMEOUT_MS", "soon")
    with pytest.raises(ConfigError, match="SAFEHUB_KAFKA__SESSION_TIMEOUT_MS"):
        load_settings(HubSettings)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHUB_KAFKA__SASL_PASSWORD", "hunter2")
    settings = load_settings(HubSettings)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.model_dump_json()
    monkeypatch.setenv("SAFEHUB_KAFKA__BOOTSTRAP_SERVERS", "b:1")
    assert load_settings(HubSettings).kafka.client_config()["sasl.password"] == "hunter2"


def test_missing_bootstrap_fails_with_the_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SAFEHUB_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        load_settings(HubSettings).kafka.client_config()
