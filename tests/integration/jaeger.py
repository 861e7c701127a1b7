"""Jaeger for the tracing tests: the binary of `scripts/jaeger build`, started on free ports.

Jaeger v2 is an OpenTelemetry Collector distribution: here an OTLP receiver (gRPC and HTTP)
writing to in-memory storage, and the query service's HTTP API (`/api/v3/traces/ID`: the trace
as OTLP JSON, links and attributes included).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.harness import REPO, Process, _env, free_port, wait_until

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"""


def binary() -> str | None:
    """The cached Jaeger binary, or None when `scripts/jaeger build` has not made it."""
    found = subprocess.run(
        [str(REPO / "scripts" / "jaeger"), "path"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


@dataclass
class Jaeger:
    """One Jaeger process with in-memory storage."""

    tmp: Path
    path: str
    otlp_grpc: int = field(default_factory=free_port)
    otlp_http: int = field(default_factory=free_port)
    query: int = field(default_factory=free_port)
    query_grpc: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def otlp_endpoint(self) -> str:
        """The OTLP/gRPC endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)."""
        return f"http://127.0.0.1:{self.otlp_grpc}"

    def start(self) -> Jaeger:
        config = self.tmp / "jaeger.yaml"
        config.write_text(
            CONFIG.format(
                query=self.query,
                query_grpc=self.query_grpc,
                otlp_grpc=self.otlp_grpc,
                otlp_http=self.otlp_http,
            )
        )
        args = [self.path, "--config", str(config)]
        self.process = Process("jaeger", args, _env({}), self.tmp / "jaeger.log").start()
        try:
            wait_until(self._answers, 30, "Jaeger's query API")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        assert self.process is not None and self.process.proc is not None
        if self.process.proc.poll() is not None:
            raise AssertionError(f"Jaeger exited: {self.process.output()[-2000:]}")
        try:
            self.get("/api/services")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.query}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of a trace as OTLP JSON (with its service name under `service`)."""
        try:
            answer = self.get(f"/api/v3/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        found = []
        for resource in answer.get("result", {}).get("resourceSpans", []):
            attrs = resource.get("resource", {}).get("attributes", [])
            service = next(
                (a["value"].get("stringValue") for a in attrs if a["key"] == "service.name"), ""
            )
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    found.append({**span, "service": service})
        return found

    def operations(self, service: str) -> set[str]:
        """The span names a service has sent."""
        answer = self.get(f"/api/v3/operations?service={service}")
        return {op["name"] for op in answer.get("operations") or []}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    """A span's (or link's) OTLP JSON attributes as plain values."""
    return {a["key"]: _value(a["value"]) for a in span.get("attributes", [])}


def _value(value: dict[str, Any]) -> Any:
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in value:
            return value[kind]
    if "intValue" in value:
        return int(value["intValue"])
    return None
