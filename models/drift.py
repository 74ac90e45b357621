"""Drift: how far serving traffic has moved from what a model version was trained on.

At training each version records a *reference* (``models.training``, on its validation
period): a histogram of each of its scores (upsell: its best suggestion's, ``UPSELL_SCORE``) and
of the inputs that can be rebuilt from one ``OrderPlaced`` alone (``DRIFT_INPUTS``, the
stateless basket columns of ``models.features``; the history features need the feature state
and are not watched here). The bins are fixed then, at the reference's deciles, so every window
is compared on the same cuts.

Serving compares a window (the version's latest scored orders) with it by the population
stability index::

    PSI = sum over bins of (observed - expected) * ln(observed / expected)

with fractions smoothed by ``epsilon`` so an empty bin counts as rare, not as infinite. Rules of
thumb: below 0.1 nothing moved, 0.1-0.2 a little, above 0.2 (``DEFAULT_PSI_ALERT``) act.
Pure NumPy; the API reads the windows and publishes the readings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ingest.events import OrderPlaced
from models.features import BASKET_FEATURES, OrderFrame, basket_features

#: Inputs watched for drift (each model watches those it reads): rebuilt from the order alone.
DRIFT_INPUTS: tuple[str, ...] = (
    "log_total",
    "log_units",
    "n_lines",
    "max_qty",
    "hour_sin",
    "hour_cos",
    "has_address",
    "has_device",
    "pay_card",
    "pay_voucher",
)
#: The upsell ranker reads the basket's SKUs and the customer's earlier ones, never payment,
#: device, address or the hour: it watches the basket's shape (history is not rebuilt here).
UPSELL_INPUTS: tuple[str, ...] = ("log_total", "log_units", "n_lines", "max_qty")
#: Upsell's score: its best suggestion's ranker score per order (orders without one left out).
UPSELL_SCORE = "top_score"
DEFAULT_BINS = 10
DEFAULT_EPSILON = 1e-4
DEFAULT_PSI_ALERT = 0.2

Kind = Literal["score", "input"]


@dataclass(frozen=True, slots=True)
class Histogram:
    """Fixed bins and the reference's share in each. ``edges`` are the inner cut points: bin
    ``i`` holds values in ``(edges[i-1], edges[i]]``, the first and last bins are open-ended,
    so there are ``len(edges) + 1`` bins and no value falls outside."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]
    n: int

    def counts(self, values: np.ndarray) -> np.ndarray:
        finite = values[np.isfinite(values)]
        index = np.searchsorted(np.asarray(self.edges), finite, side="left")
        return np.bincount(index, minlength=len(self.edges) + 1)

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "fractions": list(self.fractions), "n": self.n}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Histogram:
        return cls(
            tuple(float(e) for e in raw["edges"]),
            tuple(float(f) for f in raw["fractions"]),
            int(raw["n"]),
        )


def reference_histogram(values: np.ndarray, bins: int = DEFAULT_BINS) -> Histogram:
    """Cut ``values`` at their quantiles into (at most) ``bins`` bins. Repeated quantiles
    collapse, so a 0/1 feature gets two bins, not ten empty ones."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        raise ValueError("a reference histogram needs at least one finite value")
    # Cut at observed values, so a discrete feature is cut between its values, never inside.
    inner = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    # When the maximum is an edge, the last bin (above it) is empty in training: serving values
    # beyond anything trained on then stand out, which is the point.
    edges = np.unique(inner)
    empty = Histogram(tuple(float(e) for e in edges), (), len(finite))
    counts = empty.counts(finite)
    fractions = tuple(float(c) for c in counts / counts.sum())
    return Histogram(empty.edges, fractions, len(finite))


def psi(reference: Histogram, values: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> float:
    """The population stability index of ``values`` against ``reference`` (0: the same
    shares in every bin). ``epsilon`` is added to every share before the logarithm."""
    counts = reference.counts(np.asarray(values, dtype=np.float64))
    total = counts.sum()
    if total == 0:
        raise ValueError("no finite values to compare")
    observed = counts / total + epsilon
    expected = np.asarray(reference.fractions) + epsilon
    observed, expected = observed / observed.sum(), expected / expected.sum()
    return float(np.sum((observed - expected) * np.log(observed / expected)))


@dataclass(frozen=True, slots=True)
class ModelReference:
    """A version's reference: its scores and its watched inputs, by name."""

    scores: dict[str, Histogram] = field(default_factory=dict)
    inputs: dict[str, Histogram] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "scores": {k: h.to_json() for k, h in self.scores.items()},
            "inputs": {k: h.to_json() for k, h in self.inputs.items()},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> ModelReference:
        """``None`` or ``{}`` (a version trained before references were kept): no reference."""
        raw = raw or {}
        return cls(
            scores={k: Histogram.from_json(h) for k, h in raw.get("scores", {}).items()},
            inputs={k: Histogram.from_json(h) for k, h in raw.get("inputs", {}).items()},
        )

    @property
    def empty(self) -> bool:
        return not (self.scores or self.inputs)


def build_reference(
    scores: Mapping[str, np.ndarray],
    features: np.ndarray,
    feature_names: Sequence[str],
    reads: Iterable[str] | None = None,
    bins: int = DEFAULT_BINS,
) -> ModelReference:
    """The reference of a version from its training rows: ``features`` [n, len(names)] and
    its ``scores`` on the same rows, each in the unit it serves in. The inputs kept are the
    ``DRIFT_INPUTS`` the model ``reads`` (None: all of them)."""
    index = {name: i for i, name in enumerate(feature_names)}
    read = set(feature_names if reads is None else reads)
    return ModelReference(
        scores={name: reference_histogram(v, bins) for name, v in scores.items()},
        inputs={
            name: reference_histogram(features[:, index[name]], bins)
            for name in DRIFT_INPUTS
            if name in index and name in read
        },
    )


def order_inputs(orders: Sequence[OrderPlaced], names: Iterable[str]) -> dict[str, np.ndarray]:
    """The watched inputs of ``orders``, computed by the serving code (``basket_features``)."""
    wanted = [n for n in names if n in BASKET_FEATURES]
    if not orders:
        return {n: np.zeros(0) for n in wanted}
    columns = basket_features(OrderFrame.from_orders(orders))
    return {n: columns[:, BASKET_FEATURES.index(n)].astype(np.float64) for n in wanted}


@dataclass(frozen=True, slots=True)
class DriftReading:
    """One PSI of one version: ``kind`` ``score`` (``feature`` names the score) or ``input``.
    ``psi`` is ``None`` while the window holds fewer than the minimum orders."""

    model: str
    version: int
    kind: Kind
    feature: str
    psi: float | None
    n: int
    alert: bool


def readings(
    model: str,
    version: int,
    reference: ModelReference,
    scores: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    *,
    alert_at: float = DEFAULT_PSI_ALERT,
    min_n: int = 100,
    epsilon: float = DEFAULT_EPSILON,
) -> list[DriftReading]:
    """PSI of every score and input the reference knows, over the window given."""
    out: list[DriftReading] = []
    groups: tuple[tuple[Kind, Mapping[str, Histogram], Mapping[str, np.ndarray]], ...] = (
        ("score", reference.scores, scores),
        ("input", reference.inputs, inputs),
    )
    for kind, histograms, window in groups:
        for name, histogram in histograms.items():
            values = np.asarray(window.get(name, ()), dtype=np.float64)
            values = values[np.isfinite(values)]
            value = psi(histogram, values, epsilon) if len(values) >= max(min_n, 1) else None
            alert = value is not None and value >= alert_at
            out.append(DriftReading(model, version, kind, name, value, len(values), alert))
    return out


__all__ = [
    "DEFAULT_PSI_ALERT",
    "DRIFT_INPUTS",
    "UPSELL_INPUTS",
    "UPSELL_SCORE",
    "DriftReading",
    "Histogram",
    "ModelReference",
    "build_reference",
    "order_inputs",
    "psi",
    "readings",
    "reference_histogram",
]
