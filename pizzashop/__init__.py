"""Pizzashop: the composition root, settings, errors and the command line.

The architecture lives in the top-level packages (``ingest``, ``services``, ``models``,
``enrichers``, ``api``); this package only wires them together.
"""

from pizzashop.errors import (
    ConfigError,
    DecodeError,
    PermanentError,
    PizzashopError,
    TransientError,
    ValidationFailed,
)
from pizzashop.settings import Settings

__all__ = [
    "ConfigError",
    "DecodeError",
    "PermanentError",
    "PizzashopError",
    "Settings",
    "TransientError",
    "ValidationFailed",
]
