"""The bench's py-spy plumbing: the summary of a raw profile, and a window sampled for real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench._profile_summary import markdown, summarise
from bench._window_profile import profiled_window

#: Raw py-spy lines: "process;frame;frame... count", frames as "function (file:line)".
RAW = (
    "".join(
        f'process 1:"python";{stack} {n}\n'
        for stack, n in [
            ("<module> (x.py:1);_find_and_load (<frozen importlib>:1);f (sqlalchemy/sql.py:3)", 50),
            (
                "run (asyncio/r.py:1);Kitchen.handle (services/kitchen.py:9);e (aiosqlite/c.py:2)",
                30,
            ),
            (
                "run (asyncio/r.py:1);Kitchen.handle (services/kitchen.py:9);b (sqlalchemy/e.py:4)",
                10,
            ),
            (
                "run (asyncio/r.py:1);ConsumerRuntime._decode (ingest/rt.py:5);v (pydantic/m.py:7)",
                40,
            ),
            ("select (selectors.py:1)", 15),
        ]
    )
    + 'thread 2:"worker" 5\n'
)


def test_a_summary_leaves_imports_out_and_counts_our_steps_inclusively(tmp_path: Path) -> None:
    path = tmp_path / "kitchen.txt"
    path.write_text(RAW)
    summary = summarise(path)
    assert (summary.samples, summary.startup) == (100, 50)
    assert dict(summary.areas) == {
        "pydantic": 0.40,
        "SQLite": 0.30,
        "event loop": 0.15,
        "SQLAlchemy": 0.10,
        "no Python frame": 0.05,
    }
    assert dict(summary.ours) == {
        "Kitchen.handle (services/kitchen.py)": 0.40,
        "ConsumerRuntime._decode (ingest/rt.py)": 0.40,
    }
    text = "\n".join(markdown(path))
    assert "100 samples, 50 more in imports left out" in text
    assert "  - 40.0% `Kitchen.handle (services/kitchen.py)`" in text


def _spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        sum(range(100))


def _before_the_window(seconds: float) -> None:
    _spin(seconds)


async def test_a_profiled_window_samples_only_what_runs_inside_it(tmp_path: Path) -> None:
    path = tmp_path / "window.txt"
    spy = profiled_window(str(path))
    _before_the_window(0.3)  # nothing samples yet: py-spy starts on entering
    async with spy:
        _spin(1.0)
    _before_the_window(0.3)  # py-spy has stopped and written its file
    stacks = path.read_text()
    spun = sum(int(line.rpartition(" ")[2]) for line in stacks.splitlines() if "_spin" in line)
    # 200 samples a second for a second, give or take a busy machine's scheduling.
    assert spun > 50
    assert "test_a_profiled_window" in stacks
    assert "_before_the_window" not in stacks


async def test_no_profile_is_taken_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIZZASHOP_BENCH_PROFILE", raising=False)
    async with profiled_window():
        _spin(0.05)
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a tmp folder, once)
