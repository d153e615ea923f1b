"""Plugin discovery through real installed distributions (tests/fixtures/*), selection and hints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ksvc_host as ksvc
from ksvc_host.plugins import PluginManager
from ksvc_host.selection import resolve
from ksvc_host.testing import shared_ring_statx

pytestmark = pytest.mark.usefixtures("fixture_plugins_installed")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "ksvc_host.cli", *args], capture_output=True, text=True, env=full)


def test_basic_lists_its_implementations() -> None:
    pm = PluginManager()
    basic = pm.plugins["basic"]
    assert basic.distribution == "ksvc-basic" and basic.error is None
    names = sorted((t, n) for t, ns in basic.implementations.items() for n in ns)
    assert names == sorted(
        [
            ("router", "probe"), ("router", "static"), ("io_backend", "basic"), ("worker_pool", "fixed"),
            ("worker_pool", "inline"), ("notifier", "eventfd"), ("completion_sink", "ring"),
            ("buffer_provider", "heap"), ("shared_page", "mmap"), ("shared_page", "cached"),
        ]
    )  # fmt: skip


def test_broken_plugin_is_reported_and_others_work() -> None:
    pm = PluginManager()
    broken = pm.plugins["test-broken"]
    assert broken.distribution == "ksvc-test-broken"
    assert "ksvc_test_missing_dependency" in (broken.error or "")
    assert pm.get("notifier", "counting") is not None  # the others keep working
    assert pm.get("router", "probe") is not None


def test_conflicting_name_is_an_error_naming_both() -> None:
    pm = PluginManager()
    with pytest.raises(ksvc.PluginError) as info:
        pm.get("shared_page", "twin")
    assert "ksvc-test-plugin" in str(info.value) and "ksvc-test-conflict" in str(info.value)
    with pytest.raises(ksvc.PluginError, match="ksvc-test-conflict"):
        ksvc.open(shared_page="twin")


def test_third_party_notifier_passes_the_conformance_kit() -> None:
    from ksvc_test_plugin import CountingNotifier

    from ksvc_host import testing

    testing.check_notifier(CountingNotifier)
    testing.check_instance(notifier="counting")


def test_third_party_notifier_is_selectable_and_observers_fire() -> None:
    import ksvc_test_plugin

    ksvc_test_plugin.EVENTS.clear()
    # Inline: every turn that completes something notifies (a caller helping the threaded dispatcher
    # reaps its own completions without a notification).
    with ksvc.open(notifier="counting", dispatcher="inline") as k:
        assert k.instance.notifier.name == "counting"
        assert isinstance(shared_ring_statx(k), bytes)  # through the shared channel
        assert k.instance.notifier.calls >= 1
        inst = k.instance
    kinds = [e[0] for e in ksvc_test_plugin.EVENTS]
    assert kinds[0] == "created" and ksvc_test_plugin.EVENTS[0][1] is inst
    assert "batch" in kinds and "closing" in kinds


def test_env_var_limits_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSVC_PLUGINS", "ksvc-basic")
    pm = PluginManager()
    assert set(pm.plugins) == {"basic"}
    monkeypatch.setenv("KSVC_PLUGINS", "")
    assert PluginManager().plugins == {}


def test_selection_order_code_env_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = PluginManager()
    assert resolve(pm).names["worker_pool"] == "fixed"
    monkeypatch.setenv("KSVC_WORKER_POOL", "inline")
    assert resolve(pm).names["worker_pool"] == "inline"
    assert resolve(pm, worker_pool="fixed").names["worker_pool"] == "fixed"


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_unknown_name_says_what_is_available_and_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSVC_PLUGINS", "ksvc-basic")
    pm = PluginManager()
    with pytest.raises(ksvc.SelectionError) as info:
        resolve(pm, worker_pool="lazy")
    text = str(info.value)
    if _installed("ksvc-lazypool"):  # this environment has it: KSVC_PLUGINS is what keeps it out
        assert "'lazy'" in text and "ksvc-lazypool, which is installed but not loaded" in text
        assert "KSVC_PLUGINS=ksvc-basic excludes it" in text and "add ksvc-lazypool to KSVC_PLUGINS" in text
        assert "pip install" not in text
    else:
        assert "'lazy'" in text and "fixed" in text and "pip install ksvc-lazypool" in text
        assert "not loaded" not in text
    with pytest.raises(ksvc.SelectionError, match="unknown selection keyword"):
        resolve(pm, workerpool="fixed")  # type: ignore[arg-type]
    with pytest.raises(ksvc.SelectionError, match="check the spelling") as info:
        resolve(pm, notifier="no-such-notifier")
    assert "KSVC_PLUGINS=ksvc-basic also leaves out the installed" in str(info.value)
    assert "ksvc-test-plugin" in str(info.value)  # installed (the fixtures), not loaded: perhaps it has the name


def test_filter_remembers_what_it_excluded_and_what_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSVC_PLUGINS", "KSVC_Basic, bogus,test-plugin")  # distribution names compare as PEP 503
    pm = PluginManager()
    assert set(pm.plugins) == {"basic", "test-plugin"}
    assert pm.filter == "KSVC_Basic, bogus,test-plugin" and pm.unmatched == ("bogus",)
    assert {"test-broken", "test-conflict"} <= set(pm.excluded)
    assert pm.excluded["test-broken"].distribution == "ksvc-test-broken" and not pm.excluded["test-broken"].error
    assert pm.is_excluded("ksvc-test-broken") and pm.is_excluded("KSVC_TEST_BROKEN")
    assert not pm.is_excluded("ksvc-basic") and not pm.is_excluded("ksvc-no-such-thing")
    monkeypatch.delenv("KSVC_PLUGINS")
    pm = PluginManager()
    assert pm.filter is None and pm.excluded == {} and pm.unmatched == ()


def test_preset_names_plugins_installed_but_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSVC_PLUGINS", "bogus")
    pm = PluginManager()
    assert pm.plugins == {} and pm.unmatched == ("bogus",)
    with pytest.raises(ksvc.SelectionError) as info:
        resolve(pm)
    assert str(info.value) == (
        "preset 'default' needs ksvc-basic, which is installed but not loaded: KSVC_PLUGINS=bogus excludes it "
        "(bogus is not an installed KSVC plugin); add ksvc-basic to KSVC_PLUGINS or unset the variable"
    )
    monkeypatch.setenv("KSVC_PLUGINS", "")
    with pytest.raises(ksvc.SelectionError, match="ksvc-basic, which is installed but not loaded: KSVC_PLUGINS=''"):
        resolve(PluginManager())


def test_missing_preset_plugins_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSVC_PLUGINS", "ksvc-basic")
    pm = PluginManager()
    with pytest.raises(ksvc.SelectionError) as info:
        resolve(pm, preset="server")
    for dist in ("ksvc-lazypool", "ksvc-futex"):
        assert dist in str(info.value)


def test_cli_plugins_json() -> None:
    out = _cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    basic = [i for i in data["implementations"] if i["distribution"] == "ksvc-basic"]
    assert len(basic) == 10  # the nine defaults and alternatives, plus the cached shared page
    assert {i["name"] for i in basic if i["default"]} == {
        "probe",
        "basic",
        "fixed",
        "eventfd",
        "ring",
        "heap",
        "mmap",
    }
    assert any(p["name"] == "test-broken" and p["error"] for p in data["plugins"])


def test_empty_filter_says_ksvc_basic_is_installed_but_not_loaded() -> None:
    """KSVC_PLUGINS="" loads nothing: every message says so, instead of asking to install what is there."""
    env = {"KSVC_PLUGINS": ""}
    out = _cli("plugins", env=env)
    assert out.returncode == 0 and out.stdout.startswith("No KSVC plugins loaded: ")
    assert "ksvc-basic" in out.stdout and "installed but not loaded" in out.stdout and "KSVC_PLUGINS=''" in out.stdout
    assert "pip install" not in out.stdout
    out = _cli("demo", env=env)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "ksvc-basic, which is installed but not loaded" in out.stderr
    code = "import ksvc_host as k\ntry:\n    k.open()\nexcept k.SelectionError as e:\n    print(e)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, **env})  # fmt: skip
    assert "KSVC_PLUGINS='' excludes it" in run.stdout and "unset the variable" in run.stdout
