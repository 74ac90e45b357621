"""Who may call the API and how much: API keys with scopes, rate limits, a body-size limit.

* **Keys** come from ``ApiSettings.keys`` and travel in the ``X-API-Key`` header (an OpenAPI
  security scheme). ``requires(scope)`` is the dependency a route declares. Inspecting and
  operating always need a key with the scope: none presented, or one that is no key, is 401; a
  key without the scope is 403. Placing orders needs a key only once some key has the ``place``
  scope. A presented key is compared, in constant time, with every configured one; secrets are
  never logged, only key names.
* **Rate limits** on placing orders (``limits``, sliding-window counters in memory, so per
  process): a request with a valid key counts against its key, any other against its client
  address; over the limit is 429 with ``Retry-After``. Anonymous requests are counted before
  the key is checked, so guessing keys is limited too.
* **Body size**: ``BodySizeLimit``, a pure ASGI middleware, answers 413 when ``Content-Length``
  is over the limit, without reading the body, and stops a streamed body as soon as it has
  passed the limit, before anything parses it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import limits
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette import types as asgi

from pizzashop.core.errors import ConfigError
from pizzashop.core.settings import ApiSettings

__all__ = [
    "KEY_HEADER",
    "BodySizeLimit",
    "Caller",
    "Guard",
    "KeyRing",
    "Scope",
]

logger = logging.getLogger(__name__)

Scope = Literal["place", "inspect", "operate"]
KEY_HEADER = "X-API-Key"
MIN_SECRET_CHARS = 16

api_key_header = APIKeyHeader(
    name=KEY_HEADER,
    scheme_name="ApiKey",
    description="An API key from `PIZZASHOP_API__KEYS`. Scopes: `place` (orders), `inspect` "
    "(orders' status, scores), `operate` (dead letters, models).",
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the key's name (``None`` without a valid key) and the client address."""

    key: str | None
    scopes: frozenset[str]
    address: str


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    digest: bytes
    scopes: frozenset[str]
    rate_limit: str | None


def _digest(secret: str) -> bytes:
    # Comparing digests keeps the comparison's time independent of the secret's length too.
    return hashlib.sha256(secret.encode()).digest()


class KeyRing:
    """The configured keys, held as digests; finds the one a client presented."""

    def __init__(self, settings: ApiSettings) -> None:
        keys: list[_Key] = []
        for key in settings.keys:
            secret = key.secret.get_secret_value()
            if len(secret) < MIN_SECRET_CHARS:
                raise ConfigError(
                    f"API key {key.name!r}: a secret needs {MIN_SECRET_CHARS} characters or more"
                )
            keys.append(_Key(key.name, _digest(secret), frozenset(key.scopes), key.rate_limit))
        if len({k.name for k in keys}) != len(keys):
            raise ConfigError("API keys need distinct names")
        if len({k.digest for k in keys}) != len(keys):
            raise ConfigError("two API keys have the same secret")
        self._keys = tuple(keys)

    @property
    def rate_limits(self) -> dict[str, str | None]:
        """Each key's own rate limit (``None``: the default per key), by key name."""
        return {k.name: k.rate_limit for k in self._keys}

    def granting(self, scope: Scope) -> bool:
        """Whether any key has ``scope``."""
        return any(scope in k.scopes for k in self._keys)

    def find(self, presented: str | None) -> _Key | None:
        """The key whose secret is ``presented``; every key is compared, each in constant time,
        so the answer's timing says nothing about which keys exist or how close a guess was."""
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


class RateLimits:
    """Placing orders: a sliding-window counter per key and per client address."""

    def __init__(self, settings: ApiSettings, ring: KeyRing) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._per_address = _parse(settings.rate_limit_per_address)
        self._per_key = _parse(settings.rate_limit_per_key)
        self._key_limits = {
            name: _parse(limit) if limit is not None else self._per_key
            for name, limit in ring.rate_limits.items()
        }

    async def check(self, caller: Caller) -> None:
        """Count one order by ``caller``; ``HTTPException(429)`` with ``Retry-After`` when over."""
        if caller.key is not None:
            items, who = self._key_limits.get(caller.key, self._per_key), ("key", caller.key)
        else:
            items, who = self._per_address, ("address", caller.address)
        for item in items:
            if not await self._limiter.hit(item, "place", *who):
                stats = await self._limiter.get_window_stats(item, "place", *who)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                logger.info("rate limit %s hit by %s %s", item, *who)
                raise HTTPException(
                    status_code=429,
                    detail=f"too many orders: at most {item} per {who[0]}; "
                    f"try again in {retry_after}s",
                    headers={"Retry-After": str(retry_after)},
                )


def _parse(text: str) -> list[limits.RateLimitItem]:
    return limits.parse_many(text) if text.strip() else []


class Guard:
    """The API's dependencies for keys and limits, built once per app from ``ApiSettings``."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.ring = KeyRing(settings)
        self.limits = RateLimits(settings, self.ring)
        if not settings.keys:
            logger.warning(
                "no API keys configured (PIZZASHOP_API__KEYS): inspection and operation "
                "endpoints refuse every request; placing orders is open, rate limited per address"
            )

    def caller(self, request: Request, presented: str | None) -> Caller:
        key = self.ring.find(presented)
        address = request.client.host if request.client is not None else "unknown"
        if key is None:
            return Caller(None, frozenset(), address)
        return Caller(key.name, key.scopes, address)

    @property
    def place_is_open(self) -> bool:
        """Whether orders may be placed without a key (no key has the ``place`` scope)."""
        return not self.ring.granting("place")

    def requires(self, scope: Scope) -> Callable[..., Awaitable[Caller]]:
        """A dependency: the caller, if it may use ``scope``; 401 or 403 otherwise. For
        ``place`` the rate limit applies, and while placing is open any caller may (a key with
        the scope buys its per-key limit; any other key is ignored): the key is then read from
        the header without declaring a security requirement, so the OpenAPI document does not
        claim one (declare ``{}`` as an alternative on the route)."""

        async def check(request: Request, presented: str | None) -> Caller:
            return await self._check(request, presented, scope)

        if scope == "place" and self.place_is_open:

            async def optional_key(request: Request) -> Caller:
                return await check(request, request.headers.get(KEY_HEADER))

            return optional_key

        async def required_key(
            request: Request, presented: str | None = Security(api_key_header)
        ) -> Caller:
            return await check(request, presented)

        return required_key

    async def admit(self, request: Request, scope: Scope) -> Caller:
        """What ``requires(scope)`` does, called directly (``POST /orders``'s lean path): the
        key read from its header, the same answers and the same counting."""
        return await self._check(request, request.headers.get(KEY_HEADER), scope)

    async def _check(self, request: Request, presented: str | None, scope: Scope) -> Caller:
        caller = self.caller(request, presented)
        if scope == "place" and self.place_is_open and scope not in caller.scopes:
            # Open placing: a key that grants nothing here is no key at all.
            caller = Caller(None, frozenset(), caller.address)
        if scope == "place" and caller.key is None:
            await self.limits.check(caller)  # anonymous: counted before being refused
            if self.place_is_open:
                return caller
        if caller.key is None:
            raise HTTPException(
                status_code=401,
                detail="the API key is not valid"
                if presented
                else f"this needs an API key with the {scope!r} scope in {KEY_HEADER}",
                headers={"WWW-Authenticate": f'ApiKey header="{KEY_HEADER}"'},
            )
        if scope not in caller.scopes:
            logger.info("API key %r refused: no %r scope", caller.key, scope)
            raise HTTPException(status_code=403, detail=f"the API key lacks the {scope!r} scope")
        if scope == "place":
            await self.limits.check(caller)
        return caller

    def depends(self, scope: Scope) -> Any:
        """``Depends(...)`` for a route's ``dependencies=[...]``."""
        return Depends(self.requires(scope))


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body is over {limit} bytes")


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, before the app reads them whole.

    A ``Content-Length`` over the limit is answered at once; a body streamed without one (or
    longer than it said) is cut off as soon as it passes the limit: the app's ``receive`` raises
    an ``HTTPException(413)``, which FastAPI answers like any other.
    """

    def __init__(self, app: asgi.ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, _TooLarge(self.max_bytes).detail)
            return
        received = 0
        started = False

        async def counting_receive() -> asgi.Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def watching_send(message: asgi.Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _TooLarge as exc:
            # Reached only where no exception handler answered (a plain Starlette route).
            if started:
                raise
            await _answer(send, 413, exc.detail)


def _content_length(scope: asgi.Scope) -> int | None:
    """The declared length; ``None`` when absent, -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None


async def _answer(send: asgi.Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
