"""The models as they serve: registry aliases, drift against training, online precision/recall.

``ModelMonitor.report()`` answers ``GET /models`` and feeds the ``pizzashop_model_*`` gauges.
Everything is read from state the shop keeps already (the registry's files, the score
projection, the chargebacks), so any API process shows the same figures whichever process
scores; a report is reused for ``monitor.refresh_s`` so scrapes and dashboards do not repeat
the reads.

Drift is read per model version on its latest ``monitor.drift_window`` scored orders: its
score, and the inputs ``models.drift`` can rebuild from each ``OrderPlaced``, against the
reference histograms recorded at training. Upsell has no score column in the projection: its
window is the orders whose ``upsell_model`` is the version, its score the best suggestion's in
each stored ``OrderEnriched`` (degraded or empty ones left out). A version trained before
references were kept shows none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import numpy as np
import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.schemas import DriftOut, ModelOut, ModelsOut, ModelVersionOut, OnlineOut
from models.drift import DriftReading, ModelReference, order_inputs, readings
from models.registry import ModelVersion, Registry
from pizzashop.core.settings import EnricherSettings, MonitorSettings
from services.labels import FRAUD, LabelQueries, Outcomes
from services.scores import WINDOWED_MODELS, EnrichedWindow, ScoreQueries, ScoreWindow

logger = logging.getLogger(__name__)

METRIC_NAMES = (
    "pizzashop_model_psi",
    "pizzashop_model_psi_alert_threshold",
    "pizzashop_model_drift_alert",
    "pizzashop_model_online_precision",
    "pizzashop_model_online_recall",
    "pizzashop_model_labelled_orders",
    "pizzashop_model_alias_version",
)


@dataclass(frozen=True, slots=True)
class _Registered:
    name: str
    champion: int | None
    challenger: int | None
    serving: int | None
    versions: tuple[ModelVersion, ...]  # newest first


def _read_registry(registry: Registry | None) -> list[_Registered]:
    """Blocking (files): run it off the event loop."""
    if registry is None:
        return []
    by_name: dict[str, list[ModelVersion]] = {}
    for mv in registry.list():
        by_name.setdefault(mv.name, []).append(mv)
    out = []
    for name, versions in sorted(by_name.items()):
        aliases = registry.aliases(name)
        out.append(
            _Registered(
                name,
                aliases.champion,
                aliases.challenger,
                registry.champion(name),
                tuple(sorted(versions, key=lambda mv: -mv.version)),
            )
        )
    return out


def _readings(
    model: str, version: int, reference: ModelReference, window: ScoreWindow, cfg: MonitorSettings
) -> list[DriftReading]:
    """Blocking (parses the orders, builds their inputs): run it off the event loop."""
    return readings(
        model,
        version,
        reference,
        # one score per model: the window's scores are that one, whatever its name
        {name: np.asarray(window.scores) for name in reference.scores},
        order_inputs(window.orders(), reference.inputs),
        alert_at=cfg.psi_alert,
        min_n=cfg.drift_min_orders,
    )


UPSELL = "upsell"


def _upsell_window(rows: EnrichedWindow) -> ScoreWindow:
    """Each order's best suggestion's score (degraded or empty ones left out): blocking (parses
    every body)."""
    scores = []
    for body in rows.enriched_bodies:
        upsell = orjson.loads(body).get("upsell")
        if upsell and not upsell.get("degraded") and upsell.get("suggestions"):
            scores.append(float(upsell["suggestions"][0]["score"]))  # best first
    return ScoreWindow(scores=tuple(scores), order_bodies=rows.order_bodies)


def _upsell_readings(
    version: int, reference: ModelReference, rows: EnrichedWindow, cfg: MonitorSettings
) -> list[DriftReading]:
    """Blocking: run it off the event loop."""
    return _readings(UPSELL, version, reference, _upsell_window(rows), cfg)


class ModelMonitor(Collector):
    """``report()`` for the API; registered on a metrics registry, the gauges of the last one."""

    def __init__(
        self,
        registry: Registry | None,
        scores: ScoreQueries,
        labels: LabelQueries,
        settings: MonitorSettings,
        enricher: EnricherSettings,
    ) -> None:
        self._registry = registry
        self._scores = scores
        self._labels = labels
        self._settings = settings
        self._enricher = enricher
        self._last: ModelsOut | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def report(self, *, force: bool = False) -> ModelsOut:
        async with self._lock:  # concurrent callers share one read
            now = time.monotonic()
            if self._last is None or force or now - self._at >= self._settings.refresh_s:
                self._last = await self._read()
                self._at = time.monotonic()
            return self._last

    async def _read(self) -> ModelsOut:
        cfg = self._settings
        registered = await asyncio.to_thread(_read_registry, self._registry)
        drift = await self._drift(registered)
        outcomes = await self._outcomes(registered)
        online: dict[int, list[OnlineOut]] = {}
        for o in outcomes.versions:
            online.setdefault(o.version, []).append(
                OnlineOut(
                    role=o.role,
                    orders=o.orders,
                    chargebacks=o.frauds,
                    held=o.held,
                    caught=o.caught,
                    threshold=o.threshold,
                    precision=o.precision,
                    recall=o.recall,
                )
            )
        models = []
        for model in registered:
            versions = []
            for mv in model.versions:
                found = drift.get((model.name, mv.version), [])
                aliases: list[Literal["champion", "challenger"]] = []
                if mv.version == model.serving:
                    aliases.append("champion")
                if mv.version == model.challenger:
                    aliases.append("challenger")
                versions.append(
                    ModelVersionOut(
                        version=mv.version,
                        created_at=mv.metadata.created_at,
                        aliases=aliases,
                        metrics=mv.metadata.metrics,
                        drift=[
                            DriftOut(
                                kind=r.kind, feature=r.feature, psi=r.psi, orders=r.n, alert=r.alert
                            )
                            for r in found
                        ],
                        drift_alert=any(r.alert for r in found),
                        online=online.get(mv.version, []) if model.name == FRAUD else [],
                    )
                )
            models.append(
                ModelOut(
                    name=model.name,
                    champion=model.champion,
                    challenger=model.challenger,
                    serving=model.serving,
                    versions=versions,
                )
            )
        return ModelsOut(
            psi_alert=cfg.psi_alert,
            drift_window=cfg.drift_window,
            chargebacks=outcomes.chargebacks,
            labelled_through=outcomes.labelled_through,
            matured_before=outcomes.matured_before,
            models=models,
        )

    async def _drift(
        self, registered: Iterable[_Registered]
    ) -> dict[tuple[str, int], list[DriftReading]]:
        cfg = self._settings
        scored = set((await self._scores.summary()).models)  # tags, e.g. "fraud-v3"
        out: dict[tuple[str, int], list[DriftReading]] = {}
        for model in registered:
            if model.name not in (*WINDOWED_MODELS, UPSELL):
                continue
            for mv in model.versions:
                reference = ModelReference.from_json(mv.metadata.reference)
                if reference.empty or mv.metadata.tag not in scored:
                    continue
                # Parsing 2,000 orders and building their inputs takes some 140 ms of CPU: off
                # the event loop, or every API request would wait for it.
                if model.name == UPSELL:
                    # The projection keeps upsell's suggestions only in the stored event.
                    rows = await self._scores.enriched_window(UPSELL, mv.version, cfg.drift_window)
                    found = await asyncio.to_thread(
                        _upsell_readings, mv.version, reference, rows, cfg
                    )
                else:
                    window = await self._scores.window(model.name, mv.version, cfg.drift_window)
                    found = await asyncio.to_thread(
                        _readings, model.name, mv.version, reference, window, cfg
                    )
                out[(model.name, mv.version)] = found
        return out

    async def _outcomes(self, registered: Iterable[_Registered]) -> Outcomes:
        fraud = next((m for m in registered if m.name == FRAUD), None)
        thresholds: dict[int, float] = {}
        if fraud is not None:
            recorded = {
                mv.version: mv.metadata.params.get("hold_threshold") for mv in fraud.versions
            }
            for version in await self._labels.shadow_versions():
                threshold = self._enricher.fraud_threshold
                if threshold is None:
                    threshold = recorded.get(version)
                if threshold is not None:
                    thresholds[version] = float(threshold)
        return await self._labels.outcomes(
            label_delay=timedelta(seconds=self._settings.label_delay_s),
            shadow_thresholds=thresholds,
        )

    # -- the collector -----------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        report = self._last
        yield GaugeMetricFamily(
            "pizzashop_model_psi_alert_threshold",
            "a population stability index at or above this is a drift alert",
            value=self._settings.psi_alert,
        )
        psi = GaugeMetricFamily(
            "pizzashop_model_psi",
            "population stability index of a version's latest scored orders against its "
            "training data, per score or input",
            labels=["model", "version", "kind", "feature"],
        )
        alert = GaugeMetricFamily(
            "pizzashop_model_drift_alert",
            "1 when some PSI of the version is at or above the alert threshold",
            labels=["model", "version"],
        )
        precision = GaugeMetricFamily(
            "pizzashop_model_online_precision",
            "held orders later charged back / held orders, on matured orders, per fraud version "
            "and role (champion: decided; shadow: at its own threshold)",
            labels=["model", "version", "role"],
        )
        recall = GaugeMetricFamily(
            "pizzashop_model_online_recall",
            "charged-back orders held / charged-back orders, on matured orders",
            labels=["model", "version", "role"],
        )
        labelled = GaugeMetricFamily(
            "pizzashop_model_labelled_orders",
            "matured orders precision and recall are read on",
            labels=["model", "version", "role"],
        )
        alias = GaugeMetricFamily(
            "pizzashop_model_alias_version",
            "the version each alias points at (champion: the one serving)",
            labels=["model", "alias"],
        )
        for model in report.models if report is not None else ():
            if model.serving is not None:
                alias.add_metric([model.name, "champion"], model.serving)
            if model.challenger is not None:
                alias.add_metric([model.name, "challenger"], model.challenger)
            for v in model.versions:
                version = str(v.version)
                if v.drift:
                    alert.add_metric([model.name, version], 1.0 if v.drift_alert else 0.0)
                for d in v.drift:
                    if d.psi is not None:
                        psi.add_metric([model.name, version, d.kind, d.feature], d.psi)
                for o in v.online:
                    labels = [model.name, version, o.role]
                    labelled.add_metric(labels, o.orders)
                    if o.precision is not None:
                        precision.add_metric(labels, o.precision)
                    if o.recall is not None:
                        recall.add_metric(labels, o.recall)
        yield from (psi, alert, precision, recall, labelled, alias)


__all__ = ["METRIC_NAMES", "ModelMonitor"]
