"""Shared fixtures: real instances on the running kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import ksvc_host as ksvc
from ksvc_host import fastpath
from ksvc_host import lanes as ksvc_lanes


def _require_fixture_plugins() -> bool:
    return os.environ.get("KSVC_REQUIRE_FIXTURES") == "1"


@pytest.fixture
def fixture_plugins_installed() -> None:
    """Skip (or, under tox, fail) when the fixture distributions are not installed."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("ksvc-test-plugin")
    except importlib.metadata.PackageNotFoundError:
        msg = "fixture plugins not installed: pip install tests/fixtures/ksvc-test-*"
        if _require_fixture_plugins():
            pytest.fail(msg)
        pytest.skip(msg)


LANE_IMPLS = [name.strip() for name in os.environ.get("KSVC_LANE_IMPLS", "native,twin").split(",") if name.strip()]
"""The lane implementations the lane tests run on; tox runs the twin in the ``basic`` and ``all`` environments
only (the plugin environments differ in the stack, not in the twin)."""


@pytest.fixture(params=LANE_IMPLS)
def lane_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both implementations of the lane: lane.c (``ksvc_basic._lane``) and its pure-Python twin
    (``ksvc_basic.lane_reference``), whichever fast path is selected; lanes built during the test use it."""
    from ksvc_basic import own_rings

    if request.param == "native":
        try:
            from ksvc_basic import _lane as module  # type: ignore[attr-defined]
        except ImportError as exc:
            if os.environ.get("KSVC_REQUIRE_NATIVE") == "1":
                pytest.fail(f"compiled lane unavailable: {exc}")
            pytest.skip(f"compiled lane unavailable: {exc}")
    else:
        from ksvc_basic import lane_reference as module
    monkeypatch.setattr(own_rings, "lane_module", lambda: module)
    return str(request.param)


@pytest.fixture(params=["lane", "channel"])
def transport_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, lane_impl: str) -> str:
    """Networking twice: on the loop's lane (receive and accept loops in C, or in the twin: ``lane_impl``),
    and on the shared channel (no lanes built, every receive and send an entry through the dispatcher)."""
    if request.param == "channel":
        monkeypatch.setattr(ksvc_lanes, "plan", lambda instance: None)
    return str(request.param)


@pytest.fixture(params=["thread", "inline"])
def k(request: pytest.FixtureRequest) -> Iterator[ksvc.Ksvc]:
    """A default-stack instance, with the threaded and the inline dispatcher."""
    with ksvc.open(dispatcher=request.param) as inst:
        yield inst


@pytest.fixture
def kt() -> Iterator[ksvc.Ksvc]:
    """A default-stack instance with the threaded dispatcher only."""
    with ksvc.open() as inst:
        yield inst


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both implementations of the fast path (compiled, pure Python), then the default again."""
    got = fastpath.select(pure=request.param == "python")
    if got != request.param:
        msg = f"compiled fast path unavailable: {fastpath.REASON}"
        if os.environ.get("KSVC_REQUIRE_NATIVE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    yield got
    fastpath.select()
