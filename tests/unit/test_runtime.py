"""The consumer runtime's delivery semantics on the in-memory transport.

The cases of ``tests.support.runtime_cases`` (shared with the Kafka tier), and the ones only
the in-memory broker can provoke: a refused commit, and one that went through but whose answer
was lost.
"""

from __future__ import annotations

from ingest.testing import FAST_SETTINGS, FlowHarness
from tests.support.runtime_cases import Recorder, RuntimeCases, order_on, part, ready

IN, OUT = "orders", "order-events"


class TestRuntimeOnMemory(RuntimeCases):
    """Collected here with the memory ``harness_factory`` of ``tests/unit/conftest.py``."""


async def test_outputs_and_offsets_commit_together_or_not_at_all() -> None:
    handler = Recorder(OUT)
    # A rewind pause long enough to look at the broker between the failure and the retry.
    settings = FAST_SETTINGS.model_copy(update={"rewind_delay_s": 0.2})
    h = FlowHarness(handler, topics=[IN], outputs=[OUT], settings=settings)
    orders = [order_on(h, 0) for _ in range(3)]
    for order in orders:
        await h.send(IN, order)
    h.broker.fail_commits = 1
    async with h:
        await h.until(lambda: h.broker.fail_commits == 0)
        # Handled, commit refused: none of the outputs shows, the offset has not moved.
        assert handler.seen() == [o.order_id for o in orders]
        assert h.records(OUT) == []
        assert h.offset(part(h)) == 0
        await h.drained()
    # Rewound and handled again: each output once, with the offsets, in one commit.
    assert handler.seen() == [o.order_id for o in orders] * 2
    assert [e.event_id for e in h.events(OUT)] == [ready(o).event_id for o in orders]
    assert h.offset(part(h)) == 3
    assert h.broker.commits == 1
    assert h.stats.errors_by_class == {"BrokerUnavailable": 1}
    assert h.stats.handled == 3


async def test_a_commit_whose_answer_was_lost_is_not_handled_again() -> None:
    handler = Recorder(OUT)
    h = FlowHarness(handler, topics=[IN], outputs=[OUT])
    orders = [order_on(h, 0) for _ in range(3)]
    for order in orders:
        await h.send(IN, order)
    h.broker.lose_commit_answers = 1
    async with h:
        await h.until(lambda: h.broker.lose_commit_answers == 0)
        another = order_on(h, 0)
        await h.send(IN, another)
        await h.drained()
    # The runtime read the committed offset back instead of rewinding to the batch's start.
    assert handler.seen() == [o.order_id for o in [*orders, another]]
    assert [e.event_id for e in h.events(OUT)] == [ready(o).event_id for o in [*orders, another]]
    assert h.offset(part(h)) == 4
