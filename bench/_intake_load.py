"""``bench/intake.py``'s load: wrk placing realistic orders back to back over N connections
(or, without wrk, ``bench/_peers/http_load.py closed``), reporting orders/s, the latency
percentiles and every status."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def wrk_script(path: Path, bodies: list[dict[str, Any]]) -> None:
    """A wrk script that posts ``bodies`` in turn and reports every status and the latency
    percentiles as one JSON line."""
    literals = ",\n".join(f"[==[{json.dumps(body)}]==]" for body in bodies)
    path.write_text(
        f"local bodies = {{\n{literals}\n}}\n"
        + """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; n = math.random(#bodies) end
function request()
  n = n % #bodies + 1
  return wrk.format("POST", "/orders", {["Content-Type"] = "application/json"}, bodies[n])
end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local all, parts = {}, {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      all[status] = (all[status] or 0) + count
    end
  end
  for status, count in pairs(all) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, '
      .. '"socket_errors": %d, "statuses": {%s}}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ", ")))
end
"""
    )


async def load(url: str, seconds: float, connections: int, script: Path) -> dict[str, Any]:
    if shutil.which("wrk"):
        duration = f"-d{max(1, round(seconds))}s"  # whole seconds only
        # A slow answer is latency, not an error: wrk's default timeout (2 s) would count it so.
        argv = ["wrk", "-t1", f"-c{connections}", duration, "--timeout", "30s"]
        argv += ["-s", str(script), url]
    else:  # a Python load process: slower, so it caps what it can show
        orders = int(seconds * 1000)
        peers = str(REPO / "bench/_peers/http_load.py")
        argv = [sys.executable, peers, "closed", "--url", url, "--orders", str(orders)]
        argv += ["--connections", str(connections)]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode()
    if argv[0] != "wrk":
        closed: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
        closed["requests"] = closed["orders"]
        closed["seconds"] = closed["orders"] / closed["orders_per_s"]
        return closed
    line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{text}")
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["orders_per_s"] = round(result["requests"] / result["seconds"], 1)
    return result
