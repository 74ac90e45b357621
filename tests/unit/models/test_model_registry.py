from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from models.features import FEATURE_SCHEMA_VERSION
from models.registry import Registry
from pizzashop.core.errors import ConfigError


def _writer(payload: str) -> Callable[[Path], dict[str, object]]:
    def write(folder: Path) -> dict[str, object]:
        (folder / "weights.txt").write_text(payload)
        return {"payload": payload}

    return write


def test_versions_are_monotonic_and_complete(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.latest("fraud") is None
    with pytest.raises(ConfigError, match="train one first"):
        registry.load("fraud")
    v1 = registry.publish("fraud", _writer("a"), training_data_hash="h1", metrics={"auc": 0.5})
    v2 = registry.publish("fraud", _writer("b"), training_data_hash="h2", metrics={"auc": 0.7})
    registry.publish("anomaly", _writer("c"), training_data_hash="h3", metrics={})
    assert (v1.version, v2.version) == (1, 2)
    latest = registry.latest("fraud")
    assert latest is not None
    assert latest.version == 2
    assert (latest.path / "weights.txt").read_text() == "b"
    meta = json.loads((latest.path / "metadata.json").read_text())
    assert meta["feature_schema_version"] == FEATURE_SCHEMA_VERSION
    assert meta["training_data_hash"] == "h2"
    assert meta["metrics"] == {"auc": 0.7}
    assert meta["params"] == {"payload": "b"}
    assert registry.load("fraud", 1).metadata.training_data_hash == "h1"
    assert [mv.metadata.tag for mv in registry.list()] == ["anomaly-v1", "fraud-v1", "fraud-v2"]
    with pytest.raises(ConfigError):
        registry.load("fraud", 9)


def test_half_written_versions_are_invisible(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.publish("fraud", _writer("a"), training_data_hash="h", metrics={})
    # a crashed publisher leaves a temp dir; a version dir without metadata is not a version
    (tmp_path / "fraud" / ".tmp-deadbeef").mkdir()
    (tmp_path / "fraud" / "v000002").mkdir()

    def failing(folder: Path) -> dict[str, object]:
        (folder / "weights.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        registry.publish("fraud", failing, training_data_hash="h", metrics={})
    latest = registry.latest("fraud")
    assert latest is not None
    assert latest.version == 1
    assert [p.name for p in (tmp_path / "fraud").iterdir() if p.name.startswith(".tmp")] == [
        ".tmp-deadbeef"
    ]
