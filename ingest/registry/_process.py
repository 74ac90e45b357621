"""The registry's JVM: its command line, and proving it serves with a real HTTP request.

Ready means ``GET /apis/ccompat/v7/subjects`` answers 200: the Confluent-compatible API and its
storage are up, not just the port. Polls back off from 50 ms to 500 ms until a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from pizzashop.core.errors import BrokerUnavailable, ConfigError

CCOMPAT_PATH = "/apis/ccompat/v7"
_HEAP = re.compile(r"^\d+[mMgG]$")
# Recognises our JVM in /proc/<pid>/cmdline (a pid read from a file may be someone else's now).
MARK = "-Dpizzashop.registry=1"


def check_heap(heap: str) -> None:
    if not _HEAP.match(heap):
        raise ConfigError(f"registry heap must look like 256m or 1g, got {heap!r}")


def url_of(port: int) -> str:
    """The Confluent-compatible base URL of a local registry on ``port``."""
    return f"http://127.0.0.1:{port}{CCOMPAT_PATH}"


def registry_command(*, java: str, jar: Path, port: int, heap: str) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",  # two cores shared with Kafka and the tests: no parallel GC threads
        MARK,
        "-Dquarkus.http.host=127.0.0.1",
        f"-Dquarkus.http.port={port}",
        # In memory (H2), like the default: a local registry for development and tests.
        "-Dquarkus.log.console.format=%d{HH:mm:ss} %p [%c{2.}] %m%n",
        "-jar",
        str(jar),
    ]


def is_our_registry(pid: int) -> bool:
    """Is ``pid`` a live (not zombie) JVM started by this package?"""
    if Path("/proc/self").exists():
        try:
            args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return MARK.encode() in args
    try:  # no /proc (macOS): the pid exists is the best left
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def answers(url: str, timeout_s: float = 5.0) -> bool:
    """True when ``GET <url>/subjects`` answers 200 within ``timeout_s``."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            response = await client.get(f"{url}/subjects")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def wait_ready(
    url: str, *, timeout_s: float, alive: Callable[[], bool], log_tail: Callable[[], str]
) -> None:
    """Return once the registry at ``url`` answers; BrokerUnavailable if its JVM dies or the
    deadline passes (with the end of its log)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if not alive():
            raise BrokerUnavailable(f"the schema registry exited while starting:\n{log_tail()}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerUnavailable(
                f"the schema registry at {url} was not ready within {timeout_s:.0f}s:\n{log_tail()}"
            )
        if await answers(url, timeout_s=min(5.0, max(left, 0.5))):
            return
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 0.5)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
