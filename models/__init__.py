"""Models in the stream: the traffic simulator, features, fraud, anomaly, registry, training.

::

    simulator ──▶ features (+ feature_state) ──▶ fraud / anomaly ──▶ registry
                         ▲                                          │
                         └──── enrichers.pipeline (serving) ◀───────┘

Public names are imported lazily, so ``import models.upsell`` or ``models.simulator`` does
not pay for torch until a torch model is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnomalyModel": "models.anomaly",
    "FEATURE_NAMES": "models.features",
    "FEATURE_SCHEMA_VERSION": "models.features",
    "FeatureBuilder": "models.feature_state",
    "FeatureStateStore": "models.feature_state",
    "FraudModel": "models.fraud",
    "InMemoryFeatureState": "models.feature_state",
    "ModelVersion": "models.registry",
    "Registry": "models.registry",
    "SqlFeatureState": "models.feature_state",
    "baskets": "models.simulator",
    "evaluate": "models.evaluation",
    "features_for_stream": "models.feature_state",
    "simulate": "models.simulator",
    "train": "models.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
