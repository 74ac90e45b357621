"""The batch scoring pipeline the enrichment worker calls; no Kafka in here.

    orders ──▶ ScoringBatch: features (one vectorised batch, state read then updated,
               idempotent) and, when a scorer wants them, basket histories
           ──▶ for each scorer, concurrently (``models.scorer``):
                 pre (loop) ──▶ core + explain (the pipeline's own thread pool, under the
                 model's timeout) ──▶ post (loop)
           ──▶ OrderScores: per order, each scorer's ``Scored | Degraded``, stamped with its
               lineage (``ScoreLineage``: model, version, feature schema, backend, latency,
               top features)

The forward passes run in a bounded ``ThreadPoolExecutor`` owned by the pipeline, never in the
loop's default executor, so a hung model cannot starve anything else that uses it. A scorer
that raises or overruns its timeout degrades only its own scores; the others still publish.
While its timed-out batch still runs, its next batches are degraded at once, so a hung model
holds one thread at most. Batches scored concurrently (the runtime hands over the batches of
different partitions as they come) take turns per model, outside the timeout: a model runs one
batch at a time, and a healthy model's next batch waits for it instead of being degraded.

Each model computes single-threaded in its pool thread: ``start()`` caps NumPy's BLAS pool
(``blas_threads``, process-wide), as the ONNX sessions cap their own; on two shared cores a
BLAS pool beside the scorer threads and the event loop fought them for the cores and made the
upsell ranker's small matrix products 10-30 times slower at the median.
A failure to read or write the feature state is not a model failure: it raises
``TransientError`` so the runtime retries the batch, and since the state is idempotent by order
id the retry counts nothing twice.

Scorers are loaded from the registry by name (``models.registry.SCORERS``) at the version its
alias names (``champion``: the one that decides, else the latest; ``challenger``: a shadow
pipeline's), and swapped as one set by ``reload()`` whenever the registry names another version,
newer or older (a promote or a rollback), so a batch never mixes versions. A version that will
not load leaves the one serving in place; with none serving, that model's scores are degraded
under the lineage of the version that was tried.

A shadow pipeline scores the champion's batch (``prepare`` once, ``score`` by both), so the
challengers see exactly the champion's features and histories and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any, Literal, TypeAlias

from pydantic import TypeAdapter
from threadpoolctl import threadpool_limits

from ingest.events import OrderPlaced, ScoreLineage
from models.feature_state import FeatureBuilder, FeatureStateStore
from models.registry import SCORERS, Registry, scorer_class
from models.scorer import Degraded, Result, Scored, Scorer, ScoringBatch, TopFeatures
from models.upsell.history import BasketHistory
from pizzashop.core.errors import ConfigError, TransientError

logger = logging.getLogger(__name__)

AnyScorer: TypeAlias = Scorer[Any, Any]
Alias: TypeAlias = Literal["champion", "challenger"]

#: ``ScoreLineage.backend`` of a version that was tried but would not load.
UNLOADED = "unloaded"


@dataclass(frozen=True, slots=True)
class OrderScores:
    """One order's results, by scorer name, in the order the scorers run. A scorer that is
    not loaded has no entry."""

    order_id: str
    results: Mapping[str, Result]

    def __getitem__(self, name: str) -> Result:
        return self.results[name]

    def get(self, name: str) -> Result | None:
        return self.results.get(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, for tools and notebooks."""
        out: dict[str, Any] = {"order_id": self.order_id}
        for name, result in self.results.items():
            lineage = result.lineage.model_dump(mode="json") if result.lineage else None
            if isinstance(result, Degraded):
                out[name] = {"degraded": True, "reason": result.reason, "lineage": lineage}
            else:
                value = {key: _plain(item) for key, item in result.value.items()}
                out[name] = {**value, "degraded": False, "reason": None, "lineage": lineage}
        return out


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch with its features (and histories) built, ready for any pipeline to score."""

    batch: ScoringBatch
    feature_ms: float  # counted in every score's latency

    def __len__(self) -> int:
        return len(self.batch)


@dataclass(frozen=True, slots=True)
class _Unloaded:
    """A version that was tried and would not load, with nothing else serving its name."""

    version: int
    reason: str
    feature_schema_version: int


def _plain(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _ms(start: float) -> float:
    return 1000.0 * (time.perf_counter() - start)


class _Busy(Exception):
    """The scorer's last batch timed out and still runs."""


class ScoringPipeline:
    """Scorers over batches of orders. ``start()`` loads and warms them up; ``stop()`` shuts
    the thread pool down (a thread stuck in a hung model is abandoned, not joined)."""

    def __init__(
        self,
        registry: Registry | None,
        store: FeatureStateStore,
        *,
        names: Sequence[str] | None = None,
        scorers: Sequence[AnyScorer] | None = None,
        timeout_s: float = 2.0,
        timeouts: Mapping[str, float] | None = None,
        threads: int = 3,
        explain_k: int = 3,
        prefer_onnx: bool = True,
        history: BasketHistory | None = None,
        pinned: Mapping[str, int] | None = None,
        alias: Alias = "champion",
        blas_threads: int | None = 1,
    ) -> None:
        """``names``: the registered scorers to serve (default: all of ``SCORERS``), loaded
        from ``registry`` at the version ``alias`` names (``"challenger"``: a shadow pipeline,
        which serves only the names that have one); or ``scorers``: given instances (tests,
        notebooks; never reloaded). ``pinned`` fixes a version per name over the alias.
        ``timeouts`` overrides ``timeout_s`` per scorer name; ``threads`` bounds the pool that
        runs ``core``; ``blas_threads`` caps NumPy's BLAS pool at ``start()`` (None: leave it).
        """
        if threads < 1:
            raise ConfigError("a scoring pipeline needs at least one thread")
        self.registry = registry
        self.features = FeatureBuilder(store)
        self.names = tuple(names if names is not None else SCORERS)
        self.timeout_s = timeout_s
        self.timeouts = dict(timeouts or {})
        self.explain_k = explain_k
        self.prefer_onnx = prefer_onnx
        self.pinned = dict(pinned or {})
        self.alias = alias
        # Without a history store, a scorer that needs histories sees none (upsell: basket only).
        self.history = history
        self._scorers = tuple(scorers) if scorers is not None else None
        self._fixed = scorers is not None
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scorer")
        self._turns: dict[str, asyncio.Lock] = {}  # per model: one batch at a time
        self._hung: dict[str, Future[Any]] = {}  # per model: a forward pass past its timeout
        self._failed: dict[str, int] = {}  # a version that would not load is not tried again
        self._unloaded: dict[str, _Unloaded] = {}
        self._stopped = False
        self.blas_threads = blas_threads

    @classmethod
    def from_scorers(
        cls, store: FeatureStateStore, scorers: Sequence[AnyScorer], **kwargs: Any
    ) -> ScoringPipeline:
        """A pipeline over given scorers (tests, notebooks): no registry, no reload."""
        return cls(None, store, scorers=scorers, **kwargs)

    @classmethod
    def challenger(
        cls, registry: Registry, store: FeatureStateStore, *, name: str, version: int, **kwargs: Any
    ) -> ScoringPipeline:
        """A shadow pipeline: one scorer at a pinned version, nothing else.

        Sharing the champion's feature store is safe: features are stored per order id, so the
        challenger reads exactly the features the champion computed.
        """
        return cls(
            registry, store, names=(name,), pinned={name: version}, alias="challenger", **kwargs
        )

    @classmethod
    def shadow(
        cls,
        registry: Registry,
        store: FeatureStateStore,
        *,
        names: Sequence[str] | None = None,
        pinned: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> ScoringPipeline:
        """The challengers of ``names``, as the registry's ``challenger`` aliases name them
        (``pinned`` overrides), followed by ``reload()``; empty while none is set."""
        return cls(registry, store, names=names, pinned=pinned, alias="challenger", **kwargs)

    @property
    def scorers(self) -> tuple[AnyScorer, ...]:
        return self._scorers or ()

    @property
    def versions(self) -> dict[str, int]:
        """The version serving each loaded name (a name whose version would not load is out)."""
        return {s.name: s.version for s in self.scorers}

    @property
    def tried(self) -> dict[str, int]:
        """Per name, the version scoring or, when none loaded, the version tried."""
        return {**{n: u.version for n, u in self._unloaded.items()}, **self.versions}

    @property
    def needs_history(self) -> bool:
        return any(s.needs_history for s in self.scorers)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._stopped:
            raise RuntimeError("a stopped scoring pipeline cannot start again")
        if self.blas_threads is not None:
            threadpool_limits(self.blas_threads, user_api="blas")
        if self._scorers is None:
            if self.registry is None:
                raise ConfigError("a pipeline needs a registry or scorers")
            self._scorers = await self._load(await asyncio.to_thread(self._wanted), {})
        else:
            await self._warm_up(self._scorers)
        logger.info("scoring pipeline ready", extra={"versions": self.versions})

    async def stop(self) -> None:
        """Idempotent. Queued forward passes are cancelled; running ones finish unobserved."""
        self._stopped = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _wanted(self) -> dict[str, int]:
        """Registry version to serve per name (pinned, else as the alias names it); blocking
        (reads files), call it off the loop."""
        registry = self.registry
        assert registry is not None
        pick = registry.champion if self.alias == "champion" else registry.challenger
        found: dict[str, int] = {}
        for name in self.names:
            version = self.pinned.get(name)
            if version is None:
                version = pick(name)
            if version is not None:
                found[name] = version
        return found

    async def _load(
        self, wanted: Mapping[str, int], current: Mapping[str, AnyScorer]
    ) -> tuple[AnyScorer, ...]:
        """Load the wanted versions not loaded yet; keep the current scorer of a name whose
        new version fails to load; a name with none is remembered in ``_unloaded``, so its
        scores are degraded under the tried version's lineage."""
        registry = self.registry
        assert registry is not None
        loaded: list[AnyScorer] = []
        fresh: list[AnyScorer] = []
        unloaded: dict[str, _Unloaded] = {}
        for name, version in wanted.items():
            kept = current.get(name)
            if kept is not None and kept.version == version:
                loaded.append(kept)
                continue
            if self._failed.get(name) == version:
                if kept is not None:
                    loaded.append(kept)
                elif name in self._unloaded:
                    unloaded[name] = self._unloaded[name]
                continue
            schema = 0
            try:
                cls = scorer_class(name)
                mv = await asyncio.to_thread(registry.load, name, version)
                schema = mv.metadata.feature_schema_version
                scorer = await asyncio.to_thread(cls.load, mv, prefer_onnx=self.prefer_onnx)
            except Exception as exc:
                logger.warning(
                    "scorer %s v%d not loaded%s",
                    name,
                    version,
                    f"; v{kept.version} keeps serving" if kept is not None else "",
                    exc_info=True,
                )
                self._failed[name] = version
                if kept is not None:
                    loaded.append(kept)
                else:
                    reason = f"{name} v{version} not loaded: {type(exc).__name__}: {exc}"
                    unloaded[name] = _Unloaded(version, reason, schema)
                continue
            loaded.append(scorer)
            fresh.append(scorer)
        await self._warm_up(fresh)
        self._unloaded = unloaded
        return tuple(loaded)

    async def _warm_up(self, scorers: Iterable[AnyScorer]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, s.warm_up) for s in scorers))

    async def reload(self) -> bool:
        """Serve the versions the registry names now (an alias moved either way, a newer latest,
        a challenger set or cleared). Call it between batches. True when something changed."""
        if self.registry is None or self._fixed:
            return False
        if self._scorers is None:
            await self.start()
            return True
        current = {s.name: s for s in self._scorers}
        wanted = await asyncio.to_thread(self._wanted)
        if wanted == self.versions:
            return False
        before, tried = self.versions, self.tried
        self._scorers = await self._load(wanted, current)
        if self.versions == before and self.tried == tried:
            return False
        logger.info(
            "%s models reloaded: %s (was %s)",
            self.alias,
            self.versions,
            before,
            extra={"versions": self.versions, "was": before, "alias": self.alias},
        )
        return True

    async def reload_if_newer(self) -> bool:
        """The name this had when only newer versions were applied: ``reload()``."""
        return await self.reload()

    # -- scoring --------------------------------------------------------------------------------
    async def score_batch(self, orders: Sequence[OrderPlaced]) -> list[OrderScores]:
        if not orders:
            return []
        return await self.score(await self.prepare(orders))

    async def prepare(
        self, orders: Sequence[OrderPlaced], *, histories: bool | None = None
    ) -> PreparedBatch:
        """Features (state read then updated) and, if ``histories`` (default: when a scorer
        of this pipeline wants them), basket histories. Once per batch: both are recorded."""
        if self._scorers is None:
            await self.start()
        if histories is None:
            histories = self.needs_history
        t0 = time.perf_counter()
        history = self.history if histories and orders else None
        try:
            if history is None:
                features, found = await self.features.transform(orders), None
            else:
                # Side by side: while one waits on its database round trip, the other computes.
                # Both are idempotent by order id, so a retry after either failed is safe.
                features, found = await asyncio.gather(
                    self.features.transform(orders), history.before(orders)
                )
        except Exception as exc:
            raise TransientError(f"feature state unavailable: {exc}") from exc
        return PreparedBatch(ScoringBatch(orders, features, found), _ms(t0))

    async def score(self, prepared: PreparedBatch) -> list[OrderScores]:
        """Every scorer of this pipeline over a prepared batch (this one's or another's)."""
        if self._scorers is None:
            await self.start()
        scorers = self.scorers  # one set per batch, even if a reload lands meanwhile
        unloaded = dict(self._unloaded)
        batch = prepared.batch
        per_scorer = await asyncio.gather(
            *(self._score(s, batch, prepared.feature_ms) for s in scorers)
        )
        results: dict[str, list[Result]] = {
            s.name: r for s, r in zip(scorers, per_scorer, strict=True)
        }
        for name, missing in unloaded.items():
            lineage = ScoreLineage(
                model=name,
                version=missing.version,
                feature_schema_version=missing.feature_schema_version,
                backend=UNLOADED,
                latency_ms=0.0,
            )
            results[name] = [Degraded(missing.reason, lineage)] * len(batch)
        return [
            OrderScores(o.order_id, {name: found[i] for name, found in results.items()})
            for i, o in enumerate(batch.orders)
        ]

    async def _score(
        self, scorer: AnyScorer, batch: ScoringBatch, feature_ms: float
    ) -> list[Result]:
        """pre → core + explain (pool, timeout) → post, and the lineage; never raises."""
        t0 = time.perf_counter()
        timeout = self.timeouts.get(scorer.name, self.timeout_s)
        top: Sequence[TopFeatures] | None = None
        waited = 0.0
        try:
            inputs = scorer.pre(batch)
            # One batch at a time per model (the scorer contract), in the order they came:
            # batches of other partitions are handled concurrently and queue here, outside the
            # timeout, which is the model's own time. A model stuck past its timeout releases
            # its turn (the next batch then finds it hung: ``_Busy``).
            turn = self._turns.setdefault(scorer.name, asyncio.Lock())
            queued = time.perf_counter()
            async with turn:
                waited = time.perf_counter() - queued
                raw, top = await asyncio.wait_for(self._submit(scorer, inputs), timeout)
            results = list(scorer.post(raw, batch))
            if len(results) != len(batch):
                raise ValueError(f"post returned {len(results)} results for {len(batch)} orders")
            if top is not None and len(top) != len(batch):
                raise ValueError(f"explain returned {len(top)} rows for {len(batch)} orders")
        except _Busy:
            results, top = (
                [Degraded(f"timeout after {timeout}s (an earlier batch still runs)")],
                None,
            )
        except TimeoutError:
            logger.warning("%s scoring timed out after %.3gs", scorer.name, timeout)
            results, top = [Degraded(f"timeout after {timeout}s")], None
        except Exception as exc:
            logger.warning("%s scoring failed", scorer.name, exc_info=True)
            results, top = [Degraded(f"{type(exc).__name__}: {exc}")], None
        if top is None and len(results) == 1:
            results *= len(batch)  # one reason for the whole batch
        return self._stamp(scorer, results, top, feature_ms + _ms(t0) - 1000.0 * waited)

    async def _submit(
        self, scorer: AnyScorer, inputs: Any
    ) -> tuple[Any, Sequence[TopFeatures] | None]:
        hung = self._hung.get(scorer.name)
        if hung is not None and not hung.done():
            raise _Busy
        k = self.explain_k

        def forward() -> tuple[Any, Sequence[TopFeatures] | None]:
            raw = scorer.core(inputs)
            return raw, (scorer.explain(inputs, raw, k) if k > 0 else None)

        future = self._pool.submit(forward)
        try:
            # Cancelling the wrapper (the timeout) cancels the pool job too, if not started.
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.done():
                self._hung[scorer.name] = future  # timed out and still running
            raise

    @staticmethod
    def _stamp(
        scorer: AnyScorer, results: list[Result], top: Sequence[TopFeatures] | None, ms: float
    ) -> list[Result]:
        name, version = scorer.name, scorer.version
        schema, backend, latency = scorer.feature_schema_version, scorer.backend, round(ms, 3)
        shared = ScoreLineage(
            model=name,
            version=version,
            feature_schema_version=schema,
            backend=backend,
            latency_ms=latency,
        )
        if top is None:
            return [_with_lineage(r, shared) for r in results]
        # One validation builds the batch's lineages (each with its own attributions) in
        # pydantic-core, not a constructor call per lineage and per attribution.
        base = {
            "model": name,
            "version": version,
            "feature_schema_version": schema,
            "backend": backend,
            "latency_ms": latency,
        }
        lineages = _LINEAGES.validate_python(
            [
                {
                    **base,
                    "top_features": [{"name": f, "contribution": round(v, 6)} for f, v in row],
                }
                if isinstance(r, Scored)
                else shared
                for r, row in zip(results, top, strict=True)
            ]
        )
        return [_with_lineage(r, lin) for r, lin in zip(results, lineages, strict=True)]


_LINEAGES = TypeAdapter(list[ScoreLineage])


def _with_lineage(result: Result, lineage: ScoreLineage) -> Result:
    # Built directly when the type is the plain one: ``dataclasses.replace`` costs several
    # times more, once per order and scorer.
    if type(result) is Scored:
        return Scored(result.value, lineage)
    if type(result) is Degraded:
        return Degraded(result.reason, lineage)
    return replace(result, lineage=lineage)


__all__ = ["OrderScores", "PreparedBatch", "ScoringPipeline"]
