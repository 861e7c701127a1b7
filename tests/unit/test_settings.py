"""Settings: reference defaults and masked secrets (flags, precedence and errors: test_cli)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("SELDON_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_reference_defaults() -> None:
    s = Settings()
    assert (s.upstream_host, s.upstream_port, s.health_server_port) == ("0.0.0.0", 9008, 8000)
    assert s.kafka_join_window_millis == 60000
    assert s.kafka_max_message_size_bytes == 1_000_000_000
    assert s.dataflow_replica_id  # the host name


def test_secrets_are_masked() -> None:
    s = Settings(kafka_sasl_password="hunter2")
    assert "hunter2" not in str(s.masked())
    assert s.kafka_sasl_password.get_secret_value() == "hunter2"
