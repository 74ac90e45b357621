"""bench/nogil.py's decode stage across threads, on whichever build runs the tests.

`make nogil` runs this file on the free-threaded build too, where the last test checks that
nothing the runtime imports turned the GIL back on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bench.nogil import aggregate, make_records, stage_fn, table, timed, worker
from ingest.events import OrderPlaced


def test_the_records_decode_to_the_orders_they_were_made_from() -> None:
    records = make_records(20)
    decode = stage_fn("decode")
    events = [decode(value, headers) for value, headers in records]
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [e.order_id for e in events if isinstance(e, OrderPlaced)] == [
        f"o-{i:07d}" for i in range(20)
    ]
    # The same seed makes the same records, so both builds decode identical input.
    assert make_records(20) == records


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_record_goes_through_the_stage_once_whatever_the_thread_count(
    threads: int,
) -> None:
    records = make_records(10)
    seen: list[bytes] = []

    def stage(value: bytes, headers: list[tuple[str, bytes]]) -> object:
        seen.append(value)  # list.append is atomic on both builds
        return None

    wall, cpu = timed(stage, records, threads)
    assert sorted(seen) == sorted(v for v, _ in records)
    assert wall > 0 and cpu >= 0


def test_the_report_gives_median_min_max_and_the_scaling_of_each_run() -> None:
    def run(one: float, two: float) -> dict[str, object]:
        figures = {"rates": {"1": one, "2": two}, "busy": {"1": 1.0, "2": two / one}}
        return {
            "python": "3.13.5",
            "free_threaded": True,
            "gil_enabled": False,
            "pydantic": "2.12.3",
            "pydantic_core": "2.41.4",
            "stages": {"decode": figures, "control": figures},
        }

    report = aggregate([run(100, 190), run(120, 180), run(110, 110)])
    decode = report["stages"]["decode"]
    assert decode["rates"]["1"] == {"median": 110, "min": 100, "max": 120}
    # Scaling is per run (1.9, 1.5, 1.0), not the ratio of the medians (180/110).
    assert decode["scaling"] == {"median": 1.5, "min": 1.0, "max": 1.9}
    machine = {"loadavg_at_start": (0.5, 0.5, 0.5), "cpus": 2}
    text = table({"records": 10, "machine": machine, "builds": {"nogil": report}})
    assert (
        "| nogil: 3.13.5t, GIL off | decode | 110 (100-120) | 180 (110-190) "
        "| 1.50 (1.00-1.90) | 1.00 / 1.50 |"
    ) in text


def test_a_worker_run_measures_the_stage_and_the_control_at_each_thread_count() -> None:
    result = worker("decode", 50, [2, 1])
    assert set(result["stages"]) == {"decode", "control"}
    for figures in result["stages"].values():
        assert set(figures["rates"]) == set(figures["busy"]) == {"1", "2"}
        assert all(rate > 0 for rate in figures["rates"].values())


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="only on a free-threaded build"
)
def test_the_decode_stage_keeps_the_gil_off() -> None:
    # A fresh interpreter without PYTHON_GIL: `make nogil` runs these tests with PYTHON_GIL=0
    # (greenlet, under the runtime, would turn the GIL on), which would hide a module that does.
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    code = "import sys, bench.nogil, ingest.codec; print(sys._is_gil_enabled())"
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        env=env | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
