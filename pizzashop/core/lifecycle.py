"""One lifecycle for every resource: start once, stop many times, never reopen.

A ``Resource`` subclass implements ``_start`` and ``_stop``; the base keeps the state, makes
``stop()`` idempotent (and safe after a failed start), refuses to start a stopped resource,
and gives ``async with`` that returns the resource itself.

``stop()`` has one meaning everywhere: release what ``start()`` opened and wait until it is
released; afterwards the object is done. A resource that can go down and come back while it
lives (a broker node's ``restart``, a mail sink's ``suspend``/``resume``) names that with verbs
of its own. A failed ``start()`` runs ``_stop`` at once and leaves the object stopped: like an
aiokafka client, make a new one to try again.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Resource(ABC):
    _state: State = State.NEW

    @property
    def state(self) -> State:
        return self._state

    async def start(self) -> None:
        if self._state is State.RUNNING:
            return
        if self._state is not State.NEW:
            raise RuntimeError(
                f"{type(self).__name__} is {self._state.value}; create a new one to start again"
            )
        self._state = State.STARTING
        try:
            await self._start()
        except BaseException:
            # Undo what the failed start did open, so nothing leaks.
            self._state = State.STOPPING
            try:
                await self._stop()
            finally:
                self._state = State.STOPPED
            raise
        self._state = State.RUNNING

    async def stop(self) -> None:
        if self._state in (State.STOPPED, State.STOPPING):
            return
        if self._state is State.NEW:
            self._state = State.STOPPED
            return
        self._state = State.STOPPING
        try:
            await self._stop()
        finally:
            self._state = State.STOPPED

    def _check_running(self) -> None:
        """Raise unless started and not yet stopping: for what only a running resource can do."""
        if self._state is not State.RUNNING:
            raise RuntimeError(f"{type(self).__name__} is {self._state.value}, not running")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @abstractmethod
    async def _start(self) -> None:
        """Open what the resource needs. On failure ``_stop`` runs, so it must cope."""

    @abstractmethod
    async def _stop(self) -> None:
        """Release everything ``_start`` opened (also after a partial start)."""
