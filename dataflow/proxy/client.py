"""A small synchronous client of the proxy's HTTP control API (used by the CLI and tests)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:10102"


class ClientError(RuntimeError):
    """The proxy could not be reached, answered with an error, or did not settle in time."""


class ControlClient:
    """Calls the control API of a running proxy.

    Args:
        url: base URL of the control API, e.g. `http://127.0.0.1:10102`.
        timeout: seconds per HTTP request.
        token: the bearer token to send (None: none).
    """

    def __init__(
        self, url: str = DEFAULT_URL, timeout: float = 10.0, token: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token

    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        if body is not None:
            request.add_header("Content-Type", "application/yaml")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                error = json.loads(e.read() or b"null")["error"]
            except (ValueError, KeyError, TypeError):
                error = f"HTTP {e.code} {e.reason}"
            raise ClientError(str(error)) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(f"cannot reach the proxy at {self.url}: {reason}") from None

    def pipelines(self) -> list[dict[str, Any]]:
        """`GET /pipelines`."""
        result: list[dict[str, Any]] = self._call("GET", "/pipelines")
        return result

    def pipeline(self, name: str) -> dict[str, Any]:
        """`GET /pipelines/{name}`."""
        result: dict[str, Any] = self._call("GET", f"/pipelines/{urllib.parse.quote(name)}")
        return result

    def describe(self, name: str) -> dict[str, Any]:
        """`GET /pipelines/{name}/describe`: the pipeline's steps with every engine's live
        figures summed per step, and each engine's under `engines` (see `dataflow.describe`).

        Raises:
            ClientError: unknown pipeline, or the call failed.
        """
        path = f"/pipelines/{urllib.parse.quote(name)}/describe"
        result: dict[str, Any] = self._call("GET", path)
        return result

    def load(self, text: str, source: str) -> dict[str, Any]:
        """`POST /pipelines`: load one spec file's text; errors name `source`.

        Returns:
            `{"outcome", "pipeline", "warning"}`.

        Raises:
            ClientError: the spec was refused (the `SpecError` line) or the call failed.
        """
        query = "?" + urllib.parse.urlencode({"source": source})
        result: dict[str, Any] = self._call("POST", "/pipelines" + query, text.encode())
        return result

    def unload(self, name: str) -> dict[str, Any]:
        """`DELETE /pipelines/{name}`: returns `{"outcome", "pipeline"}`."""
        result: dict[str, Any] = self._call("DELETE", f"/pipelines/{urllib.parse.quote(name)}")
        return result

    def subscribers(self) -> list[str]:
        """`GET /subscribers`."""
        result: list[str] = self._call("GET", "/subscribers")["subscribers"]
        return result

    def wait(
        self, name: str, states: set[str], timeout: float, interval: float = 0.2
    ) -> dict[str, Any]:
        """Poll a pipeline until its state is one of `states`, `Failed`, or time runs out.

        Returns:
            The pipeline object in its final state (the caller checks `state`).

        Raises:
            ClientError: the time ran out.
        """
        deadline = time.monotonic() + timeout
        while True:
            record = self.pipeline(name)
            if record["state"] in states or record["state"] == "Failed":
                return record
            if time.monotonic() >= deadline:
                raise ClientError(
                    f"{name} v{record['version']} still {record['state']} after {timeout:g} s "
                    f"({record['summary']})"
                )
            time.sleep(interval)
