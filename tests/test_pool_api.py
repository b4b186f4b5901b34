"""``Pool`` and ``AsyncPool`` are twins: same names, same parameters, one sync, one async."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import pytest

import tether

ASYNC_METHODS = {"open", "close", "get", "put"}
"""The methods that wait (for resources, creations or destructions): coroutine functions
on ``AsyncPool``, plain functions on ``Pool``."""


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def parameters(function: Any) -> list[tuple[str, Any, Any]]:
    """Each parameter's name, kind and default (``nan`` defaults compared by identity)."""
    return [
        (p.name, p.kind, id(p.default) if p.default != p.default else p.default)
        for p in inspect.signature(function).parameters.values()
    ]


def test_the_twins_have_the_same_public_names() -> None:
    """Every public method and property of AsyncPool exists on Pool, and vice versa."""
    assert public_names(tether.AsyncPool) == public_names(tether.Pool)
    assert {"acquire", "get", "put", "open", "close", "stats", "holders", "resize"} <= (
        public_names(tether.Pool)
    )


@pytest.mark.parametrize("name", sorted(public_names(tether.AsyncPool)))
def test_each_twin_takes_the_same_parameters(name: str) -> None:
    """A method takes the same parameters (names, kinds, defaults) on both twins; a
    property is a property on both."""
    async_member = inspect.getattr_static(tether.AsyncPool, name)
    sync_member = inspect.getattr_static(tether.Pool, name)
    assert type(async_member) is type(sync_member)
    if callable(async_member):
        assert parameters(async_member) == parameters(sync_member)


@pytest.mark.parametrize("name", sorted(public_names(tether.AsyncPool)))
def test_the_async_twin_is_async_where_it_waits(name: str) -> None:
    """open, close, get and put are coroutine functions on AsyncPool; nothing on Pool is."""
    async_member = getattr(tether.AsyncPool, name)
    sync_member = getattr(tether.Pool, name)
    assert inspect.iscoroutinefunction(async_member) == (name in ASYNC_METHODS)
    assert not inspect.iscoroutinefunction(sync_member)


def test_the_constructors_take_the_same_options() -> None:
    """Both constructors take the same options, with the same defaults."""
    assert parameters(tether.AsyncPool.__init__) == parameters(tether.Pool.__init__)


def test_each_twin_is_its_kind_of_context_manager() -> None:
    """AsyncPool and its acquire() are async context managers; Pool and its acquire()
    are plain ones, taking the same parameters."""
    async_pool = tether.AsyncPool(object)
    sync_pool = tether.Pool(object)
    for async_manager, sync_manager in [
        (async_pool, sync_pool),
        (async_pool.acquire(), sync_pool.acquire()),
    ]:
        async_type, sync_type = type(async_manager), type(sync_manager)
        assert isinstance(async_manager, contextlib.AbstractAsyncContextManager)
        assert not isinstance(async_manager, contextlib.AbstractContextManager)
        assert isinstance(sync_manager, contextlib.AbstractContextManager)
        assert not isinstance(sync_manager, contextlib.AbstractAsyncContextManager)
        assert parameters(async_type.__aexit__) == parameters(sync_type.__exit__)
        assert parameters(async_type.__aenter__) == parameters(sync_type.__enter__)


def test_pool_timeout_stats_are_given_or_summarised_once_when_first_read() -> None:
    """``PoolTimeout.stats`` holds statistics given to it, or summarises them from the
    function given, once, when first read (the pool gives a function: most timeouts of
    an overloaded pool are never inspected)."""
    stats = tether.Pool(object, name="given").stats()
    error = tether.PoolTimeout("no resource free")
    assert error.stats is None
    error.stats = stats
    assert error.stats is stats
    summarised: list[tether.PoolStats] = []

    def summarise() -> tether.PoolStats:
        summarised.append(stats)
        return stats

    error.stats = summarise
    assert summarised == []
    assert error.stats is stats
    assert error.stats is stats
    assert len(summarised) == 1
    error.stats = None
    assert error.stats is None
