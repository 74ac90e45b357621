"""Models in the stream: the traffic simulator, features, fraud, anomaly, registry, training.

::

    simulator ──▶ features (+ feature_state) ──▶ fraud / anomaly ──▶ registry
                         ▲                                          │
                         └──── enrichers.pipeline (serving) ◀───────┘

Public names are imported lazily, so ``import models.upsell`` or ``models.simulator`` does
not pay for torch until a torch model is actually used.
"""

from __future__ import annotations

from pizzashop.core.lazy import lazy_exports

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

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
