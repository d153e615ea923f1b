"""Finding plugins and the implementations they contribute.

Plugins are modules registered under the entry-point group ``ksvc``. Each
is loaded on its own: one that fails to import, or raises while
registering, is reported by name and the others keep working. The
environment variable ``KSVC_PLUGINS`` limits loading to a comma-separated
list of entry-point or distribution names (empty: load none); the plugins
it leaves out are remembered (:attr:`PluginManager.excluded`), as are the
names in it that match nothing installed (:attr:`PluginManager.unmatched`),
so that a name they would have provided is reported as "installed but not
loaded" rather than "not installed" (docs/design.md §9).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from ksvc_host import hookspecs
from ksvc_host.errors import PluginError

ENTRY_POINT_GROUP = "ksvc"
ENV_PLUGINS = "KSVC_PLUGINS"

#: hook name per trait; "io_feature" is the io_uring feature registry behind ``io_backend="a+b"``.
REGISTER_HOOKS: dict[str, str] = {
    "router": "ksvc_register_router",
    "io_backend": "ksvc_register_io_backend",
    "io_feature": "ksvc_register_io_feature",
    "worker_pool": "ksvc_register_worker_pool",
    "notifier": "ksvc_register_notifier",
    "completion_sink": "ksvc_register_completion_sink",
    "buffer_provider": "ksvc_register_buffer_provider",
    "shared_page": "ksvc_register_shared_page",
}

Factory = Callable[[Any], Any]


@dataclass(frozen=True)
class Implementation:
    """One named implementation of a trait, and where it comes from."""

    trait: str
    name: str
    factory: Factory
    description: str
    plugin: str
    distribution: str
    version: str


@dataclass
class PluginInfo:
    """A loaded (or failed) plugin as ``ksvc plugins`` shows it."""

    name: str
    distribution: str
    version: str
    module: str
    implementations: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "implementations": self.implementations,
            "error": self.error,
        }


class PluginManager:
    """Loads plugins and indexes their implementations per trait.

    *extra_plugins* are modules or objects registered directly, in addition
    to (or, with ``load_entry_points=False``, instead of) installed ones.
    """

    def __init__(self, *, load_entry_points: bool = True, extra_plugins: Iterable[tuple[str, Any]] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.implementations: dict[str, dict[str, Implementation]] = {t: {} for t in REGISTER_HOOKS}
        self.conflicts: dict[tuple[str, str], list[Implementation]] = {}
        self.filter: str | None = None
        """The value of ``KSVC_PLUGINS`` when entry points were loaded (``None``: unset, load all)."""
        self.excluded: dict[str, PluginInfo] = {}
        """Installed plugins that ``KSVC_PLUGINS`` left out, by entry-point name (not imported)."""
        self.unmatched: tuple[str, ...] = ()
        """Names in ``KSVC_PLUGINS`` that match no installed plugin's entry point or distribution."""
        if load_entry_points:
            self._load_entry_points()
        for name, plugin in extra_plugins:
            module = getattr(plugin, "__name__", repr(plugin))
            self._register(plugin, PluginInfo(name, "(registered in code)", "", module))
        self._collect()

    # Loading ----------------------------------------------------------------

    def _load_entry_points(self) -> None:
        self.filter = os.environ.get(ENV_PLUGINS)
        wanted = _wanted_plugins()
        matched: set[str] = set()
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "(unknown)"
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in seen:  # the same entry point seen through two paths
                continue
            seen.add(ep.name)
            info = PluginInfo(ep.name, dist, version, ep.value)
            if wanted is not None:
                hits = {w for w in wanted if w == ep.name or _normalize(w) == _normalize(dist)}
                if not hits:
                    self.excluded[ep.name] = info
                    continue
                matched |= hits
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                info.error = f"failed to import {ep.value}: {type(exc).__name__}: {exc}"
                self.plugins[ep.name] = info
                continue
            self._register(plugin, info)
        if wanted is not None:
            self.unmatched = tuple(sorted(wanted - matched))

    def _register(self, plugin: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            info.error = f"failed to register: {type(exc).__name__}: {exc}"
        self.plugins[info.name] = info

    def _collect(self) -> None:
        for trait, hook_name in REGISTER_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                info = self.plugins.get(impl.plugin_name)
                if info is None or info.error:
                    continue
                try:
                    impl.function(register=self._registrar(trait, info))
                except Exception as exc:
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"

    def _registrar(self, trait: str, info: PluginInfo) -> Callable[..., None]:
        def register(name: str, factory: Factory, *, description: str = "") -> None:
            if not isinstance(name, str) or not name or "+" in name:
                raise PluginError(f"plugin {info.name!r} registered an invalid {trait} name {name!r}")
            if not callable(factory):
                raise PluginError(f"plugin {info.name!r}: factory for {trait} {name!r} is not callable")
            impl = Implementation(trait, name, factory, description, info.name, info.distribution, info.version)
            existing = self.implementations[trait].get(name)
            if existing is not None and existing.distribution != impl.distribution:
                self.conflicts.setdefault((trait, name), [existing]).append(impl)
            self.implementations[trait].setdefault(name, impl)
            info.implementations.setdefault(trait, []).append(name)

        return register

    # Queries ----------------------------------------------------------------

    def get(self, trait: str, name: str) -> Implementation | None:
        """The implementation *name* of *trait*; raises on a name two distributions claim."""
        claims = self.conflicts.get((trait, name))
        if claims:
            who = " and ".join(f"{c.distribution} (plugin {c.plugin})" for c in claims)
            raise PluginError(
                f"{trait} {name!r} is claimed by {who}; uninstall one of them or limit loading with {ENV_PLUGINS}"
            )
        return self.implementations[trait].get(name)

    def names(self, trait: str) -> list[str]:
        """Sorted implementation names of *trait*."""
        return sorted(self.implementations[trait])

    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to import, register or contribute."""
        return [p for p in self.plugins.values() if p.error]

    def excluded_distributions(self) -> list[str]:
        """Sorted distributions whose plugins are installed but left out by ``KSVC_PLUGINS``."""
        loaded = {p.distribution for p in self.plugins.values()}
        return sorted({p.distribution for p in self.excluded.values()} - loaded)

    def is_excluded(self, distribution: str) -> bool:
        """True when *distribution* is installed but ``KSVC_PLUGINS`` kept it from loading."""
        return _normalize(distribution) in {_normalize(d) for d in self.excluded_distributions()}

    def filter_note(self) -> str:
        """``KSVC_PLUGINS=...`` as set (quoted when empty)."""
        return f"{ENV_PLUGINS}={self.filter or chr(39) * 2}"

    def unmatched_note(self) -> str:
        """`` (bogus is not an installed KSVC plugin)`` when ``KSVC_PLUGINS`` names such; else ``""``."""
        if not self.unmatched:
            return ""
        if len(self.unmatched) == 1:
            return f" ({self.unmatched[0]} is not an installed KSVC plugin)"
        return f" ({', '.join(self.unmatched)} are not installed KSVC plugins)"

    def exclusion_advice(self, distributions: list[str]) -> str:
        """Why *distributions* (installed) are not loaded and what to do, as the end of a sentence."""
        them = "it" if len(distributions) == 1 else "them"
        return (
            f"{self.filter_note()} excludes {them}{self.unmatched_note()}; add {','.join(distributions)} "
            f"to {ENV_PLUGINS} or unset the variable"
        )

    def observers_for(self, hook_name: str) -> bool:
        """True when any plugin implements observer hook *hook_name*."""
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``KSVC_Basic`` and ``ksvc-basic`` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted_plugins() -> set[str] | None:
    raw = os.environ.get(ENV_PLUGINS)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


_default_manager: PluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager(*, reload: bool = False) -> PluginManager:
    """The process-wide manager over installed plugins (loaded once)."""
    global _default_manager
    with _lock:
        if _default_manager is None or reload:
            _default_manager = PluginManager()
        return _default_manager


def plugin_from_module(module: ModuleType) -> tuple[str, ModuleType]:
    """``(name, module)`` pair for :class:`PluginManager`'s *extra_plugins*."""
    return module.__name__, module
