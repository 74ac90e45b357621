"""bench/_cpu_sampler.py against this very process, from the real /proc."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from bench._cpu_sampler import MACHINE, CpuSampler, process_cpu_s


def _spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        sum(range(100))


async def test_a_busy_process_shows_about_a_core_and_the_machine_at_least_that() -> None:
    async with CpuSampler({"me": os.getpid()}, every_s=0.1) as cpu:
        start = time.time()
        _spin(0.6)  # holds the loop: the samples on entering and leaving bound the window
        end = time.time()
    cores = cpu.cores(start, end)
    # A shared machine may give this process less than a whole core, never more than one.
    assert 0.3 < cores["me"] <= 1.1
    assert cores[MACHINE] >= cores["me"] - 0.1


async def test_an_idle_window_is_near_zero_and_a_gone_process_is_left_out() -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # reaped: its /proc entry is gone
    assert process_cpu_s(gone.pid) is None
    async with CpuSampler({"me": os.getpid(), "gone": gone.pid}, every_s=0.05) as cpu:
        start = time.time()
        time.sleep(0.3)  # noqa: ASYNC251 (idle on purpose, no sample meanwhile)
        end = time.time()
    cores = cpu.cores(start, end)
    assert "gone" not in cores and cores["me"] < 0.2


def test_no_window_without_two_samples() -> None:
    assert CpuSampler({}).cores(0.0, 1.0) == {}
