"""Waiting in tests for a condition, never for a fixed time: `eventually` and its async twin.

Both poll `condition` until it returns something truthy and return that value; past `timeout`
they fail the test, naming what was awaited (the condition's name, or the source of a lambda)
and the last value seen. `explain`, if given, adds the state worth seeing on failure.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")

TIMEOUT = 5.0
INTERVAL = 0.02


def eventually(
    condition: Callable[[], T | None],
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    explain: Callable[[], object] | None = None,
) -> T:
    """The first truthy value of `condition()` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            _fail(condition, timeout, value, explain)
        time.sleep(interval)


async def eventually_async(
    condition: Callable[[], T | Awaitable[T | None] | None],
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    explain: Callable[[], object] | None = None,
) -> T:
    """`eventually` for tests whose servers share the test's event loop: it sleeps by awaiting,
    and `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            _fail(condition, timeout, value, explain)
        await asyncio.sleep(interval)


def _fail(
    condition: Callable[..., object],
    timeout: float,
    last: object,
    explain: Callable[[], object] | None,
) -> NoReturn:
    message = f"waited {timeout}s for {_described(condition)}; last value {last!r}"
    if explain is not None:
        message += f"\n{explain()}"
    pytest.fail(message)


def _described(condition: Callable[..., object]) -> str:
    name = getattr(condition, "__qualname__", repr(condition))
    if "<lambda>" not in name:
        return name
    try:
        source = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return name
    _, found, body = source.partition("lambda")
    return f"lambda{body}" if found else source
