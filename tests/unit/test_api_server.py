"""How the API is served: httptools and uvloop are installed and chosen, no access log, the
start-up heap frozen."""

from __future__ import annotations

import asyncio
import gc

import uvloop
from fastapi import FastAPI

from pizzashop.app.up import api_config, tune_gc_for_serving


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


def test_the_start_up_heap_is_frozen_out_of_the_collectors_reach() -> None:
    thresholds = gc.get_threshold()
    try:
        tune_gc_for_serving()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # every module and object of the test session so far
        assert len(gc.get_objects(2)) < frozen
        assert gc.get_threshold()[0] == 10_000  # not after every 700 allocations
    finally:
        gc.unfreeze()  # the rest of the session collects as usual
        gc.set_threshold(*thresholds)
