"""A short soak in the default run (the full one is ``ksvc soak``, a million operations per preset)."""

from __future__ import annotations

from ksvc_host.soak import run_soak


def test_short_soak_loses_and_leaks_nothing() -> None:
    report = run_soak(ops=6000, threads=3, presets=["default"], quiet=True)
    entry = report["presets"]["default"]
    assert entry["ops"] == 6000 - 6000 % 4 and entry["lost"] == 0 and entry["wrong"] == 0, entry
    assert entry["leaked_fds"] == 0 and entry["leaked_threads"] == 0, entry
    assert report["ok"]
