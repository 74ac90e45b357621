"""Every throughput and latency figure of issue 8 in one run, on one broker.

    .venv/bin/python bench/suite.py --json [--runs 3] [--orders 20000] [--messages 50000]
                                           [--rates 200,500,1000,5000] [--seconds 10]
                                           [--only ceiling,peers,ours,latency,api] [--profile]
                                           [--results bench/RESULTS.md]

- ceiling: a bare passthrough (consume, decode, filter, encode, produce; offsets in the same
  transaction) with confluent-kafka and with aiokafka, over ``--messages`` preloaded orders;
- peers: the same passthrough in Quix Streams and in Faust (faust-streaming), each installed
  by the suite into its own virtualenv under ``.cache/bench-venvs/`` on first use;
- ours: the kitchen and notification flows (``bench/flows.py``, mail to an SMTP server in its
  own process) and enrichment with all three models (``bench/enrich.py``), each from a
  preloaded backlog of ``--orders``, each in its own process; each once more on the
  confluent-kafka transport (``PIZZASHOP_CONSUMER__TRANSPORT=confluent``, ``*_confluent_per_s``);
- latency: ``POST /orders`` to ``OrderEnriched`` at fixed offered rates (``--rates``), as a
  shop is deployed: the API with its outbox relay in one process, the enricher in another
  (one home, so one SQLite file, and one set of topics), the open-loop load and the probe in
  a third (``bench/_peers/http_load.py rates``). A rate the shop cannot keep is cut short and
  marked not sustained, and the higher ones are not offered;
- api: the order API alone (API and relay in one process), loaded from a separate process at
  ``--connections`` for ``--api-seconds`` by wrk when installed, else by the Python client
  (``bench/_intake_load.py``, shared with ``bench/intake.py``); ``api.tool`` says which.

Every measurement runs as a subprocess, so none competes with this process for the GIL and
each can be profiled: ``--profile`` adds one more run of our stages, not counted in the
figures, under py-spy with ``--gil`` (the samples show what holds the GIL). The flows are
sampled over their timed window only (``bench/_window_profile.py``), from a backlog
``PROFILE_BACKLOG`` times larger so the window is long; the shops' processes whole. Raw
collapsed stacks go to ``bench/profiles/``, a summary of each to RESULTS.md
(``bench/_profile_summary.py``).
Runs are interleaved so a noisy machine's noise falls on all alike; each figure is the median
of ``--runs`` with min and max. Writes ``--results`` (``bench/RESULTS.md``) and prints the
JSON.
Uses PIZZASHOP_KAFKA_BOOTSTRAP if set, else a local broker for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the repository's packages, bench included
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench._cpu_sampler import MACHINE, CpuSampler
from bench._intake_load import load, wrk_script
from bench._profile_summary import markdown as profile_markdown
from bench._window_profile import PROFILE_ENV, py_spy
from bench.flows import preload
from ingest.topics import TopicSpec, ensure_topics
from pizzashop.app.kafka import kafka
from pizzashop.app.traffic import OrderRequests
from pizzashop.core.menu import load_menu
from pizzashop.core.net import free_port
from pizzashop.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).parent / "_peers"
VENVS = REPO / ".cache" / "bench-venvs"
PROFILES = Path(__file__).parent / "profiles"
RESULTS = Path(__file__).parent / "RESULTS.md"
SECTIONS = ("ceiling", "peers", "ours", "latency", "api")
#: The peers' pinned versions, installed into their own virtualenvs.
PEER_PACKAGES = {"quix": "quixstreams==3.28.1", "faust": "faust-streaming==0.15.3"}


def peer_python(name: str) -> Path:
    """The peer's virtualenv's interpreter, made and filled on first use."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_PACKAGES[name]], check=True)
        (venv / ".installed").touch()
    return python


class Suite:
    def __init__(self, args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.settings = Settings(home=tmp, cache_dir=REPO / ".cache")
        self.env = {
            **os.environ,
            "PIZZASHOP_KAFKA_BOOTSTRAP": bootstrap,
            "PYTHONPATH": str(REPO),
        }
        self.registry = REPO / ".cache" / "bench-registry"
        #: The profiled run (``--profile``): our stages under py-spy, longer backlogs.
        self.profiling = False
        #: The 1-minute load average at the start and end of each measured run.
        self.loads: list[tuple[float, float]] = []

    # -- running one measurement -------------------------------------------------------
    async def measure(
        self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run ``argv`` and parse the last JSON line it prints; in the profiled run, a flow
        samples its own timed window."""
        env = env or self.env
        if self.profiling and name in PROFILED:
            PROFILES.mkdir(exist_ok=True)
            env = {**env, PROFILE_ENV: str(PROFILES / f"{name}.txt")}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        # The last JSON object printed; Faust routes its workers' stdout into its log lines.
        found: list[dict[str, Any]] = []
        for line in (out.decode() + "\n" + err.decode()).splitlines():
            if (start := line.find('{"')) >= 0:
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line[start:]))
        if proc.returncode != 0 or not found:
            tail = err.decode()[-1500:]
            raise RuntimeError(f"{name} failed ({proc.returncode}): {tail}")
        return found[-1]

    def _profiled(self, name: str, argv: Sequence[str]) -> list[str]:
        """A shop's process whole under py-spy, in the profiled run."""
        if not (self.profiling and name in PROFILED):
            return list(argv)
        PROFILES.mkdir(exist_ok=True)
        return [
            py_spy(), "record", "--format", "raw", "--rate", "200", "--subprocesses",
            "--gil", "-o", str(PROFILES / f"{name}.txt"), "--", *argv,
        ]  # fmt: skip

    # -- sections ------------------------------------------------------------------------
    async def passthroughs(self, which: Sequence[str]) -> dict[str, float]:
        topics = await preload(self.settings, self.bootstrap, self.args.messages)
        out: dict[str, float] = {}
        for name in which:
            python = sys.executable if name in ("confluent", "aiokafka") else None
            interpreter = str(python or peer_python(name))
            group = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            sink = f"{topics.prefix}{name}.out"
            partitions = self.settings.orders_partitions
            await ensure_topics(self.bootstrap, [TopicSpec(sink, partitions)])
            result = await self.measure(
                name,
                [
                    interpreter,
                    str(PEERS / f"{name}_pass.py"),
                    "--bootstrap",
                    self.bootstrap,
                    "--source",
                    topics.orders,
                    "--sink",
                    sink,
                    "--group",
                    group,
                    "--count",
                    str(self.args.messages),
                ],
            )
            out[name] = float(result["per_s"])
        return out

    def _transport_env(self, transport: str) -> dict[str, str]:
        return {**self.env, "PIZZASHOP_CONSUMER__TRANSPORT": transport}

    async def flow(self, flow: str, transport: str = "aiokafka") -> float:
        name = flow if transport == "aiokafka" else f"{flow}-{transport}"
        result = await self.measure(
            name,
            [
                sys.executable,
                "bench/flows.py",
                "--flows",
                flow,
                "--runs",
                "1",
                "--orders",
                str(self.backlog),
                "--no-passthrough",
                "--json",
            ],
            env=self._transport_env(transport),
        )
        return float(result["per_s"][flow]["median"])

    async def enrich(self, transport: str = "aiokafka") -> float:
        result = await self.measure(
            "enrich" if transport == "aiokafka" else f"enrich-{transport}",
            [
                sys.executable,
                "bench/enrich.py",
                "--json",
                "--rate",
                "100",
                "--seconds",
                "1",
                "--burst",
                str(self.backlog),
                "--registry",
                str(self.registry),
            ],
            env=self._transport_env(transport),
        )
        return float(result["throughput_per_s"])

    def shop_env(self) -> tuple[dict[str, str], str]:
        """The environment of one shop's processes (a fresh home, topics and groups, a free
        API port) and its enriched topic."""
        run = uuid.uuid4().hex[:6]
        home = self.tmp / f"shop-{run}"
        home.mkdir()
        env = {
            **self.env,
            "PIZZASHOP_HOME": str(home),
            "PIZZASHOP_TOPIC_PREFIX": f"bench-{run}.",
            "PIZZASHOP_GROUP_PREFIX": f"bench-{run}",
            "PIZZASHOP_API_PORT": str(free_port()),
            "PIZZASHOP_API__RATE_LIMIT_PER_ADDRESS": "",
            "PIZZASHOP_REGISTRY_DIR": str(self.registry),
        }
        return env, f"bench-{run}.orders.enriched"

    @contextlib.asynccontextmanager
    async def shop(
        self, name: str, env: dict[str, str], options: Sequence[str]
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        """``pizzashop run *options`` in its own process, stopped by SIGINT at the end (py-spy
        writes its profile, the shop stops in order)."""
        argv = self._profiled(name, [sys.executable, "-m", "pizzashop.app.cli", "run", *options])
        path = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}.log"
        log = path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdout=log, stderr=log
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(2)
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()

    @contextlib.asynccontextmanager
    async def api_server(
        self, name: str, env: dict[str, str]
    ) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
        """The API and its outbox relay, no flows (``--workers ""``); yields its URL and its
        process once ready."""
        async with self.shop(name, env, ["--workers", ""]) as proc:
            url = f"http://127.0.0.1:{env['PIZZASHOP_API_PORT']}"
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(600):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get("/health/ready")).status_code == 200:
                            break
                    if proc.returncode is not None:
                        raise RuntimeError(f"server {name} exited ({proc.returncode})")
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"server {name} not ready in 60 s")
            yield url, proc

    async def latency(self) -> dict[str, Any]:
        """The API process first (it creates the topics and migrates the database), then the
        enricher's process on the same home and topics; the load process waits, through its
        warm-up orders, until the enricher answers."""
        env, enriched = self.shop_env()
        async with (
            self.api_server("latency-api", env) as (url, api),
            self.shop("latency-enricher", env, ["--no-api", "--workers", "enricher"]) as worker,
            CpuSampler({"api": api.pid, "enricher": worker.pid}) as cpu,
        ):
            load = asyncio.ensure_future(
                self.measure(
                    "load-rates",
                    [
                        sys.executable,
                        str(PEERS / "http_load.py"),
                        "rates",
                        "--url",
                        url,
                        "--bootstrap",
                        self.bootstrap,
                        "--enriched",
                        enriched,
                        "--rates",
                        self.args.rates,
                        "--seconds",
                        str(self.args.seconds),
                        "--max-lag-s",
                        str(self.args.max_lag_s),
                    ],
                )
            )
            exited = asyncio.ensure_future(worker.wait())
            await asyncio.wait({load, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not load.done():
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
                raise RuntimeError(f"the enricher's process exited ({worker.returncode})")
            exited.cancel()
            rates: dict[str, Any] = load.result()
        # Cores busy over each rate's window: the processes are py-spy's in the profiled run.
        for row in rates.values():
            if isinstance(row, dict) and row.get("started_at") and row.get("seconds"):
                start = float(row.pop("started_at"))
                row["cores"] = cpu.cores(start, start + float(row["seconds"]))
        return rates

    async def api(self) -> dict[str, Any]:
        """wrk when installed (``bench/_intake_load.py``), else the Python closed-loop client;
        a 1 s warm-up first, as ``bench/intake.py`` does."""
        env, _ = self.shop_env()
        script = self.tmp / "orders.lua"
        if not script.exists():
            wrk_script(script, list(itertools.islice(OrderRequests(load_menu(), seed=1), 500)))
        async with self.api_server("api", env) as (url, _):
            await load(url, 1, self.args.connections, script)
            result = await load(url, self.args.api_seconds, self.args.connections, script)
        statuses = {str(k): v for k, v in result["statuses"].items()}
        return {
            "orders_per_s": result["orders_per_s"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "connections": self.args.connections,
            "orders": statuses.get("202", 0),
            "statuses": statuses,
            "tool": "wrk" if shutil.which("wrk") else "bench/_peers/http_load.py closed",
        }

    @property
    def backlog(self) -> int:
        return int(self.args.orders) * (PROFILE_BACKLOG if self.profiling else 1)

    async def ensure_registry(self) -> None:
        from models.registry import Registry

        if Registry(self.registry).latest("fraud") is None:
            from models.training import train

            await asyncio.to_thread(train, self.registry, n_orders=8000, seed=3, progress=False)

    async def one_run(self) -> dict[str, Any]:
        only = self.args.only
        result: dict[str, Any] = {}
        load_before = os.getloadavg()[0]
        if "ceiling" in only or "peers" in only:
            which = [n for n in ("confluent", "aiokafka") if "ceiling" in only]
            which += [n for n in ("quix", "faust") if "peers" in only]
            rates = await self.passthroughs(which)
            if "ceiling" in only:
                result["ceiling"] = {
                    "confluent_per_s": rates["confluent"],
                    "aiokafka_per_s": rates["aiokafka"],
                }
            if "peers" in only:
                result["peers"] = {"quix_per_s": rates["quix"], "faust_per_s": rates["faust"]}
        if "ours" in only:
            # The two transports take turns, so the machine's noise falls on both alike.
            result["ours"] = {
                "kitchen_per_s": await self.flow("kitchen"),
                "kitchen_confluent_per_s": await self.flow("kitchen", "confluent"),
                "notification_per_s": await self.flow("notification"),
                "notification_confluent_per_s": await self.flow("notification", "confluent"),
                "enrich_per_s": await self.enrich(),
                "enrich_confluent_per_s": await self.enrich("confluent"),
            }
        # A failing end-to-end section is reported, not fatal: the figures above still stand.
        if "latency" in only:
            try:
                result["latency_ms"] = await self.latency()
            except RuntimeError as exc:
                result["latency_ms"] = {"error": {"message": str(exc)[-300:]}}
        if "api" in only:
            try:
                result["api"] = await self.api()
            except RuntimeError as exc:
                result["api"] = {"error": str(exc)[-300:]}
        if not self.profiling:
            self.loads.append((load_before, os.getloadavg()[0]))
        return result

    async def profile_run(self) -> None:
        """Our stages once more under py-spy, their figures dropped: py-spy slows what it
        samples."""
        self.profiling = True
        shutil.rmtree(PROFILES, ignore_errors=True)
        only, self.args.only = (
            self.args.only,
            tuple(s for s in self.args.only if s in ("ours", "latency", "api")),
        )
        try:
            await self.one_run()
        finally:
            self.profiling, self.args.only = False, only


#: The profiled run's flow backlogs, as a multiple of ``--orders``: a window of seconds.
PROFILE_BACKLOG = 2

#: Our stages, the ones --profile records.
PROFILED = frozenset(
    {
        *("kitchen", "kitchen-confluent", "notification", "notification-confluent"),
        *("enrich", "enrich-confluent", "latency-api", "latency-enricher", "api"),
    }
)


def _median(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The median figure of every numeric leaf, and {leaf: [min, max]} beside it.

    Leaves are merged at any depth and over every run's keys (a run whose end-to-end section
    failed has other keys than one where it held). A number's median is taken over the runs
    where it is a number (a rate not sustained has no percentiles); a yes/no leaf (a rate
    ``sustained``) holds in the median when it held in most runs, its spread is [runs where it
    held, runs]; any other leaf is the first run's."""
    return _merge(runs)


def _merge(dicts: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    median: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    keys = list(dict.fromkeys(key for d in dicts for key in d))
    for key in keys:
        values = [d.get(key) for d in dicts]
        present = [v for v in values if v is not None]
        first = present[0] if present else None
        if isinstance(first, dict):
            median[key], spread[key] = _merge([v if isinstance(v, dict) else {} for v in values])
        elif isinstance(first, bool):
            held = sum(v is True for v in values)
            median[key] = 2 * held > len(values)
            spread[key] = [held, len(values)]
        else:
            nums = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
            if nums:
                median[key] = statistics.median(nums)
                spread[key] = [min(nums), max(nums)]
            else:
                median[key] = first
    return median, spread


def _cores(cores: Any) -> str:
    if not isinstance(cores, dict) or not cores:
        return "-"
    return ", ".join(_number(cores.get(k), None, 2) for k in ("api", "enricher", MACHINE))


def _loads(median: dict[str, Any]) -> str:
    pairs = median.get("machine", {}).get("load_1m", [])
    return ", ".join(f"{a:.1f} → {b:.1f}" for a, b in pairs) or "not taken"


def _number(value: Any, lo_hi: Any = None, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "-"
    if isinstance(lo_hi, list) and len(lo_hi) == 2 and lo_hi[0] != lo_hi[1]:
        return f"{value:,.{digits}f} ({lo_hi[0]:,.{digits}f}-{lo_hi[1]:,.{digits}f})"
    return f"{value:,.{digits}f}"


#: The issue's latency target: end-to-end p99 at most this at this offered rate.
TARGET_RATE, TARGET_P99_MS = "500", 100.0


def _latency_lines(latency: dict[str, Any], spread: dict[str, Any], max_lag_s: float) -> list[str]:
    lines = ["", "## End to end, POST /orders → OrderEnriched (ms)", ""]
    if "error" in latency:
        return [*lines, f"Failed: {latency['error']}"]
    lines += [
        "API and outbox relay in one process, the enricher in another (one SQLite home), the "
        "open-loop load and the probe in a third. Latency runs from when each POST was due "
        "(waiting for a free connection counts) to its committed `OrderEnriched`; "
        '"confirm" is the POST\'s own answer. A rate is sustained when it was offered at '
        "95% or more, never had more than "
        f'{max_lag_s:g} s of it in flight, and every order was enriched. "Cores busy" is '
        "CPU time over the rate's window, from `/proc` (`bench/_cpu_sampler.py`): the API's "
        "process, the enricher's, and the whole machine (the broker and the load too).",
        "",
        "| offered/s | sustained (runs) | achieved offered/s | p50 | p99 | p99.9 | confirm p99 "
        "| enriched/orders | cores busy: API, enricher, machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    highest = None
    for rate, row in latency.items():
        lo_hi = spread.get(rate, {})
        held, runs = lo_hi.get("sustained", [0, 0])
        lines.append(
            f"| {rate} | {'yes' if row.get('sustained') else 'no'} ({held}/{runs}) | "
            f"{_number(row.get('achieved_offered_per_s'), lo_hi.get('achieved_offered_per_s'))}"
            f" | {_number(row.get('p50'), lo_hi.get('p50'), 1)} "
            f"| {_number(row.get('p99'), lo_hi.get('p99'), 1)} "
            f"| {_number(row.get('p999'), lo_hi.get('p999'), 1)} "
            f"| {_number(row.get('confirm_p99'), lo_hi.get('confirm_p99'), 1)} "
            f"| {_number(row.get('enriched'))}/{_number(row.get('orders'))} "
            f"| {_cores(row.get('cores'))} |"
        )
        if row.get("sustained"):
            highest = rate
        elif row.get("not_sustained_because"):
            notes.append(f"- {rate}/s not sustained (first run): {row['not_sustained_because']}")
    lines += ["", *notes] if notes else []
    lines += ["", f"Highest rate sustained: {highest + '/s' if highest else 'none'}."]
    target = latency.get(TARGET_RATE)
    if target is not None:
        p99 = target.get("p99")
        met = bool(target.get("sustained")) and isinstance(p99, int | float)
        met = met and p99 <= TARGET_P99_MS
        lines.append(
            f"Target (issue 8), p99 at most {TARGET_P99_MS:.0f} ms at {TARGET_RATE}/s: "
            f"**{'met' if met else 'not met'}** (p99 {_number(p99, None, 1)} ms)."
        )
    return lines


def write_results(
    args: argparse.Namespace,
    median: dict[str, Any],
    spread: dict[str, Any],
    runs: int,
    path: Path = RESULTS,
) -> None:
    """``path`` (RESULTS.md): the figures of this run, then what was written there by hand
    below ``KEPT_MARKER``, kept."""

    def fig(section: str, key: str) -> str:
        return _number(median.get(section, {}).get(key), spread.get(section, {}).get(key))

    lines = [
        "# Benchmark results",
        "",
        "Written by `pizzashop bench` (`bench/suite.py`); the median of the runs, (min-max).",
        "",
        "## Machine and settings",
        "",
        f"- {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}",
        f"- runs {runs}; passthrough messages {args.messages}; flow backlogs {args.orders}; "
        f"offered rates {args.rates} for {args.seconds} s each; API connections "
        f"{args.connections} for {args.api_seconds} s; one local Kafka broker",
        f"- load average (1 min) at the start and end of each run: {_loads(median)}; the "
        f"machine has {os.cpu_count()} cores, and a load above that means the figures "
        "waited for a CPU",
        "",
        "## Figures (per second)",
        "",
        "| | per second |",
        "|---|---|",
    ]
    rows = [
        ("ceiling: confluent-kafka passthrough", "ceiling", "confluent_per_s"),
        ("ceiling: aiokafka passthrough", "ceiling", "aiokafka_per_s"),
        ("peer: Quix Streams passthrough", "peers", "quix_per_s"),
        ("peer: Faust passthrough", "peers", "faust_per_s"),
        ("ours: kitchen", "ours", "kitchen_per_s"),
        ("ours: kitchen, confluent-kafka transport", "ours", "kitchen_confluent_per_s"),
        ("ours: notification (SMTP)", "ours", "notification_per_s"),
        (
            "ours: notification (SMTP), confluent-kafka transport",
            "ours",
            "notification_confluent_per_s",
        ),
        ("ours: enrichment, three models", "ours", "enrich_per_s"),
        ("ours: enrichment, confluent-kafka transport", "ours", "enrich_confluent_per_s"),
        ("ours: order API", "api", "orders_per_s"),
    ]
    lines += [f"| {label} | {fig(s, k)} |" for label, s, k in rows]
    if "api" in median:
        api = median["api"]
        if "error" in api:
            lines += ["", f"Order API: failed: {api['error']}"]
        else:
            lines += [
                "",
                f"Order API at {api.get('connections')} connections, loaded by "
                f"{api.get('tool')}: p50 {_number(api.get('p50_ms'), None, 1)} ms, "
                f"p99 {_number(api.get('p99_ms'), None, 1)} ms; statuses {api.get('statuses')}.",
            ]
    if "latency_ms" in median:
        lines += _latency_lines(median["latency_ms"], spread.get("latency_ms", {}), args.max_lag_s)
    ratios = _ratios(median)
    if ratios:
        lines += ["", "## Ratios (medians)", "", "| ours | / | ratio |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {r:.3f} |" for a, b, r in ratios]
    if args.profile and PROFILES.exists():
        lines += [
            "",
            "## Where the time goes (py-spy --gil)",
            "",
            "From one more run under py-spy (not in the figures above): the flows over their "
            f"timed window, from backlogs {PROFILE_BACKLOG}x larger; the shops' processes "
            "whole. Shares of the samples in which a thread held the GIL.",
            "",
        ]
        for profile in sorted(PROFILES.glob("*.txt")):
            lines += profile_markdown(profile)
    path.write_text("\n".join(lines) + "\n" + _kept_by_hand(path))


#: Below this line RESULTS.md holds analyses written by hand (the API's before/after runs, say),
#: which a new run of the suite keeps instead of dropping.
KEPT_MARKER = "<!-- written by hand below: bench/suite.py keeps it -->"


def _kept_by_hand(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    _, found, kept = text.partition(KEPT_MARKER)
    return f"\n{KEPT_MARKER}{kept}" if found else f"\n{KEPT_MARKER}\n"


def _ratios(median: dict[str, Any]) -> list[tuple[str, str, float]]:
    ours = median.get("ours", {})
    against = {
        "confluent-kafka": median.get("ceiling", {}).get("confluent_per_s"),
        "aiokafka": median.get("ceiling", {}).get("aiokafka_per_s"),
        "Quix Streams": median.get("peers", {}).get("quix_per_s"),
        "Faust": median.get("peers", {}).get("faust_per_s"),
    }
    ratios = [
        (stage.removesuffix("_per_s"), name, value / reference)
        for stage, value in ours.items()
        for name, reference in against.items()
        if reference and isinstance(value, int | float)
    ]
    # Each flow on the confluent-kafka transport against itself on aiokafka.
    for stage, value in ours.items():
        plain = ours.get(stage.replace("_confluent_per_s", "_per_s"))
        if stage.endswith("_confluent_per_s") and plain and isinstance(value, int | float):
            ratios.append(
                (stage.removesuffix("_per_s"), f"{stage.split('_')[0]} on aiokafka", value / plain)
            )
    return ratios


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        settings = Settings(home=Path(tmp), cache_dir=REPO / ".cache")
        async with kafka(settings) as bootstrap:
            suite = Suite(args, bootstrap, Path(tmp))
            if {"ours", "latency"} & set(args.only):
                await suite.ensure_registry()
            runs = [await suite.one_run() for _ in range(args.runs)]
            if args.profile:
                await suite.profile_run()
    median, spread = _median(runs)
    median["machine"] = {"cores": os.cpu_count(), "load_1m": [list(p) for p in suite.loads]}
    write_results(args, median, spread, len(runs), Path(args.results))
    return median


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    # 20,000: at 5,000 the kitchen's window was about a second, half of it the group's join and
    # first fetch (2,400-4,900/s over three runs, against 5,500-6,100 from 10,000).
    parser.add_argument("--orders", type=int, default=20_000, help="backlog of each of our flows")
    parser.add_argument("--messages", type=int, default=50_000, help="passthrough backlog")
    parser.add_argument(
        "--rates", default="200,500,1000,5000", help="offered orders/s, end to end, ascending"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="at each offered rate")
    parser.add_argument(
        "--max-lag-s",
        type=float,
        default=1.0,
        help="a rate with more than this many seconds of its orders in flight is not sustained",
    )
    parser.add_argument("--connections", type=int, default=16, help="order API load")
    parser.add_argument("--api-seconds", type=float, default=10.0, help="order API load")
    parser.add_argument("--results", default=str(RESULTS), help="the Markdown written")
    parser.add_argument(
        "--only",
        type=lambda s: tuple(x for x in s.split(",") if x),
        default=SECTIONS,
        help=f"comma-separated sections: {','.join(SECTIONS)}",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy our stages (first run)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    result = asyncio.run(main(args))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
