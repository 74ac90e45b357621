"""The scorer contract: what a model is to the enrichment pipeline.

A scorer is one model behind three hooks, in the spirit of infinity's ``BaseTransformer``::

    ScoringBatch ──pre──▶ inputs ──core──▶ raw ──post──▶ [Scored | Degraded], one per order
     (event loop)          (the pipeline's thread pool,      (event loop)
                            with explain, under a timeout)

The pipeline (``enrichers.pipeline``) builds the batch once for every scorer (features, and
basket histories when a scorer asks for them), runs the scorers concurrently, and stamps each
result with its lineage (model, version, feature schema, backend, latency, top features) as the
wire type ``ScoreLineage``. A scorer that raises or overruns its timeout degrades its own scores
only. ``Scored.value`` holds the fields of the model's assessment on the wire
(``ingest.events``), so the worker maps a result to the wire in one place.

Scorers are found by name in ``models.registry.SCORERS``: adding a model is a subclass of
:class:`Scorer` in its own module and one line there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeAlias, TypeVar

import numpy as np

from ingest.events import OrderPlaced, ScoreLineage

if TYPE_CHECKING:
    from models.registry import ModelVersion

__all__ = [
    "Degraded",
    "Result",
    "Scored",
    "Scorer",
    "ScoringBatch",
    "TopFeatures",
]

InputsT = TypeVar("InputsT")
RawT = TypeVar("RawT")

#: The strongest attributions of one order's score, strongest first: (feature name, value).
TopFeatures: TypeAlias = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class ScoringBatch:
    """What every scorer of one batch sees; built once by the pipeline, never mutated."""

    orders: Sequence[OrderPlaced]
    #: float ``[n, N_FEATURES]`` in ``models.features.FEATURE_NAMES`` order (state-dependent
    #: features already read and updated).
    features: np.ndarray
    #: Each order's customer's earlier SKUs; ``None`` unless a scorer sets ``needs_history``
    #: and the pipeline has a history store.
    histories: Sequence[Sequence[str]] | None = None

    def __len__(self) -> int:
        return len(self.orders)


@dataclass(frozen=True, slots=True)
class Scored:
    """One order's output of one model.

    ``value`` holds the fields of the model's wire assessment by name (``{"probability": 0.02}``
    for fraud; upsell's suggestions are named from the menu by the worker, which maps every
    result to the wire in one place). ``lineage`` is ``None`` only between ``post`` and the
    pipeline stamping it.
    """

    value: Mapping[str, Any]
    lineage: ScoreLineage | None = None


@dataclass(frozen=True, slots=True)
class Degraded:
    """No score for this order from this model, and why.

    ``lineage`` names the version that was tried (``None`` when none is loaded), so a degraded
    score is traceable to the model that failed.
    """

    reason: str
    lineage: ScoreLineage | None = None


Result: TypeAlias = Scored | Degraded


class Scorer(ABC, Generic[InputsT, RawT]):
    """One model in the enrichment pipeline. Subclass, name it, register it in
    ``models.registry.SCORERS``.

    Thread-safety: ``core`` and ``explain`` run in a worker thread, one batch at a time per
    scorer (the pipeline never submits a second batch while one is running), while ``pre`` and
    ``post`` of the next batch may run on the event loop; keep ``core`` free of shared mutable
    state.
    """

    #: The registry name: the folder of its artifacts and the key of its results.
    name: ClassVar[str]
    #: True when ``pre`` reads ``batch.histories``; the pipeline fetches them only then.
    needs_history: ClassVar[bool] = False

    # -- identity: part of every score's lineage ------------------------------------------------
    @property
    @abstractmethod
    def version(self) -> int:
        """The registry version this instance was loaded from (0 when built in code)."""

    @property
    @abstractmethod
    def backend(self) -> str:
        """What runs ``core`` now, e.g. ``"onnx"``, ``"torch"``, ``"numpy"``."""

    @property
    @abstractmethod
    def feature_schema_version(self) -> int:
        """The version of the inputs this model was trained on."""

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> Self:
        """Build from a registry version. Called by the pipeline at start and on reload, in a
        worker thread, before ``warm_up``; a failure leaves this model out (or keeps the
        version already serving) and is logged."""

    @abstractmethod
    def save(self, target: Path) -> Mapping[str, Any]:
        """Write the artifacts into ``target`` (a fresh directory) and return the parameters to
        keep in the registry metadata. Passed to ``Registry.publish`` as its ``write``."""

    def warm_up(self) -> None:
        """Called once after ``load``, in the pipeline's thread pool and before the version
        serves, so the first real batch pays no first-call costs (ONNX sessions, allocations)."""

    # -- scoring, in this order for every batch -------------------------------------------------
    @abstractmethod
    def pre(self, batch: ScoringBatch) -> InputsT:
        """Called on the event loop for each batch: vectorised input preparation (casts,
        encodings). Keep it cheap; anything heavy belongs in ``core``."""

    @abstractmethod
    def core(self, inputs: InputsT) -> RawT:
        """Called in the pipeline's thread pool with ``pre``'s output: the forward pass.

        Runs under the model's timeout; when it overruns, this model's scores of the batch are
        degraded and the thread is left to finish (the next batch is degraded too while it
        still runs, so a hung model holds at most one thread).
        """

    def explain(self, inputs: InputsT, raw: RawT, k: int) -> Sequence[TopFeatures] | None:
        """Called in the same thread right after ``core`` (same timeout) when the pipeline
        explains (``k > 0``): the top ``k`` attributions of each order, or ``None`` when this
        model has none."""
        return None

    @abstractmethod
    def post(self, raw: RawT, batch: ScoringBatch) -> Sequence[Result]:
        """Called on the event loop with ``core``'s output: one result per order of the batch,
        in order. Return :class:`Degraded` for an order the model cannot score (say a NaN)."""
