"""The one exception tree of Pizzashop.

Every class says whether retrying can help (``retriable``), so the consumer runtime picks
retry-with-backoff or the dead-letter topic by type, never by message::

    PizzashopError                      retriable=False
    ├── ConfigError(ValueError)         misuse: bad settings, missing Java or Maven
    ├── TransientError                  retriable=True: try again later
    │   ├── BrokerUnavailable           Kafka cannot be reached right now
    │   │   └── ProducerReset           the producer client broke and was replaced: send again
    │   ├── DependencyPending           a fact this step needs has not arrived yet
    │   └── DeliveryFailed              SMTP or another side effect failed for now
    │       └── NotSent                 ...and certainly did not happen: safe to hand on
    └── PermanentError                  retriable=False: the same input fails the same way
        ├── DecodeError                 bytes that are not a known event
        ├── ValidationFailed(ValueError) an event or request that breaks the contract;
        │                               ``problems`` lists each thing wrong (a ``Problem``)
        ├── PublishRejected             Kafka refused a record for good (too large, not allowed)
        └── ModelError                  a model could not score at all
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "DecodeError",
    "DeliveryFailed",
    "DependencyPending",
    "ModelError",
    "NotSent",
    "PermanentError",
    "PizzashopError",
    "Problem",
    "ProducerReset",
    "PublishRejected",
    "TransientError",
    "ValidationFailed",
]


class PizzashopError(Exception):
    """Base of every error Pizzashop raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(PizzashopError, ValueError):
    """The system is set up wrongly: a bad setting, a missing tool (Java, Maven)."""


class TransientError(PizzashopError):
    """A failure that may pass: the runtime retries it with exponential backoff."""

    retriable = True


class BrokerUnavailable(TransientError):
    """Kafka could not be reached or did not acknowledge in time."""


class ProducerReset(BrokerUnavailable):
    """The producer client reached a state it cannot continue from (a sequence gap after an
    expired batch, fenced by a newer instance, closed under the caller). It has been dropped;
    the next send uses a fresh client, so sending again is safe and useful."""


class DependencyPending(TransientError):
    """A step needs a fact that has not arrived yet (e.g. a refund before the capture)."""


class DeliveryFailed(TransientError):
    """An outbound side effect (an email, say) failed in a way that may pass. It may also have
    happened (a connection lost after the message was handed over): the caller cannot tell."""


class NotSent(DeliveryFailed):
    """The side effect certainly did not happen (refused before or at hand-over), so any
    sender, this one or another, may try it again without repeating it."""


class PermanentError(PizzashopError):
    """Retrying cannot help: the record goes to the dead-letter topic."""


class DecodeError(PermanentError):
    """A record whose bytes are not a known, well-formed event."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: where (a path into it, ``("items", 0, "quantity")``; empty
    for the whole), what, and a machine-readable ``type``."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "invalid"

    @property
    def where(self) -> str:
        """The path as one would write it in Python: ``items[0].quantity``."""
        text = ""
        for part in self.loc:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text

    def __str__(self) -> str:
        return f"{self.where}: {self.msg}" if self.loc else self.msg


class ValidationFailed(PermanentError, ValueError):
    """An event or a request that breaks the contract (unknown item, bad total...).

    ``problems`` names every thing wrong, not only the first, so a client fixes its request in
    one go; the message joins them. A plain string is a problem of the whole input.
    """

    problems: tuple[Problem, ...]

    def __init__(self, *problems: Problem | str) -> None:
        self.problems = tuple(p if isinstance(p, Problem) else Problem((), p) for p in problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[type[ValidationFailed], tuple[Problem | str, ...]]:
        # pickled (a process pool) with its problems, not with the joined message
        return type(self), self.problems


class PublishRejected(PermanentError):
    """Kafka refused the record or request and would refuse it again (record too large, topic
    not authorised, invalid topic): retrying the same publish cannot help."""


class ModelError(PermanentError):
    """A model failed on an input; the enrichment marks that score degraded."""
