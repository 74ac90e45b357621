"""Card numbers found wherever they hide; e-mail addresses masked in text, values and logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pizzashop.core.pii import (
    EmailMaskingFilter,
    card_numbers_in,
    has_card_number,
    luhn_valid,
    mask_emails,
    masked,
    may_hold_card_number,
)


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("4242424242424242", True),
        ("378282246310005", True),  # Amex, 15 digits
        ("6011111111111117", True),
        ("4111111111111112", False),
        ("", False),
        ("41x1", False),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111 - 1111 - 1111 - 1111",
        "fp-4111111111111111",
        "12 Main Street, card 4111111111111111 thanks",
        "378282246310005",
        "6304000000000000000",  # 19 digits
    ],
)
def test_card_numbers_are_found_with_spaces_dashes_and_around_words(text: str) -> None:
    assert has_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # fails Luhn
        "424242424242",  # 12 digits
        "41111111111111111115",  # 20 digits pass Luhn but are no card number
        "fp-8f3a1c0e9b7d2a64",
        "cust-00042",
        "dev-12345678",
        "2026-12-02 10:00",
        "",
    ],
)
def test_other_digits_are_left_alone(text: str) -> None:
    assert not has_card_number(text)


def test_every_path_holding_a_card_number_is_named() -> None:
    body = {
        "customer_id": "4111 1111 1111 1111",
        "items": [{"sku": "pepperoni_m", "quantity": 4242424242424242}],
        "delivery_address": {"street": "4111-1111-1111-1111 Elm", "city": "Springfield"},
        "payment": {"card_fingerprint": "fp-abcdef12", "last4": "1111"},
        "flag": True,
        "4111111111111111": "as a key",
    }
    assert sorted(map(str, card_numbers_in(body))) == sorted(
        map(
            str,
            [
                ("customer_id",),
                ("items", 0, "quantity"),
                ("delivery_address", "street"),
                ("4111111111111111",),
            ],
        )
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("c9@example.com", "c***@example.com"),
        (
            "SMTP server refused recipient <jane.doe+pizza@mail.example.org>: 550",
            "SMTP server refused recipient <j***@mail.example.org>: 550",
        ),
        ("{'to': 'a@b.io', 'cc': \"x.y@z.co.uk\"}", "{'to': 'a***@b.io', 'cc': \"x***@z.co.uk\"}"),
        ("no address here @ all", "no address here @ all"),
        ("c***@example.com", "c***@example.com"),  # masking twice changes nothing
    ],
)
def test_emails_are_masked_to_first_letter_and_domain(text: str, expected: str) -> None:
    assert mask_emails(text) == expected


def test_masked_walks_nested_values_and_keeps_other_types() -> None:
    detail = {"recipient": "bob@example.com", "n": 3, "list": ["al@ex.com", None]}
    assert masked(detail) == {
        "recipient": "b***@example.com",
        "n": 3,
        "list": ["a***@ex.com", None],
    }


def test_the_filter_masks_message_arguments_exceptions_and_extras(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.pii")
    caplog.handler.addFilter(EmailMaskingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="tests.pii"):
            logger.warning("receipt to %s failed", "bob@example.com", extra={"to": "al@ex.com"})
            try:
                raise ValueError("refused recipient carol@example.com")
            except ValueError:
                logger.exception("sending failed")
    finally:
        caplog.handler.filters.clear()
    assert "bob@example.com" not in caplog.text and "b***@example.com" in caplog.text
    assert "carol@example.com" not in caplog.text and "c***@example.com" in caplog.text
    assert caplog.records[0].to == "a***@ex.com"  # type: ignore[attr-defined]


def test_dead_letter_error_messages_are_masked() -> None:
    from ingest.codec import header
    from ingest.dlq import H_ERROR_MESSAGE, dead_letter_headers
    from pizzashop.core.errors import ValidationFailed

    headers = dead_letter_headers(
        [],
        topic="orders",
        partition=0,
        offset=1,
        group="pizzashop.notification",
        error=ValidationFailed("SMTP server refused recipient bob@example.com: 550"),
        attempts=1,
    )
    assert header(headers, H_ERROR_MESSAGE) == (
        "SMTP server refused recipient b***@example.com: 550"
    )


def test_the_cli_masks_every_log_line_uvicorns_included() -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import logging, uvicorn
        from pizzashop.app.cli import _setup
        _setup()
        uvicorn.Config(app=None, log_level="info")  # uvicorn's loggers get their own handlers
        logging.getLogger("services.mailer").warning(
            "receipt failed: %r", ValueError("refused bob@example.com")
        )
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "10.0.0.1", "GET", "/x?to=al@ex.com", "1.1", 200
        )
        logging.getLogger("uvicorn.error").error("carol@example.com")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    output = done.stderr + done.stdout  # uvicorn's access log goes to stdout
    assert len(output.splitlines()) == 3, output
    assert "@example.com" in output  # the domains stay
    for address in ("bob@example.com", "al@ex.com", "carol@example.com"):
        assert address not in output
    assert '"GET /x?to=a***@ex.com HTTP/1.1" 200' in done.stdout  # formatted from its arguments


def test_arguments_stay_arguments_for_formatters_that_read_them() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, "%s %s", ("a@b.io", 7), None
    )
    EmailMaskingFilter().filter(record)
    assert record.args == ("a***@b.io", 7) and record.getMessage() == "a***@b.io 7"


# -- the raw pre-check: never a miss ---------------------------------------------------------
_text = st.text(alphabet="0123456789 -x\u00e9", max_size=40) | st.sampled_from(
    ["4111111111111111", "4111 1111 1111 1111", "4242-4242-4242-4242", "5555555555554444"]
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(value=_json, ascii_only=st.booleans())
def test_a_document_with_a_card_number_is_never_passed_as_free_of_them(
    value: Any, ascii_only: bool
) -> None:

    document = json.dumps(value, ensure_ascii=ascii_only).encode()
    if list(card_numbers_in(json.loads(document))):
        assert may_hold_card_number(document)


def test_the_pre_check_looks_where_a_card_number_may_hide() -> None:
    assert not may_hold_card_number(b'{"total": "43.00", "items": [1, 2], "id": "123456789012"}')
    assert may_hold_card_number(b'{"id": "1234567890123"}')
    assert may_hold_card_number(b'{"id": "4111 1111-1111 1111"}')
    assert may_hold_card_number(b'{"id": 4111111111111111}')
    assert may_hold_card_number(b'{"id": "\\u0034111111111111111"}')  # escaped digits
