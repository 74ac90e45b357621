"""The decode/validate stage across threads, on the free-threaded build and the normal one.

    .venv/bin/python bench/nogil.py --nogil-python .cache/nogil-venv/bin/python
                                    [--runs 5] [--records 20000] [--json PATH]
    .cache/nogil-venv/bin/python bench/nogil.py --why-not 'transformers>=4.45,<6'

The stage is what a consumer does to every record before its handler sees it:
``ingest.codec.decode`` (header checks, then ``OrderPlaced.model_validate_json`` in pydantic-core)
over realistic orders, encoded once up front with ``ingest.codec.encode``. Where the codec
cannot be imported, the same pydantic model alone (``--stage validate``); both builds then run
that same stage.

Each run is one process per build (``--worker``), the builds taking turns, so the shared
machine's noise falls on both alike. A worker warms up, then puts the same ``--records`` records
through the stage with a ``ThreadPoolExecutor`` of 1 thread and of 2 threads (each thread its own
equal slice, all released together by a barrier), and reports records/s and CPU busy (process CPU
seconds per wall second) for each. A control stage, a pure-Python loop over each record's bytes,
is measured the same way at the same moment: its scaling says how much of two cores the machine
had to give. The report is the median of the runs with their min and max, and the
2-thread/1-thread scaling of each run: about 1.0 where the GIL serialises the threads, up to 2.0
on two idle cores without it.

``--why-not REQ`` (run on the free-threaded venv's python) names the packages under REQ that have
no wheel for that interpreter in any version: what stands behind pip's ResolutionImpossible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

Headers = list[tuple[str, bytes]]
Record = tuple[bytes, Headers]
THREADS = (1, 2)
CONTROL = "control"
_SKUS = (
    ("margherita", "Margherita", "9.50"),
    ("pepperoni", "Pepperoni", "11.00"),
    ("hawaiian", "Hawaiian", "11.50"),
    ("four_cheese", "Four Cheese", "12.00"),
    ("veggie", "Veggie", "10.50"),
)
_SIZES = ("S", "M", "L", "XL")


# -- the worker: one build, one process ------------------------------------------------------
def available_stage() -> str:
    """``decode`` when the codec imports on this interpreter, else ``validate`` (the models)."""
    try:
        import ingest.codec  # noqa: F401
    except ImportError:
        return "validate"
    return "decode"


def make_records(n: int, seed: int = 7) -> list[Record]:
    """``n`` order-placed records as a consumer receives them: JSON value and headers."""
    from ingest.events import Address, OrderItem, OrderPlaced, PaymentMethod

    rng = random.Random(seed)
    start = datetime(2026, 12, 1, 12, tzinfo=UTC)
    records: list[Record] = []
    for i in range(n):
        items = tuple(
            OrderItem(
                sku=f"{sku}_{size.lower()}",
                name=name,
                size=size,
                quantity=rng.randint(1, 3),
                unit_price=Decimal(price),
            )
            for sku, name, price in rng.sample(_SKUS, rng.randint(1, 4))
            for size in [rng.choice(_SIZES)]
        )
        at = start + timedelta(seconds=i)
        event = OrderPlaced(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            order_id=f"o-{i:07d}",
            occurred_at=at,
            customer_id=f"c-{rng.randint(1, 5000)}",
            customer_email=f"customer{rng.randint(1, 5000)}@example.com",
            items=items,
            total=sum((it.unit_price * it.quantity for it in items), Decimal(0)),
            placed_at=at,
            channel=rng.choice(("web", "app", "phone")),
            delivery_address=Address(
                street=f"{rng.randint(1, 200)} Main Street", city="Springfield", postcode="12345"
            ),
            payment=PaymentMethod(card_fingerprint=f"fp-{rng.getrandbits(32):08x}", last4="4242"),
            device_id=f"d-{rng.getrandbits(24):06x}",
        )
        records.append(_encoded(event))
    return records


# A fixed trace parent: the same records on every run and build (encode would draw a new one).
_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _encoded(event: Any) -> Record:
    try:
        from ingest.codec import encode
    except ImportError:  # the codec's imports are missing here: the same value and headers
        headers: Headers = [
            ("event-type", event.event_type.encode()),
            ("schema-version", str(event.schema_version).encode()),
            ("event-id", event.event_id.encode()),
            ("order-id", event.order_id.encode()),
            ("traceparent", _TRACEPARENT.encode()),
        ]
        return event.model_dump_json().encode(), headers
    record = encode(event, _TRACEPARENT)
    return record.value, record.headers


def stage_fn(stage: str) -> Callable[[bytes, Headers], object]:
    if stage == "decode":
        from ingest.codec import decode

        return decode
    from ingest.events import OrderPlaced

    def validate(value: bytes, headers: Headers) -> object:
        return OrderPlaced.model_validate_json(value, extra="ignore")

    return validate


def timed(
    fn: Callable[[bytes, Headers], object], records: Sequence[Record], threads: int
) -> tuple[float, float]:
    """Wall and process CPU seconds for ``threads`` threads to put every record through ``fn``,
    each thread its own slice."""
    slices = [records[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(part: Sequence[Record]) -> int:
        barrier.wait()
        for value, headers in part:
            fn(value, headers)
        return len(part)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(work, part) for part in slices]
        barrier.wait()
        t0, c0 = time.perf_counter(), time.process_time()
        done = sum(f.result() for f in futures)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert done == len(records)
    return wall, cpu


def control(value: bytes, headers: Headers) -> object:
    """The control stage: a pure-Python loop over the record's bytes, no library, no shared
    state. Its scaling at the same moment says how much of two cores the machine had to give."""
    x = 0
    for byte in value:
        x ^= byte
    return x


def worker(stage: str, records: int, order: Sequence[int]) -> dict[str, Any]:
    """One run on this interpreter: records/s and CPU busy for each stage and thread count."""
    data = make_records(records)
    fns = {stage: stage_fn(stage), CONTROL: control}
    for fn in fns.values():  # warm-up: caches, lazy imports, the allocator
        timed(fn, data[: max(1, records // 10)], 1)
    stages: dict[str, dict[str, dict[str, float]]] = {
        name: {"rates": {}, "busy": {}} for name in fns
    }
    for threads in order:
        for name, fn in fns.items():
            wall, cpu = timed(fn, data, threads)
            stages[name]["rates"][str(threads)] = records / wall
            # CPU seconds per wall second: at most 1 while a GIL serialises the threads, up to
            # the thread count when they run in parallel on cores nobody else wants.
            stages[name]["busy"][str(threads)] = cpu / wall
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    import pydantic
    import pydantic_core

    return {
        "python": platform.python_version(),
        "free_threaded": bool(sysconfig_flag()),
        "gil_enabled": bool(gil),
        "pydantic": pydantic.VERSION,
        "pydantic_core": pydantic_core.__version__,
        "stages": stages,
    }


def sysconfig_flag() -> int:
    import sysconfig

    return int(sysconfig.get_config_var("Py_GIL_DISABLED") or 0)


# -- why a dependency cannot be had: the first requirements down its tree without a wheel -----
def _dry_run(requirement: str) -> tuple[dict[str, Any] | None, str]:
    """pip's answer for ``requirement`` alone on this interpreter, wheels only: its metadata,
    or None and pip's error lines."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-deps"]
    cmd += ["--only-binary=:all:", "--report", "-", requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        report = json.loads(proc.stdout[proc.stdout.index("{") :])
        installs = report["install"]
        return (installs[0]["metadata"] if installs else {}), ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    return None, " ".join(errors)


def blockers(requirement: str, depth: int = 3) -> list[str]:
    """The packages under ``requirement`` (newest releases, ``depth`` levels down) that have no
    wheel for this interpreter in any version: what stands behind pip's ResolutionImpossible.
    A requirement whose range merely misses the versions that have wheels is not one: an older
    release of its parent may accept those."""
    from pip._vendor.packaging.requirements import Requirement

    found: dict[str, None] = {}

    def walk(spec: str, depth: int) -> None:
        metadata, error = _dry_run(spec)
        name = Requirement(spec).name.lower()
        if metadata is None:
            if "(from versions: none)" in error:
                found[name] = None
            return
        if depth == 0:
            return
        for dep in metadata.get("requires_dist", []):
            req = Requirement(dep)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                walk(f"{req.name}{req.specifier}", depth - 1)

    walk(requirement, depth)
    return list(found)


# -- the parent: both builds, turn by turn ---------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: median/min/max of records/s and CPU busy per thread count, and of each run's
    2-thread/1-thread scaling (the ratio within a run, not the ratio of the medians)."""
    first = runs[0]
    out: dict[str, Any] = {k: first[k] for k in ("python", "free_threaded", "pydantic")}
    out["pydantic_core"] = first["pydantic_core"]
    out["runs"] = len(runs)
    out["gil_enabled"] = any(r["gil_enabled"] for r in runs)
    out["stages"] = {}
    for stage, figures in first["stages"].items():
        per_run = [r["stages"][stage] for r in runs]
        out["stages"][stage] = {
            what: {t: summary([r[what][t] for r in per_run]) for t in figures[what]}
            for what in ("rates", "busy")
        } | {"scaling": summary([r["rates"]["2"] / r["rates"]["1"] for r in per_run])}
    return out


def run_worker(python: str, stage: str, records: int, order: Sequence[int]) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", "--stage", stage]
    cmd += ["--records", str(records), "--order", ",".join(map(str, order))]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker on {python} failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def probe(python: str) -> str:
    code = "import bench.nogil as b; print(b.available_stage())"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return proc.stdout.strip()


def compare(builds: dict[str, str], runs: int, records: int, stage: str | None) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    stages = {name: probe(python) for name, python in builds.items()}
    # The same stage on both builds: decode only if every build can import the codec.
    chosen = stage or ("decode" if set(stages.values()) == {"decode"} else "validate")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for i in range(runs):
        # Alternate which thread count goes first, so a drift in the machine's load within a
        # run does not always favour the same one.
        order = THREADS if i % 2 == 0 else tuple(reversed(THREADS))
        for name, python in builds.items():
            results[name].append(run_worker(python, chosen, records, order))
            for stage, f in results[name][-1]["stages"].items():
                r = f["rates"]
                print(
                    f"run {i + 1}/{runs} {name:>6} {stage:>8}: 1 thread {r['1']:>9,.0f}/s, "
                    f"2 threads {r['2']:>9,.0f}/s, x{r['2'] / r['1']:.2f} "
                    f"(CPU busy {f['busy']['1']:.2f}, {f['busy']['2']:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "records": records,
        "stage": chosen,
        "builds": {name: aggregate(rs) for name, rs in results.items()},
    }


def table(report: dict[str, Any]) -> str:
    def mmm(s: dict[str, float], fmt: str) -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

    builds = report["builds"]
    machine = report["machine"]
    start, end = machine["loadavg_at_start"][0], machine.get("loadavg_at_end", [math.nan])[0]
    lines = [
        f"{report['records']:,} records, median (min-max) of "
        f"{next(iter(builds.values()))['runs']} runs; 1-min load average {start:.1f} at the "
        f"start, {end:.1f} at the end, on {machine['cpus']} cores",
        "",
        "| build | stage | 1 thread /s | 2 threads /s | scaling 2/1 | CPU busy 1 / 2 threads |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in builds.items():
        label = (
            f"{name}: {b['python']}{'t' if b['free_threaded'] else ''}, "
            f"GIL {'on' if b['gil_enabled'] else 'off'}"
        )
        for stage, f in b["stages"].items():
            lines.append(
                f"| {label} | {stage} | {mmm(f['rates']['1'], ',.0f')} "
                f"| {mmm(f['rates']['2'], ',.0f')} | {mmm(f['scaling'], '.2f')} "
                f"| {f['busy']['1']['median']:.2f} / {f['busy']['2']['median']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nogil-python", help="the free-threaded venv's python")
    parser.add_argument("--normal-python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--stage", choices=("decode", "validate"), default=None)
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--order", default="1,2", help=argparse.SUPPRESS)
    parser.add_argument(
        "--why-not", metavar="REQ", help="the requirements under REQ without a wheel"
    )
    args = parser.parse_args(argv)
    if args.why_not:
        print(", ".join(blockers(args.why_not)) or "(none without any wheel)")
        return 0
    if args.worker:
        order = [int(t) for t in args.order.split(",")]
        print(json.dumps(worker(args.stage or available_stage(), args.records, order)))
        return 0
    builds = {"normal": args.normal_python}
    if args.nogil_python:
        builds["nogil"] = args.nogil_python
    report = compare(builds, args.runs, args.records, args.stage)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
