"""Versioned model artifacts on disk.

Layout: ``<root>/<name>/v000003/{metadata.json, <name>.pt, <name>.onnx, ...}``. Versions are
monotonic integers per model name. A version is written into a temporary directory next to
its final place and renamed in one step, so a worker polling ``latest()`` sees either the whole
version or none of it; a directory without ``metadata.json`` is never listed.

Aliases say which version serves: ``champion`` (what the enrichment workers score with; unset,
the latest version) and ``challenger`` (scored in the shadow beside it, deciding nothing; unset,
none). They live in ``<root>/<name>/aliases.json`` with the champions promoted before, so that
``rollback`` restores the previous one. A change is a read-modify-write under an exclusive
``flock`` on ``<root>/<name>/.aliases.lock`` and lands by ``os.replace``: two operators cannot
lose each other's change, and a worker reading between batches sees the old file or the new.

``SCORERS`` names the class that serves each model (``models.scorer.Scorer``): the one line a
new model adds. Classes are named as ``"module:Class"`` and imported when first served, so a
process that never scores never imports torch.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.features import FEATURE_SCHEMA_VERSION
from pizzashop.core.errors import ConfigError

if TYPE_CHECKING:
    from models.scorer import Scorer

logger = logging.getLogger(__name__)
METADATA = "metadata.json"
ALIASES = "aliases.json"
#: Champions remembered for rollback, per model; older ones are dropped.
ROLLBACK_DEPTH = 20


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    version: int
    created_at: str  # ISO 8601, UTC
    feature_schema_version: int
    training_data_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # model-specific, e.g. calibration
    #: Histograms of the training data's scores and inputs (``models.drift.ModelReference``),
    #: what serving traffic is compared with; empty for versions trained before they were kept.
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{self.name}-v{self.version}"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    metadata: ModelMetadata
    path: Path

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version


@dataclass(frozen=True, slots=True)
class Aliases:
    """One model's aliases. ``previous`` holds the champions replaced by ``promote``, latest
    last; ``None`` there (and as ``champion``) means "the latest version", the state before
    anything was promoted, so rolling back the first promotion returns to following it."""

    champion: int | None = None
    challenger: int | None = None
    previous: tuple[int | None, ...] = ()
    updated_at: str | None = None  # ISO 8601, UTC, of the last change

    def to_json(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "previous": list(self.previous),
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Aliases:
        return cls(
            champion=raw.get("champion"),
            challenger=raw.get("challenger"),
            previous=tuple(raw.get("previous", ())),
            updated_at=raw.get("updated_at"),
        )


def _version_of(path: Path) -> int | None:
    if path.name.startswith("v") and path.name[1:].isdigit() and (path / METADATA).is_file():
        return int(path.name[1:])
    return None


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(v for p in folder.iterdir() if (v := _version_of(p)) is not None)

    def publish(
        self,
        name: str,
        write: Callable[[Path], Mapping[str, Any]],
        *,
        training_data_hash: str,
        metrics: Mapping[str, float],
        feature_schema_version: int = FEATURE_SCHEMA_VERSION,
        reference: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Write a new version: ``write(tmp_dir)`` saves the files and returns its params.
        ``reference``: the drift reference to keep in its metadata (``models.drift``)."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            params = dict(write(tmp))
            for _ in range(100):  # another publisher may take the number first
                version = (self._versions(name) or [0])[-1] + 1
                meta = ModelMetadata(
                    name=name,
                    version=version,
                    created_at=datetime.now(UTC).isoformat(),
                    feature_schema_version=feature_schema_version,
                    training_data_hash=training_data_hash,
                    metrics={k: float(v) for k, v in metrics.items()},
                    params=params,
                    reference=dict(reference or {}),
                )
                (tmp / METADATA).write_text(json.dumps(asdict(meta), indent=1, sort_keys=True))
                target = folder / f"v{version:06d}"
                try:
                    os.rename(tmp, target)
                except OSError:
                    continue
                logger.info("published %s", meta.tag, extra={"model": name, "version": version})
                return ModelVersion(meta, target)
            raise ConfigError(f"could not publish {name}: version numbers kept colliding")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def latest(self, name: str) -> ModelVersion | None:
        versions = self._versions(name)
        return self.load(name, versions[-1]) if versions else None

    def load(self, name: str, version: int | None = None) -> ModelVersion:
        if version is None:
            found = self.latest(name)
            if found is None:
                raise ConfigError(
                    f"no model {name!r} in the registry at {self.root}; "
                    "train one first (`pizzashop train`)"
                )
            return found
        path = self.root / name / f"v{version:06d}"
        if _version_of(path) is None:
            raise ConfigError(f"no version {version} of model {name!r} in {self.root}")
        raw = json.loads((path / METADATA).read_text())
        return ModelVersion(ModelMetadata(**raw), path)

    # -- aliases ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every model with at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._versions(p.name))

    def _known(self, name: str) -> list[int]:
        versions = self._versions(name)
        if not versions:
            raise ConfigError(
                f"no model {name!r} in the registry at {self.root}; known: {self.names()}"
            )
        return versions

    def _check(self, name: str, version: int) -> None:
        versions = self._known(name)
        if version not in versions:
            raise ConfigError(f"no version {version} of model {name!r}; it has {versions}")

    def aliases(self, name: str) -> Aliases:
        """The aliases of ``name`` now (none set: an empty ``Aliases``)."""
        path = self.root / name / ALIASES
        try:
            return Aliases.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return Aliases()

    @contextmanager
    def _changing(self, name: str) -> Iterator[Aliases]:
        """Hold the model's alias lock; yields the aliases now (callers write under it)."""
        folder = self.root / name
        with (folder / ".aliases.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.aliases(name)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, name: str, aliases: Aliases) -> Aliases:
        stamped = replace(aliases, updated_at=datetime.now(UTC).isoformat())
        folder = self.root / name
        tmp = folder / f".{ALIASES}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(stamped.to_json(), indent=1, sort_keys=True))
        os.replace(tmp, folder / ALIASES)
        logger.info(
            "aliases of %s: champion %s, challenger %s",
            name,
            stamped.champion,
            stamped.challenger,
            extra={"model": name, "aliases": stamped.to_json()},
        )
        return stamped

    def promote(self, name: str, version: int) -> Aliases:
        """Make ``version`` the champion, remembering the one it replaces for ``rollback``.
        A challenger promoted stops being the challenger (it would shadow itself)."""
        self._check(name, version)
        with self._changing(name) as now:
            if now.champion == version:
                return now
            previous = (*now.previous, now.champion)[-ROLLBACK_DEPTH:]
            challenger = None if now.challenger == version else now.challenger
            return self._write(
                name, replace(now, champion=version, challenger=challenger, previous=previous)
            )

    def rollback(self, name: str) -> Aliases:
        """Restore the champion the last ``promote`` replaced (``None``: the latest version)."""
        self._known(name)
        with self._changing(name) as now:
            if not now.previous:
                raise ConfigError(f"nothing to roll back: {name!r} was never promoted")
            *rest, restored = now.previous
            return self._write(name, replace(now, champion=restored, previous=tuple(rest)))

    def shadow(self, name: str, version: int | None) -> Aliases:
        """Set the challenger to ``version``, or clear it with ``None``."""
        if version is None:
            self._known(name)
        else:
            self._check(name, version)
        with self._changing(name) as now:
            if now.challenger == version:
                return now
            return self._write(name, replace(now, challenger=version))

    def champion(self, name: str) -> int | None:
        """The version to serve: the ``champion`` alias, else the latest; ``None``: no version.
        Blocking (reads files): call it off the event loop."""
        aliased = self.aliases(name).champion
        if aliased is not None:
            return aliased
        versions = self._versions(name)
        return versions[-1] if versions else None

    def challenger(self, name: str) -> int | None:
        """The version to score in the shadow, if any. Blocking, as ``champion``."""
        return self.aliases(name).challenger

    def list(self) -> list[ModelVersion]:
        if not self.root.is_dir():
            return []
        return [
            self.load(p.name, v)
            for p in sorted(self.root.iterdir())
            if p.is_dir()
            for v in self._versions(p.name)
        ]


#: The models the enrichment pipeline serves, by registry name, in the order they are run.
SCORERS: dict[str, str] = {
    "fraud": "models.fraud:FraudScorer",
    "anomaly": "models.anomaly:AnomalyScorer",
    "upsell": "models.upsell.model:UpsellScorer",
}


def scorer_class(name: str) -> type[Scorer[Any, Any]]:
    """The class registered for ``name`` in ``SCORERS``, imported now."""
    from models.scorer import Scorer

    try:
        module, _, attr = SCORERS[name].partition(":")
    except KeyError:
        raise ConfigError(f"no scorer registered as {name!r}; known: {sorted(SCORERS)}") from None
    found = getattr(importlib.import_module(module), attr)
    if not (isinstance(found, type) and issubclass(found, Scorer) and found.name == name):
        raise ConfigError(f"{SCORERS[name]} is not a Scorer named {name!r}")
    return found


__all__ = [
    "ALIASES",
    "SCORERS",
    "Aliases",
    "ModelMetadata",
    "ModelVersion",
    "Registry",
    "scorer_class",
]
