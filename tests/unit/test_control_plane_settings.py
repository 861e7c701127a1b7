"""Settings of the control plane: secure defaults, TLS settings that fit together, tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from dataflow.cli.base import bad_value
from dataflow.cli.engine import EngineCommand, check_files
from dataflow.proxy.settings import ProxySettings
from dataflow.settings import Settings
from tests.cli import parse


def engine(argv: list[str]) -> Settings:
    """The settings of `dataflow engine` with `argv`; its files checked as at start-up."""
    settings = parse(EngineCommand, argv)
    check_files(settings)
    return settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SELDON_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_default_replica_ids_are_the_host_name_and_differ_per_instance() -> None:
    import socket

    ids = {Settings().dataflow_replica_id for _ in range(20)}
    assert len(ids) == 20
    for replica in ids:
        host, _, suffix = replica.rpartition("-")
        assert host == socket.gethostname() and len(suffix) == 6
        int(suffix, 16)
    assert Settings(dataflow_replica_id="engine-a").dataflow_replica_id == "engine-a"


def test_engine_defaults() -> None:
    s = Settings()
    assert s.health_server_host == "0.0.0.0"  # probes come from outside the pod
    assert s.upstream_security_protocol == "PLAINTEXT"
    assert engine(["--health-server-host", "127.0.0.1"]).health_server_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--upstream-tls-ca-path=/ca.pem"],
            "bad value '/ca.pem' for --upstream-tls-ca-path: Value error, only used with "
            "SELDON_UPSTREAM_SECURITY_PROTOCOL=SSL",
        ),
        (
            ["--upstream-security-protocol=SSL", "--upstream-tls-cert-path=/c.pem"],
            "for SELDON_UPSTREAM_TLS_KEY_PATH: Value error, give SELDON_UPSTREAM_TLS_CERT_PATH "
            "and SELDON_UPSTREAM_TLS_KEY_PATH together",
        ),
        (["--upstream-security-protocol=TLS"], "for --upstream-security-protocol"),
        (["--health-server-host="], "for --health-server-host"),
    ],
)
def test_bad_upstream_tls_settings_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        engine(argv)
    reason = bad_value(info.value, EngineCommand, argv)
    assert message in reason and "\n" not in reason


def test_upstream_tls_settings(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem"))
    for f in (ca, cert, key):
        f.write_text("")  # the engine refuses a file it cannot read
    s = engine(
        [
            "--upstream-security-protocol=SSL",
            f"--upstream-tls-ca-path={ca}",
            f"--upstream-tls-cert-path={cert}",
            f"--upstream-tls-key-path={key}",
        ]
    )
    assert (s.upstream_tls_ca_path, s.upstream_tls_cert_path) == (str(ca), str(cert))
    assert engine(["--upstream-security-protocol=SSL"]).upstream_tls_ca_path == ""


def test_proxy_defaults_are_local() -> None:
    s = ProxySettings()
    assert s.host == "127.0.0.1"
    assert s.state_dir == Path(".proxy-state")
    assert s.bearer_token() is None
    assert (s.tls_cert_path, s.tls_client_ca_path) == ("", "")


def test_proxy_token_from_env_or_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SELDON_PROXY_TOKEN", "from-env")
    assert ProxySettings().bearer_token() == "from-env"
    assert "from-env" not in repr(ProxySettings())
    monkeypatch.delenv("SELDON_PROXY_TOKEN")
    (tmp_path / "token").write_text("  from-file  \nsecond line\n")
    assert ProxySettings(token_path="token").bearer_token() == "from-file"
    with pytest.raises(ValueError, match="token file missing: No such file"):
        ProxySettings(token_path="missing").bearer_token()
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(ValueError, match="token file empty: empty"):
        ProxySettings(token_path="empty").bearer_token()
    with pytest.raises(ValidationError, match="not both"):
        ProxySettings(token="x", token_path="token")


def test_proxy_tls_settings_fit_together() -> None:
    with pytest.raises(ValidationError, match="TLS_KEY_PATH together"):
        ProxySettings(tls_cert_path="c.pem")
    with pytest.raises(ValidationError, match="TLS_KEY_PATH together"):
        ProxySettings(tls_key_path="k.pem")
    with pytest.raises(ValidationError, match="mutual TLS needs"):
        ProxySettings(tls_client_ca_path="ca.pem")
    s = ProxySettings(tls_cert_path="c.pem", tls_key_path="k.pem", tls_client_ca_path="ca.pem")
    assert s.tls_client_ca_path == "ca.pem"
