"""What a raw py-spy profile (collapsed stacks) says, in a few lines for ``bench/RESULTS.md``.

Two views of the same samples, start-up left out (any stack inside an import):
- **self time by area**: the leaf frame's package, grouped (SQLite, SQLAlchemy, pydantic,
  the Kafka client, the event loop...), so a stage's cost reads as "whose code ran";
- **our functions, inclusive**: every function of this repository on the stack, so the
  share of a step (``Kitchen.handle``, ``ConsumerRuntime._decode``) includes what it called.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Top-level folders of this repository: a frame in one of them is our code.
OURS = frozenset({"ingest", "services", "models", "enrichers", "api", "pizzashop"})

#: A leaf frame's first path part (py-spy shortens site-packages to the package) → its area.
AREAS = {
    **dict.fromkeys(("aiosqlite", "sqlite3"), "SQLite"),
    **dict.fromkeys(("sqlalchemy", "alembic"), "SQLAlchemy"),
    **dict.fromkeys(("pydantic", "pydantic_core", "annotated_types"), "pydantic"),
    **dict.fromkeys(("aiokafka", "confluent_kafka", "kafka"), "Kafka client"),
    **dict.fromkeys(("asyncio", "uvloop", "selectors.py"), "event loop"),
    **dict.fromkeys(("uvicorn", "starlette", "fastapi", "httptools", "h11"), "HTTP"),
    **dict.fromkeys(("email", "aiosmtplib", "smtplib.py"), "e-mail"),
    **dict.fromkeys(("torch", "onnxruntime", "numpy", "sklearn", "scipy", "pandas"), "ML"),
    **dict.fromkeys(("transformers", "tokenizers"), "ML"),
    **dict.fromkeys(("opentelemetry", "prometheus_client"), "tracing and metrics"),
    **dict.fromkeys(("threading.py", "concurrent", "queue.py"), "threads"),
    **dict.fromkeys(("json", "orjson"), "JSON"),
}

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):\d+\)$")


@dataclass(slots=True)
class ProfileSummary:
    samples: int
    startup: int
    areas: list[tuple[str, float]]
    ours: list[tuple[str, float]]


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text)
    return (match["function"], match["file"]) if match else (text, "")


def _area(file: str) -> str:
    top = file.split("/")[0]
    if top in OURS:
        return "our code"
    return AREAS.get(top, f"other ({top})" if top else "no Python frame")


def summarise(path: Path, top: int = 10) -> ProfileSummary:
    areas: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    samples = startup = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        # The first entry names the process or thread, not a frame.
        frames = [_frame(f) for f in stack.split(";")[1:]]
        if any(function == "_find_and_load" for function, _ in frames):
            startup += n
            continue
        samples += n
        areas[_area(frames[-1][1]) if frames else "no Python frame"] += n
        for name in {f"{fn} ({file})" for fn, file in frames if _area(file) == "our code"}:
            ours[name] += n
    total = max(samples, 1)
    return ProfileSummary(
        samples,
        startup,
        [(area, n / total) for area, n in areas.most_common(top)],
        [(name, n / total) for name, n in ours.most_common(top)],
    )


def markdown(path: Path) -> list[str]:
    summary = summarise(path)
    areas = ", ".join(f"{area} {share:.0%}" for area, share in summary.areas)
    lines = [
        f"**{path.stem}** (`bench/profiles/{path.name}`, {summary.samples:,} samples, "
        f"{summary.startup:,} more in imports left out)",
        "",
        f"- self time by area: {areas}",
        "- our functions, inclusive:",
    ]
    lines += [f"  - {share:.1%} `{name}`" for name, share in summary.ours]
    return [*lines, ""]
