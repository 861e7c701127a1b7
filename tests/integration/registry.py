"""Apicurio Registry for the wire-format tests: the app of `scripts/registry build`, started on a
free port, its storage H2 in memory; the engine talks to its Confluent-compatible API
(`/apis/ccompat/v7`), as it would to Confluent's Schema Registry.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.harness import REPO, Process, _env, free_port, wait_until

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def jar() -> str | None:
    """The built registry's jar, or None when `scripts/registry build` has not made it."""
    found = subprocess.run(
        [str(REPO / "scripts" / "registry"), "path"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


@dataclass
class Apicurio:
    """One Apicurio Registry process."""

    tmp: Path
    path: str
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API (schemaRegistry.client.URL)."""
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"

    def start(self) -> Apicurio:
        args = ["java", "-Xmx384m", f"-Dquarkus.http.port={self.port}",
                "-Dquarkus.http.host=127.0.0.1", "-jar", self.path]  # fmt: skip
        self.process = Process("apicurio", args, _env({}), self.tmp / "apicurio.log").start()
        try:
            wait_until(self._answers, 180, "Apicurio Registry's API")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def _answers(self) -> bool:
        assert self.process is not None and self.process.proc is not None
        if self.process.proc.poll() is not None:
            raise AssertionError(f"Apicurio Registry exited: {self.process.output()[-2000:]}")
        try:
            self.call("GET", "/subjects")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": CONTENT_TYPE}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def register(self, subject: str, schema: str) -> int:
        """Register a protobuf schema as a registry-aware producer does; its id."""
        answer = self.call("POST", f"/subjects/{_quote(subject)}/versions",
                           {"schemaType": "PROTOBUF", "schema": schema})  # fmt: skip
        return int(answer["id"])

    def latest(self, subject: str) -> dict[str, Any]:
        """The latest version of `subject` (its `id`, `schema`, `schemaType`)."""
        answer: dict[str, Any] = self.call("GET", f"/subjects/{_quote(subject)}/versions/latest")
        return answer


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")
