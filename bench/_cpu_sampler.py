"""How many cores named processes, and the whole machine, kept busy over a window: from
``/proc`` (Linux), sampled while the window runs.

The end-to-end step shares two cores between the API, the enricher, the broker and the load;
its latency is mostly waiting for a CPU when they are nearly all busy, and these figures show
it beside each rate's percentiles.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

_TICKS = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user and system, every thread) ``pid`` has used; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def machine_busy_s() -> float:
    """CPU seconds all cores have spent on anything but idle and I/O wait, since boot."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


@dataclass(slots=True)
class CpuSampler:
    """``async with CpuSampler({"api": pid, ...}) as cpu:`` samples every ``every_s`` until
    the block ends; ``cpu.cores(start, end)`` (``time.time()`` values) then says how many
    cores each process, and the machine, kept busy in between."""

    pids: Mapping[str, int]
    every_s: float = 0.5
    _at: list[float] = field(default_factory=list)
    _used: list[dict[str, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CpuSampler:
        self._sample()
        self._task = asyncio.create_task(self._run(), name="cpu-sampler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self._sample()

    def _sample(self) -> None:
        used = {MACHINE: machine_busy_s()}
        for name, pid in self.pids.items():
            if (seconds := process_cpu_s(pid)) is not None:
                used[name] = seconds
        self._at.append(time.time())
        self._used.append(used)

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores busy per name between the last sample at or before ``start`` and the first
        at or after ``end`` (the window, widened to whole samples); {} without two samples."""
        first = max(bisect.bisect_right(self._at, start) - 1, 0)
        last = min(bisect.bisect_left(self._at, end), len(self._at) - 1)
        if last <= first:
            return {}
        elapsed = self._at[last] - self._at[first]
        before, after = self._used[first], self._used[last]
        return {
            name: round((after[name] - before[name]) / elapsed, 2)
            for name in after
            if name in before
        }
