"""Which event loop the gateway runs on: uvloop unless told otherwise, asyncio's without it."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from gateway.serving.event_loop import UnknownEventLoop, loop_factory, loop_name


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, uvloop.new_event_loop, id="unset-uvloop"),
        pytest.param({"GATEWAY_EVENT_LOOP": ""}, uvloop.new_event_loop, id="empty-uvloop"),
        pytest.param({"GATEWAY_EVENT_LOOP": "uvloop"}, uvloop.new_event_loop, id="uvloop"),
        pytest.param({"GATEWAY_EVENT_LOOP": "asyncio"}, asyncio.new_event_loop, id="asyncio"),
    ],
)
def test_loop_factory_follows_the_variable(environ, expected):
    assert loop_factory(environ) is expected


@pytest.mark.parametrize("value", ["tokio", "UVLOOP", " asyncio"])
def test_an_unknown_loop_is_refused_by_name(value):
    with pytest.raises(UnknownEventLoop) as refused:
        loop_factory({"GATEWAY_EVENT_LOOP": value})
    assert str(refused.value) == f"GATEWAY_EVENT_LOOP={value!r}: expected one of uvloop, asyncio"


def test_without_uvloop_asyncio_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a failed import leaves: ImportError
    assert loop_factory({}) is asyncio.new_event_loop


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        pytest.param(asyncio.new_event_loop, "asyncio", id="asyncio"),
        pytest.param(uvloop.new_event_loop, "uvloop", id="uvloop"),
    ],
)
def test_loop_name_is_the_running_loops_package(factory, name):
    with asyncio.Runner(loop_factory=factory) as runner:
        assert loop_name(runner.get_loop()) == name
