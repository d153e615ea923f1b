"""The ``ksvc`` command where nothing (or not everything) is loaded: it says why, and fails when nothing ran.

"Host alone" is a real interpreter whose path holds only ``ksvc_host`` and
its dependencies, with no distribution metadata: no plugin is installed
there, as after ``pip install ksvc-host`` in a fresh venv.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(
    args: list[str], env: dict[str, str | None], *, isolated: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in env}
    full.update({k: v for k, v in env.items() if v is not None})
    cmd = [sys.executable]
    if isolated is not None:
        cmd.append("-S")  # no site-packages: none of the installed distributions
        full["PYTHONPATH"] = str(isolated)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=full, timeout=120)


def _cli(
    *args: str, env: dict[str, str | None] | None = None, isolated: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "ksvc_host.cli", *args], env or {}, isolated=isolated)


@pytest.fixture(scope="module")
def host_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory to use as the whole import path: ksvc_host, pluggy, cffi and pycparser, nothing else."""
    root = tmp_path_factory.mktemp("host-alone")
    for name in ("ksvc_host", "pluggy", "cffi", "_cffi_backend", "pycparser"):
        origin = Path(importlib.import_module(name).__file__ or "")
        source = origin.parent if origin.name == "__init__.py" else origin
        (root / source.name).symlink_to(source)
    return root


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# -- no plugin installed ----------------------------------------------------------------


def test_host_alone_says_which_plugin_to_install(host_alone: Path) -> None:
    env: dict[str, str | None] = {"KSVC_PLUGINS": None}
    out = _cli("plugins", env=env, isolated=host_alone)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "No KSVC plugins installed. Install the defaults with: pip install ksvc-basic"
    out = _cli("demo", env=env, isolated=host_alone)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "ksvc-basic, which is not installed (install with: pip install ksvc-basic)" in out.stderr
    code = "import ksvc_host as k\ntry:\n    k.open()\nexcept k.SelectionError as e:\n    print(e)"
    run = _run(["-c", code], env, isolated=host_alone)
    assert (
        run.stdout.strip()
        == "preset 'default' needs ksvc-basic, which is not installed (install with: pip install ksvc-basic)"
    )


def test_soak_with_no_plugin_says_it_ran_nothing_and_fails(host_alone: Path) -> None:
    env: dict[str, str | None] = {"KSVC_PLUGINS": None}
    out = _cli("soak", "--ops", "1000", env=env, isolated=host_alone)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "ran nothing" in lines[0] and "pip install ksvc-basic" in lines[0], out.stderr
    out = _cli("soak", "--ops", "1000", "--json", env=env, isolated=host_alone)
    assert out.returncode == 2
    report = json.loads(out.stdout)
    assert report["presets"] == {} and report["ok"] is False and "pip install ksvc-basic" in report["error"]


def test_soak_with_every_plugin_filtered_out_names_the_variable() -> None:
    out = _cli("soak", "--ops", "1000", "--json", env={"KSVC_PLUGINS": "bogus"})
    assert out.returncode == 2
    report = json.loads(out.stdout)
    assert report["presets"] == {} and report["ok"] is False
    assert "ksvc-basic, which is installed but not loaded: KSVC_PLUGINS=bogus excludes it" in report["error"]
    assert "bogus is not an installed KSVC plugin" in report["error"]
    assert report["error"] in out.stderr


def test_soak_rejects_a_count_that_would_run_nothing() -> None:
    out = _cli("soak", "--ops", "3", "--threads", "4")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "ksvc: --ops must be at least 5 (one per thread and one for the asyncio loop), got 3"


def test_soak_still_succeeds_when_a_preset_runs() -> None:
    out = _cli("soak", "--ops", "400", "--threads", "1", "--preset", "default", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["presets"]["default"]["ops"] == 400 and "error" not in report


# -- plugins installed, KSVC_PLUGINS keeping them out -------------------------------------------


def test_plugins_with_a_filter_matching_nothing_says_what_is_installed() -> None:
    out = _cli("plugins", env={"KSVC_PLUGINS": "bogus"})
    assert out.returncode == 0, out.stderr
    text = out.stdout.strip()
    assert text.startswith("No KSVC plugins loaded: ") and "ksvc-basic" in text
    assert "installed but not loaded, as KSVC_PLUGINS=bogus excludes" in text
    assert "(bogus is not an installed KSVC plugin)" in text and "unset the variable" in text
    assert "pip install" not in text
    data = json.loads(_cli("plugins", "--json", env={"KSVC_PLUGINS": "bogus"}).stdout)
    assert data["plugins"] == [] and data["filter"]["KSVC_PLUGINS"] == "bogus"
    assert data["filter"]["not_installed"] == ["bogus"]
    assert "ksvc-basic" in {p["distribution"] for p in data["filter"]["excluded"]}


def test_plugins_lists_what_the_filter_left_out() -> None:
    out = _cli("plugins", env={"KSVC_PLUGINS": "ksvc-basic,nope"})
    assert out.returncode == 0
    assert "ksvc-basic" in out.stdout and "fixed" in out.stdout  # the table of what did load
    assert "KSVC_PLUGINS=ksvc-basic,nope names nope, which is not an installed KSVC plugin" in out.stderr
    others = [d for d in ("ksvc-lazypool", "ksvc-sqpoll", "ksvc-futex") if _installed(d)]
    for dist in others:
        assert dist in out.stderr and "installed but not loaded" in out.stderr
    data = json.loads(_cli("plugins", "--json", env={"KSVC_PLUGINS": ""}).stdout)
    assert data["filter"] == {
        "KSVC_PLUGINS": "",
        "excluded": data["filter"]["excluded"],
        "not_installed": [],
    } and "ksvc-basic" in {p["distribution"] for p in data["filter"]["excluded"]}
    assert json.loads(_cli("plugins", "--json", env={"KSVC_PLUGINS": None}).stdout)["filter"] == {
        "KSVC_PLUGINS": None,
        "excluded": [],
        "not_installed": [],
    }


def test_open_names_an_excluded_plugin_as_installed_but_not_loaded() -> None:
    code = (
        "import ksvc_host as k\ntry:\n    k.open(worker_pool='lazy').close()\n    print('opened')\n"
        "except k.SelectionError as e:\n    print(e)"
    )
    run = _run(["-c", code], {"KSVC_PLUGINS": "ksvc-basic"})
    text = run.stdout.strip()
    if _installed("ksvc-lazypool"):
        assert text == (
            "no worker_pool named 'lazy' (from worker_pool= in code): it is provided by ksvc-lazypool, which is "
            "installed but not loaded: KSVC_PLUGINS=ksvc-basic excludes it; add ksvc-lazypool to KSVC_PLUGINS "
            "or unset the variable"
        )
    else:
        assert "pip install ksvc-lazypool" in text and "not loaded" not in text
