"""py-spy on the running benchmark process, for its measured window only.

A flow's benchmark spends most of its life importing, preloading its backlog and joining its
group; a profile of the whole process is mostly that. ``bench/suite.py --profile`` names a file
in ``PIZZASHOP_BENCH_PROFILE`` and the benchmark wraps the window it times in
:func:`profiled_window`, so the samples are the steady state the figure measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

#: Where ``bench/suite.py`` asks for the window's profile (raw collapsed stacks).
PROFILE_ENV = "PIZZASHOP_BENCH_PROFILE"


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


@contextlib.asynccontextmanager
async def profiled_window(path: str | None = None) -> AsyncIterator[None]:
    """Sample this process with py-spy (``--gil``: what holds the GIL) while the block runs,
    when ``path`` (by default ``$PIZZASHOP_BENCH_PROFILE``) names the file to write."""
    path = path or os.environ.get(PROFILE_ENV)
    if not path:
        yield
        return
    spy = await asyncio.create_subprocess_exec(
        py_spy(), "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "200",
        "--gil", "-o", path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert spy.stdout is not None
    # py-spy says so (on its stdout) once it samples; the window starts then, not at the spawn.
    while b"Sampling process" not in (line := await spy.stdout.readline()):
        if not line:
            raise RuntimeError(f"py-spy did not attach (exit {await spy.wait()})")
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        await spy.communicate()
