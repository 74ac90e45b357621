"""Declarative flows: a flow says, where its code is, what it consumes and how it is built.

```python
@flow("kitchen", topics=(ORDERS, ORDER_EVENTS))
def kitchen(ctx: FlowContext) -> Handler:
    return Kitchen(ctx.db, ctx.topics.order_events, ...)
```

The name is the worker's name (``pizzashop run --workers kitchen``) and its consumer group's
suffix; ``topics`` are base names, prefixed when the shop wires them. The event types come from
the handler's ``event_types`` (classes), batching and timers from the handler too. The shop
imports the modules that declare flows (``pizzashop.app.shop.FLOW_MODULES``) and runs the chosen
ones, each in its own runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.consumer import Handler
from ingest.dedupe import ProcessedEvents
from ingest.topics import Topics
from pizzashop.core.database import Database
from pizzashop.core.errors import ConfigError
from pizzashop.core.settings import Settings


@dataclass(slots=True)
class FlowContext:
    """What a flow's factory may use. ``resources`` it appends are started before the runtime
    consumes and stopped after it (state stores, say)."""

    settings: Settings
    db: Database
    topics: Topics
    processed: ProcessedEvents
    resources: list[Any] = field(default_factory=list)
    #: The Kafka the shop runs on, for a flow's own clients (the enricher's order ledger).
    bootstrap: str = ""
    client_options: Mapping[str, Any] = field(default_factory=dict)


Factory = Callable[[FlowContext], Handler]


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    topics: tuple[str, ...]
    build: Factory
    #: Whether the runtime drops events this group has handled before (a replay safety net);
    #: off where effects are idempotent and speed matters.
    dedupe: bool = True


FLOWS: dict[str, Flow] = {}


def flow(name: str, *, topics: Sequence[str], dedupe: bool = True) -> Callable[[Factory], Factory]:
    """Register the decorated factory as the flow ``name`` consuming ``topics``."""

    def register(build: Factory) -> Factory:
        existing = FLOWS.get(name)
        if existing is not None and _origin(existing.build) != _origin(build):
            raise ConfigError(f"two flows are named {name!r}")
        FLOWS[name] = Flow(name, tuple(topics), build, dedupe)
        return build

    return register


def _origin(build: Factory) -> tuple[str, str]:
    # A module imported again (a test reloading it) re-registers the same factory: fine.
    return build.__module__, build.__qualname__
