"""Versioned model artifacts on disk.

Layout: ``<root>/<name>/v000003/{metadata.json, <name>.pt, <name>.onnx, ...}``. Versions are
monotonic integers per model name. A version is written into a temporary directory next to
its final place and renamed in one step, so a worker polling ``latest()`` sees either the whole
version or none of it; a directory without ``metadata.json`` is never listed.

``SCORERS`` names the class that serves each model (``models.scorer.Scorer``): the one line a
new model adds. Classes are named as ``"module:Class"`` and imported when first served, so a
process that never scores never imports torch.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.features import FEATURE_SCHEMA_VERSION
from pizzashop.core.errors import ConfigError

if TYPE_CHECKING:
    from models.scorer import Scorer

logger = logging.getLogger(__name__)
METADATA = "metadata.json"


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    version: int
    created_at: str  # ISO 8601, UTC
    feature_schema_version: int
    training_data_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # model-specific, e.g. calibration

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
    ) -> ModelVersion:
        """Write a new version: ``write(tmp_dir)`` saves the files and returns its params."""
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


__all__ = ["SCORERS", "ModelMetadata", "ModelVersion", "Registry", "scorer_class"]
