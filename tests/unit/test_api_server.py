"""How the API is served: httptools and uvloop are installed and chosen, no access log."""

from __future__ import annotations

import asyncio

import uvloop
from fastapi import FastAPI

from pizzashop.app.up import api_config


def test_the_api_is_served_with_httptools_and_without_an_access_log() -> None:
    config = api_config(FastAPI(), "127.0.0.1", 0)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    assert config.loop == "uvloop"
    assert not config.access_log


def test_uvloop_runs_a_coroutine() -> None:
    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert uvloop.run(loop_type()).startswith("uvloop")
