"""The exception tree: every class exported, retriable by type, problems kept as a list."""

from __future__ import annotations

import inspect
import pickle

import pytest

import pizzashop.core.errors as errors
from pizzashop.core.errors import PizzashopError, Problem, ValidationFailed


def test_all_lists_every_error_class_of_the_module() -> None:
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, PizzashopError)
    }
    assert len(defined) >= 12
    assert defined <= set(errors.__all__)
    assert all(hasattr(errors, name) for name in errors.__all__)


@pytest.mark.parametrize("name", errors.__all__)
def test_each_error_says_whether_retrying_helps(name: str) -> None:
    obj = getattr(errors, name)
    if inspect.isclass(obj) and issubclass(obj, PizzashopError):
        assert obj.retriable is issubclass(obj, errors.TransientError)


def test_validation_failed_keeps_every_problem_and_joins_them_in_its_message() -> None:
    exc = ValidationFailed(
        Problem(("items", 0, "sku"), "unknown item 'x'", "unknown_item"), "total is wrong"
    )
    assert [p.where for p in exc.problems] == ["items[0].sku", ""]
    assert exc.problems[1] == Problem((), "total is wrong", "invalid")
    assert str(exc) == "items[0].sku: unknown item 'x'; total is wrong"
    assert isinstance(exc, ValueError) and not exc.retriable


def test_validation_failed_survives_pickling_with_its_problems() -> None:
    exc = ValidationFailed(Problem(("a", "b"), "bad", "t"))
    again = pickle.loads(pickle.dumps(exc))
    assert again.problems == exc.problems and str(again) == str(exc)


# -- dead letters carry the reason, machine-readable --------------------------------------
@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.DecodeError("not JSON"), "undecodable"),
        (ValidationFailed("total does not match"), "contract"),
        (errors.PublishRejected("too large"), "handler-permanent"),
        (errors.DeliveryFailed("SMTP down"), "retries-exhausted"),
        (RuntimeError("a bug"), "retries-exhausted"),  # unknown errors are retried first
    ],
)
def test_dead_letters_name_their_reason(error: BaseException, reason: str) -> None:
    from ingest.codec import header
    from ingest.dlq import H_REASON, REASONS, _to_letter, dead_letter_headers

    headers = dead_letter_headers(
        [("event-type", b"OrderPlaced"), ("dlq.reason", b"stale")],
        topic="orders",
        partition=2,
        offset=7,
        group="pizzashop.kitchen",
        error=error,
        attempts=3,
    )
    assert reason in REASONS
    assert [v for k, v in headers if k == H_REASON] == [reason.encode()]
    assert _to_letter("orders.dlq", 0, None, b"{}", headers).reason == reason
    explicit = dead_letter_headers(
        [],
        topic="orders",
        partition=0,
        offset=0,
        group="g",
        error=error,
        attempts=1,
        reason="handler-permanent",
    )
    assert header(explicit, H_REASON) == "handler-permanent"
