"""Choosing one implementation per trait: by name, environment, preset, default.

For each trait the name comes from, in order: the keyword given in code
(``ksvc.open(worker_pool="lazy")``), the environment variable
(``KSVC_WORKER_POOL=lazy``), the preset (keyword ``preset`` or
``KSVC_PRESET``), and finally the ``default`` preset. io_uring features
combine with ``+``: ``io_backend="sqpoll+fixed-files"`` is the ``basic``
backend with both features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ksvc_host.errors import SelectionError
from ksvc_host.plugins import PluginManager
from ksvc_host.traits import TRAITS

PRESETS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "default": MappingProxyType(
            {
                "router": "probe",
                "io_backend": "basic",
                "worker_pool": "fixed",
                "notifier": "eventfd",
                "completion_sink": "ring",
                "buffer_provider": "heap",
                "shared_page": "mmap",
            }
        ),
        "server": MappingProxyType(
            {
                "router": "probe",
                "io_backend": "basic",
                "worker_pool": "lazy",
                "notifier": "futex",
                "completion_sink": "ring",
                "buffer_provider": "heap",
                "shared_page": "mmap",
            }
        ),
    }
)
"""The seed's type aliases: ``DefaultInstance`` and ``ServerInstance``."""

BASE_IO_BACKEND = "basic"

#: Which distribution provides a well-known name, for "install X" hints.
PROVIDERS: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("router", "probe"): "ksvc-basic",
        ("router", "static"): "ksvc-basic",
        ("io_backend", "basic"): "ksvc-basic",
        ("worker_pool", "fixed"): "ksvc-basic",
        ("worker_pool", "inline"): "ksvc-basic",
        ("notifier", "eventfd"): "ksvc-basic",
        ("completion_sink", "ring"): "ksvc-basic",
        ("buffer_provider", "heap"): "ksvc-basic",
        ("shared_page", "mmap"): "ksvc-basic",
        ("io_feature", "sqpoll"): "ksvc-sqpoll",
        ("worker_pool", "lazy"): "ksvc-lazypool",
        ("notifier", "futex"): "ksvc-futex",
        ("completion_sink", "direct-wake"): "ksvc-futex",
        ("buffer_provider", "registered"): "ksvc-regbuf",
        ("buffer_provider", "provided-ring"): "ksvc-regbuf",
        ("io_feature", "fixed-buffers"): "ksvc-regbuf",
        ("io_feature", "fixed-files"): "ksvc-fixedfiles",
        ("io_feature", "multishot-accept"): "ksvc-multishot",
        ("io_feature", "send-zc"): "ksvc-sendzc",
        ("shared_page", "cached"): "ksvc-basic",
    }
)


def env_var(trait: str) -> str:
    """The environment variable that selects *trait* (``KSVC_IO_BACKEND``)."""
    return "KSVC_" + trait.upper()


@dataclass(frozen=True)
class Selection:
    """The resolved name per trait, plus the io_uring features."""

    names: Mapping[str, str]
    io_base: str
    """The io_uring backend the features are applied to."""
    io_features: tuple[str, ...]
    preset: str

    def describe(self) -> str:
        """One line: ``router=probe io_backend=basic ...``."""
        return " ".join(f"{t}={self.names[t]}" for t in TRAITS)


def _provider(trait: str, name: str) -> str | None:
    """The distribution known to provide *name* for *trait* (io backends may be features)."""
    return PROVIDERS.get((trait, name)) or (PROVIDERS.get(("io_feature", name)) if trait == "io_backend" else None)


def _hint(pm: PluginManager, trait: str, name: str) -> str:
    """How to get *name*: install its distribution, or let ``KSVC_PLUGINS`` load it where it is installed."""
    dist = _provider(trait, name)
    if dist and pm.is_excluded(dist):
        return f"it is provided by {dist}, which is installed but not loaded: {pm.exclusion_advice([dist])}"
    if dist:
        return f"install it with: pip install {dist}"
    excluded = pm.excluded_distributions()
    if excluded:
        return (
            f"check the spelling, or install the plugin that provides it; {pm.filter_note()} also leaves out "
            f"the installed {', '.join(excluded)}"
        )
    return "check the spelling, or install the plugin that provides it"


def _unknown(pm: PluginManager, trait: str, name: str, source: str) -> SelectionError:
    dist = _provider(trait, name)
    if dist and pm.is_excluded(dist):  # what else is available does not matter: the right plugin is right there
        return SelectionError(f"no {trait} named {name!r} (from {source}): {_hint(pm, trait, name)}")
    available = pm.names(trait)
    if trait == "io_backend":
        available += [f"+{f}" for f in pm.names("io_feature")]
    listed = ", ".join(available) if available else "none loaded"
    return SelectionError(f"no {trait} named {name!r} (from {source}); available: {listed}; {_hint(pm, trait, name)}")


def _missing_for_preset(pm: PluginManager, preset: str, need: list[str]) -> SelectionError:
    """The distributions preset *preset* needs: which to install, which ``KSVC_PLUGINS`` keeps out."""
    excluded = [d for d in need if pm.is_excluded(d)]
    absent = [d for d in need if d not in excluded]
    parts = []
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        parts.append(f"{', '.join(absent)}, which {verb} not installed (install with: pip install {' '.join(absent)})")
    if excluded:
        verb = "is" if len(excluded) == 1 else "are"
        parts.append(f"{', '.join(excluded)}, which {verb} installed but not loaded: {pm.exclusion_advice(excluded)}")
    return SelectionError(f"preset {preset!r} needs {', and '.join(parts)}")


def resolve(pm: PluginManager, preset: str | None = None, **names: str | None) -> Selection:
    """Resolve a name per trait; raise :class:`SelectionError` naming what is missing."""
    unknown_keys = set(names) - set(TRAITS)
    if unknown_keys:
        raise SelectionError(f"unknown selection keyword(s) {sorted(unknown_keys)}; use: {', '.join(TRAITS)}, preset")
    preset_name = preset or os.environ.get("KSVC_PRESET") or "default"
    if preset_name not in PRESETS:
        raise SelectionError(f"no preset named {preset_name!r}; available: {', '.join(PRESETS)}")
    base = PRESETS[preset_name]
    chosen: dict[str, str] = {}
    sources: dict[str, str] = {}
    for trait in TRAITS:
        value = names.get(trait)
        if value:
            chosen[trait], sources[trait] = value, f"{trait}= in code"
        elif os.environ.get(env_var(trait)):
            chosen[trait], sources[trait] = os.environ[env_var(trait)], f"${env_var(trait)}"
        else:
            chosen[trait], sources[trait] = base[trait], f"preset {preset_name!r}"

    missing: list[str] = []
    errors: list[SelectionError] = []
    features: tuple[str, ...] = ()
    backend = BASE_IO_BACKEND
    for trait in TRAITS:
        name = chosen[trait]
        if trait == "io_backend":
            backend, features = split_io_backend(pm, name)
            parts = [("io_backend", backend)] + [("io_feature", f) for f in features]
        else:
            parts = [(trait, name)]
        for kind, part in parts:
            if pm.get(kind, part) is None:
                dist = _provider(kind, part)
                if dist and sources[trait].startswith("preset"):
                    missing.append(dist)
                else:
                    errors.append(_unknown(pm, trait, part, sources[trait]))
    if missing:
        raise _missing_for_preset(pm, preset_name, sorted(set(missing)))
    if errors:
        raise errors[0]
    return Selection(MappingProxyType(chosen), backend, features, preset_name)


def split_io_backend(pm: PluginManager, name: str) -> tuple[str, tuple[str, ...]]:
    """``"sqpoll+fixed-files"`` -> ``("basic", ("sqpoll", "fixed-files"))``.

    The first part names a backend when one of that name is registered and
    it is not a feature; every other part is a feature.
    """
    parts = [p.strip() for p in name.split("+")]
    if any(not p for p in parts):
        raise SelectionError(f"malformed io_backend {name!r}: empty part between '+'")
    if pm.get("io_backend", parts[0]) is not None and pm.get("io_feature", parts[0]) is None:
        base, features = parts[0], parts[1:]
    elif pm.get("io_feature", parts[0]) is not None or len(parts) > 1:
        base, features = BASE_IO_BACKEND, parts
    else:
        base, features = parts[0], []
    if len(set(features)) != len(features):
        raise SelectionError(f"io_backend {name!r} names a feature twice")
    return base, tuple(features)
