#!/usr/bin/env python3
"""Fetch the Kafka broker's jars listed in scripts/kafka-jars-VERSION.txt into a cache folder.

    python3 scripts/kafka_jars.py VERSION CACHE

Each jar is taken from the local Maven repository when it holds it ($KAFKA_MAVEN_REPO, else
~/.m2/repository) or downloaded from $KAFKA_MAVEN_URL (https://repo1.maven.org/maven2), and
kept only if its SHA-256 is the listed one. The jars land in CACHE/libs all at once (a
temporary folder renamed), then CACHE/.complete is written; a failed fetch leaves no libs.

Standard library only: scripts/kafka runs it with the system's python3, before any virtual
environment exists. Exit status: 0 done, 2 nothing usable (one line on stderr says why).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
CENTRAL = "https://repo1.maven.org/maven2"
WORKERS = 4
TIMEOUT_S = 60


class Jar(NamedTuple):
    group: str
    artifact: str
    version: str
    sha256: str
    size: int

    @property
    def path(self) -> str:
        """The jar's path in a Maven repository."""
        a, v = self.artifact, self.version
        return f"{self.group.replace('.', '/')}/{a}/{v}/{a}-{v}.jar"

    @property
    def name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"


class FetchError(Exception):
    """A jar could not be had (the message is one line)."""


def read_list(path: Path) -> list[Jar]:
    """The pinned jars: `group:artifact:version sha256 size` per line, `#` comments."""
    jars = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        coordinates, sha, size = line.split()
        group, artifact, version = coordinates.split(":")
        jars.append(Jar(group, artifact, version, sha.lower(), int(size)))
    return jars


class Progress:
    """One progress line: rewritten in place on a terminal, every 25 % otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.shown = total, 0, 0
        self.tty = sys.stdout.isatty()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            quarter = 4 * self.done // max(self.total, 1)
            if self.tty or quarter > self.shown:
                self.shown = quarter
                end = "\r" if self.tty and self.done < self.total else "\n"
                mb = f"{self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB"
                print(f"kafka: fetched {mb}", end=end, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_one(jar: Jar, into: Path, local: Path, url: str, progress: Progress) -> str:
    """Put one verified jar into `into`; return where it came from ('local' or 'remote').

    Raises:
        FetchError: it could not be downloaded, or its SHA-256 is not the listed one.
    """
    target = into / jar.name
    cached = local / jar.path
    if cached.is_file() and _sha256(cached) == jar.sha256:
        shutil.copyfile(cached, target)
        progress.add(jar.size)
        return "local"
    address = f"{url.rstrip('/')}/{jar.path}"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(address, timeout=TIMEOUT_S) as response, target.open("wb") as f:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                digest.update(chunk)
                progress.add(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {address}: {reason}") from exc
    if digest.hexdigest() != jar.sha256:
        raise FetchError(f"{address}: SHA-256 {digest.hexdigest()} is not the pinned {jar.sha256}")
    return "remote"


def fetch(jars: list[Jar], cache: Path, local: Path, url: str) -> tuple[int, int]:
    """Fetch every jar into `cache/libs` at once; return (jars from `local`, downloaded).

    Raises:
        FetchError: one jar could not be had (nothing is left in the cache).
    """
    cache.mkdir(parents=True, exist_ok=True)
    progress = Progress(sum(j.size for j in jars))
    with tempfile.TemporaryDirectory(prefix=".libs-", dir=cache) as tmp:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            sources = list(pool.map(lambda j: fetch_one(j, Path(tmp), local, url, progress), jars))
        libs = cache / "libs"
        if libs.exists():
            shutil.rmtree(libs)
        os.rename(tmp, libs)
        Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    (cache / ".complete").touch()
    return sources.count("local"), sources.count("remote")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: kafka_jars.py VERSION CACHE", file=sys.stderr)
        return 2
    version, cache = argv[0], Path(argv[1])
    listing = HERE / f"kafka-jars-{version}.txt"
    if not listing.is_file():
        print(f"kafka: error: no pinned jar list for Kafka {version} ({listing})", file=sys.stderr)
        return 2
    jars = read_list(listing)
    local = Path(os.environ.get("KAFKA_MAVEN_REPO") or Path.home() / ".m2" / "repository")
    url = os.environ.get("KAFKA_MAVEN_URL") or CENTRAL
    total = sum(j.size for j in jars) / 1e6
    print(f"kafka: fetching the {len(jars)} jars of Apache Kafka {version} ({total:.0f} MB)")
    print(f"kafka:   from {url} (or {local}), SHA-256 checked, into {cache}/libs")
    t0 = time.monotonic()
    try:
        copied, downloaded = fetch(jars, cache, local, url)
    except FetchError as exc:
        print(
            f"kafka: error: {exc} (set KAFKA_MAVEN_URL to a Maven mirror, or fill {cache}/libs)",
            file=sys.stderr,
        )
        return 2
    print(
        f"kafka: cached {len(jars)} jars in {time.monotonic() - t0:.1f}s"
        f" ({downloaded} downloaded, {copied} from {local})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
