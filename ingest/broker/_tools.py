"""Finding Java and Maven, and resolving the broker's jars with Maven (once per version).

The jars land in ``<cache_dir>/kafka-<version>/lib``; a marker file written only after Maven
succeeded tells later runs to skip the resolve, so an interrupted one is simply redone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from pizzashop.core.errors import ConfigError

logger = logging.getLogger(__name__)

INSTALL_HINT = "On Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_MARKER = "resolved.json"
_RESOLVE_TIMEOUT_S = 900.0


def java_executable() -> str | None:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` when set (as Kafka's scripts do), else PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def ensure_tools(
    *,
    maven: bool = True,
    what: str = "The local Kafka broker",
    otherwise: str = "set PIZZASHOP_KAFKA_BOOTSTRAP to use an existing cluster",
) -> str:
    """Check that Java (and, unless the jars are cached, Maven) can be run; return ``java``.

    Raises ConfigError naming exactly what is missing, how to install it, and ``otherwise``
    what to do instead (``what`` needs them: the broker, the schema registry).
    """
    java = java_executable()
    missing = []
    if java is None:
        missing.append("Java 17+ (the `java` command)")
    if maven and shutil.which("mvn") is None:
        missing.append("Maven (the `mvn` command)")
    if missing:
        raise ConfigError(
            f"{what} needs {' and '.join(missing)}, not found on PATH. "
            f"{INSTALL_HINT}; or {otherwise}."
        )
    assert java is not None  # for mypy: missing would have raised
    return java


def check_version(version: str) -> None:
    """Refuse versions this launcher cannot run: it writes KRaft-only config and log4j2 logging."""
    match = _VERSION.match(version)
    if match is None:
        raise ConfigError(f"Kafka version must look like 4.2.0, got {version!r}")
    if int(match.group(1)) < 4:
        raise ConfigError(f"the local broker needs Apache Kafka 4.x or later, got {version}")


def kafka_home(cache_dir: Path, version: str) -> Path:
    return cache_dir.resolve() / f"kafka-{version}"


def jars_resolved(cache_dir: Path, version: str) -> bool:
    return (kafka_home(cache_dir, version) / _MARKER).is_file()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    # Two processes (the CLI and a test run, say) may resolve the same version at once.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_jars(cache_dir: Path, version: str) -> Path:
    """Return ``<cache_dir>/kafka-<version>/lib``, running Maven first if it was never resolved.

    Blocking (a first resolve downloads ~60 MB); async callers run it in a thread.
    """
    check_version(version)
    home = kafka_home(cache_dir, version)
    lib = home / "lib"
    if (home / _MARKER).is_file():
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / ".lock"):
        if (home / _MARKER).is_file():  # another process finished while we waited for the lock
            return lib
        ensure_tools(maven=True)
        _run_maven(home, lib, version)
    return lib


def run_maven(
    argv: list[str], cwd: Path, timeout_s: float, what: str
) -> subprocess.CompletedProcess[str]:
    """Run Maven to ``what`` (for the message); a time-out is a ``ConfigError`` saying so."""
    try:
        return subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"Maven did not {what} within {timeout_s:.0f}s; check access to Maven Central "
            "(or your mirror in ~/.m2/settings.xml)"
        ) from exc


def maven_tail(done: subprocess.CompletedProcess[str], lines: int = 30) -> str:
    """The last lines Maven printed: where its reason is."""
    return "\n".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


def _run_maven(home: Path, lib: Path, version: str) -> None:
    # A partial folder from an interrupted run may hold a truncated jar: start clean.
    shutil.rmtree(lib, ignore_errors=True)
    pom = home / "pom.xml"
    pom.write_text(resources.files(__package__).joinpath("pom.xml").read_text("utf-8"), "utf-8")
    mvn = shutil.which("mvn")
    assert mvn is not None  # ensure_tools checked it
    argv = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={lib}",
    ]
    logger.info("resolving Apache Kafka %s jars with Maven into %s", version, lib)
    began = time.monotonic()
    done = run_maven(argv, home, _RESOLVE_TIMEOUT_S, f"resolve Apache Kafka {version}")
    jars = sorted(p.name for p in lib.glob("*.jar")) if lib.is_dir() else []
    if done.returncode != 0 or f"kafka_2.13-{version}.jar" not in jars:
        output = maven_tail(done)
        raise ConfigError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} (exit "
            f"{done.returncode}); check the version and access to Maven Central:\n{output}"
        )
    elapsed = time.monotonic() - began
    (home / _MARKER).write_text(
        json.dumps({"version": version, "jars": jars, "seconds": round(elapsed, 1)}, indent=2)
    )
    logger.info("resolved %d jars for Apache Kafka %s in %.1fs", len(jars), version, elapsed)
