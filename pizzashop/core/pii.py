"""Personal data the shop must not spread: card numbers refused, e-mail addresses masked.

* **Card numbers** (PANs): a run of 13 to 19 digits, spaces and dashes between them ignored,
  that passes the Luhn check. ``card_numbers_in`` walks any JSON-like value (strings, integers,
  lists, mappings, nested) and names the path of every field that holds one, so intake can
  refuse the request before anything is stored, and say where without repeating the number.
* **E-mail addresses** are masked to their first character and domain (``c***@example.com``):
  enough to tell a domain's outage from one address's typo, not enough to mail anyone.
  ``mask_emails`` masks text, ``masked`` any JSON-like value, and ``EmailMaskingFilter`` every
  log record passing the handler or logger it is installed on (the CLI installs it).

Only maximal digit runs are checked: a longer run (a 24-digit id) is not a card number, and
checking every 13-19-digit window inside it would refuse one id in ten.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = [
    "EmailMaskingFilter",
    "card_numbers_in",
    "has_card_number",
    "luhn_valid",
    "mask_email",
    "mask_emails",
    "masked",
    "may_hold_card_number",
]

#: Digits with spaces or dashes between them: "4111 1111-1111 1111".
_DIGIT_RUN: Final = re.compile(r"[0-9](?:[ -]*[0-9])*")
_EMAIL: Final = re.compile(r"(?P<local>[\w.%+-]+)@(?P<domain>[\w-]+(?:\.[\w-]+)+)")
PAN_MIN_DIGITS: Final = 13
PAN_MAX_DIGITS: Final = 19


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits, as every card number passes it."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def has_card_number(text: str) -> bool:
    """Whether ``text`` holds a card number: a maximal run of 13-19 digits (spaces and dashes
    between digits ignored) passing the Luhn check."""
    for match in _DIGIT_RUN.finditer(text):
        digits = match.group().replace(" ", "").replace("-", "")
        if PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS and luhn_valid(digits):
            return True
    return False


#: Any run of 13 or more digits, spaces and dashes between them, in raw JSON: what every card
#: number in a decoded value shows in its document, unless spelled with ``\\u`` escapes.
_RAW_DIGIT_RUN: Final = re.compile(rb"[0-9](?:[ -]*[0-9]){%d,}" % (PAN_MIN_DIGITS - 1))


def may_hold_card_number(document: bytes) -> bool:
    """Whether a JSON ``document`` might hold a card number anywhere (keys, strings, integers).
    False is certain: no run of 13 digits and no ``\\u`` escape (the only way to write a
    digit, space or dash other than as itself) means ``card_numbers_in`` of the decoded value
    finds nothing. True only says to look (``card_numbers_in``)."""
    return b"\\u" in document or _RAW_DIGIT_RUN.search(document) is not None


def card_numbers_in(
    value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    """The path of every string (or integer) inside ``value`` that holds a card number; keys of
    mappings count as values too (a card number is no better as a key)."""
    if isinstance(value, bool):
        return
    if isinstance(value, str | int):
        if has_card_number(str(value)):
            yield path
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and has_card_number(key):
                yield (*path, key)
            yield from card_numbers_in(item, (*path, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from card_numbers_in(item, (*path, index))


def mask_email(local: str, domain: str) -> str:
    return f"{local[:1]}***@{domain}"


def mask_emails(text: str) -> str:
    """``text`` with every e-mail address masked to ``c***@example.com``. Idempotent."""
    if "@" not in text:  # the common case, and a cheap one
        return text
    return _EMAIL.sub(lambda m: mask_email(m["local"], m["domain"]), text)


def masked(value: Any) -> Any:
    """A copy of a JSON-like value with the e-mail addresses in every string masked."""
    if isinstance(value, str):
        return mask_emails(value)
    if isinstance(value, Mapping):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value


# What a LogRecord has of its own; anything else came in through ``extra=``.
_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Masked:
    """Stands in for a log argument whose text holds an address: prints masked with %s and %r."""

    __slots__ = ("_repr", "_str")

    def __init__(self, value: object) -> None:
        self._str = mask_emails(str(value))
        self._repr = mask_emails(repr(value))

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr


def _mask_arg(value: object) -> object:
    if isinstance(value, str):
        return mask_emails(value)
    if value is None or isinstance(value, int | float):
        return value
    if "@" in str(value) or "@" in repr(value):
        return _Masked(value)
    return value


class EmailMaskingFilter(logging.Filter):
    """Masks e-mail addresses in a log record: its message and arguments, its exception and
    stack text, and string ``extra=`` fields. Never drops a record.

    Arguments are masked one by one rather than folded into the message, because formatters may
    read them (uvicorn's access log does). Install it on *handlers* (a filter on a logger sees
    only what is logged on that very logger, not its children's records) and on loggers that
    keep handlers of their own (uvicorn's).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "@" in record.getMessage():
            if isinstance(record.msg, str):
                record.msg = mask_emails(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_mask_arg(a) for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: _mask_arg(v) for k, v in record.args.items()}
            message = record.getMessage()
            if mask_emails(message) != message:  # an address made of several pieces, say
                record.msg, record.args = mask_emails(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_emails(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_emails(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_FIELDS and isinstance(value, str) and "@" in value:
                setattr(record, name, mask_emails(value))
        return True
