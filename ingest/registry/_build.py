"""Building the local Apicurio Registry with Maven, once per version, into the cache folder.

``<cache_dir>/apicurio-registry-<version>/`` gets this package's ``pom.xml`` and
``application.properties`` (as ``src/main/resources``), then ``mvn package`` runs the Quarkus
build step over the thin ``apicurio-registry-app`` jar; the result is ``target/*-runner.jar``
with its jars in ``target/lib``. A marker written only after a good build tells later runs to
skip Maven; a build input that changed (a new pom shipped with the project) builds again.
Java, Maven, the lock and the tool checks are the broker's (``ingest.broker._tools``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path

from ingest.broker._tools import ensure_tools, file_lock, maven_tail, run_maven
from pizzashop.core.errors import ConfigError

logger = logging.getLogger(__name__)

APICURIO_VERSION = "2.4.2.Final"
RUNNER_JAR = "pizzashop-local-registry-1-runner.jar"
_MARKER = "built.json"
_INPUTS = ("pom.xml", "application.properties")
_BUILD_TIMEOUT_S = 1200.0


def registry_home(cache_dir: Path, version: str = APICURIO_VERSION) -> Path:
    return Path(cache_dir).resolve() / f"apicurio-registry-{version}"


def runner_jar(cache_dir: Path, version: str = APICURIO_VERSION) -> Path:
    return registry_home(cache_dir, version) / "target" / RUNNER_JAR


def _inputs() -> dict[str, str]:
    package = resources.files(__package__)
    return {name: package.joinpath(name).read_text("utf-8") for name in _INPUTS}


def _digest(inputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def is_built(cache_dir: Path, version: str = APICURIO_VERSION) -> bool:
    marker = registry_home(cache_dir, version) / _MARKER
    try:
        recorded = json.loads(marker.read_text()).get("inputs")
    except (OSError, ValueError):
        return False
    return bool(recorded == _digest(_inputs()) and runner_jar(cache_dir, version).is_file())


def ensure_java(*, maven: bool) -> str:
    """``java`` to run the registry with; ConfigError naming what is missing otherwise."""
    return ensure_tools(
        maven=maven,
        what="The local schema registry",
        otherwise="set PIZZASHOP_SCHEMA_REGISTRY__URL to use an existing one",
    )


def build(cache_dir: Path, version: str = APICURIO_VERSION) -> Path:
    """Return the runner jar, building it first if needed. Blocking: the first build downloads
    about 650 artifacts (~130 MB); async callers run it in a thread."""
    if version != APICURIO_VERSION:
        raise ConfigError(f"the local registry build is for Apicurio {APICURIO_VERSION} only")
    home = registry_home(cache_dir, version)
    if is_built(cache_dir, version):
        return runner_jar(cache_dir, version)
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / ".lock"):
        if is_built(cache_dir, version):  # another process built it while we waited
            return runner_jar(cache_dir, version)
        ensure_java(maven=True)
        _run_maven(home, _inputs())
    return runner_jar(cache_dir, version)


def _run_maven(home: Path, inputs: dict[str, str]) -> None:
    shutil.rmtree(home / "target", ignore_errors=True)  # an interrupted build's leftovers
    (home / "pom.xml").write_text(inputs["pom.xml"], "utf-8")
    res = home / "src" / "main" / "resources"
    res.mkdir(parents=True, exist_ok=True)
    (res / "application.properties").write_text(inputs["application.properties"], "utf-8")
    mvn = shutil.which("mvn")
    assert mvn is not None  # ensure_java checked it
    argv = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(home / "pom.xml"), "package"]
    logger.info("building Apicurio Registry %s with Maven in %s", APICURIO_VERSION, home)
    began = time.monotonic()
    done = run_maven(argv, home, _BUILD_TIMEOUT_S, "build Apicurio Registry")
    jar = home / "target" / RUNNER_JAR
    if done.returncode != 0 or not jar.is_file():
        output = maven_tail(done)
        raise ConfigError(
            f"Maven could not build Apicurio Registry {APICURIO_VERSION} (exit "
            f"{done.returncode}); check access to Maven Central:\n{output}"
        )
    elapsed = time.monotonic() - began
    (home / _MARKER).write_text(
        json.dumps(
            {"version": APICURIO_VERSION, "inputs": _digest(inputs), "seconds": round(elapsed, 1)},
            indent=2,
        )
    )
    logger.info("built Apicurio Registry %s in %.1fs", APICURIO_VERSION, elapsed)
