"""Settings: names, precedence, `.env`, one-line errors, and --help."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow.settings import Settings, SettingsError, build_parser, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("SELDON_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_demo_flags_are_accepted() -> None:
    s = load_settings(
        [
            "--kafka-bootstrap-servers=localhost:9092",
            "--upstream-host=localhost",
            "--upstream-port=10101",
            "--num-cores=2",
        ]
    )
    assert (s.kafka_bootstrap_servers, s.upstream_host, s.upstream_port, s.num_cores) == (
        "localhost:9092",
        "localhost",
        10101,
        2,
    )


def test_flags_beat_env_which_beats_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "SELDON_UPSTREAM_PORT=1111\nSELDON_UPSTREAM_HOST=from-dotenv\n"
        "KAFKA_IMAGE=apache/kafka:4.1.1\nSELDON_NOT_A_SETTING=x\n"
    )
    monkeypatch.setenv("SELDON_UPSTREAM_PORT", "2222")
    assert load_settings([]).upstream_port == 2222
    assert load_settings([]).upstream_host == "from-dotenv"
    assert load_settings(["--upstream-port", "3333"]).upstream_port == 3333


def test_reference_defaults() -> None:
    s = Settings()
    assert (s.upstream_host, s.upstream_port, s.health_server_port) == ("0.0.0.0", 9008, 8000)
    assert s.kafka_join_window_millis == 60000
    assert s.kafka_max_message_size_bytes == 1_000_000_000
    assert s.dataflow_replica_id  # the host name


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--upstream-port=abc"], {}, "bad value 'abc' for --upstream-port"),
        ([], {"SELDON_UPSTREAM_PORT": "70000"}, "bad value '70000' for SELDON_UPSTREAM_PORT"),
        (["--kafka-security-protocol=TLS"], {}, "for --kafka-security-protocol"),
        (["--no-such-flag=1"], {}, "unknown argument '--no-such-flag=1'"),
    ],
)
def test_bad_values_are_one_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_help_lists_every_setting_with_env_name_and_default() -> None:
    text = " ".join(build_parser().format_help().split())
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert f"env SELDON_{name.upper()}" in text
    assert "default 9008" in text and "default 'localhost:9092'" in text


def test_secrets_are_masked() -> None:
    s = Settings(kafka_sasl_password="hunter2")
    assert "hunter2" not in str(s.masked())
    assert s.kafka_sasl_password.get_secret_value() == "hunter2"
