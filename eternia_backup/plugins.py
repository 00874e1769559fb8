"""The plugin manager: built-ins, entry points, blocking, and the registries.

Built-in providers are plain modules listed in :data:`BUILTIN_PLUGINS` and are
registered through the same call as third-party plugins, which come from entry
points of the group ``eternia_backup``. ``ETERNIA_BACKUP_DISABLE_PLUGINS`` (a
comma-separated list of plugin names) blocks plugins, built-in or not.

An installed plugin that fails to import is logged (with how to block it) and
left out; everything else keeps working, and a config that uses one of its
providers is told why that provider is unknown. ``eternia-backup plugins``
lists it with its error.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
from typing import Any

import pluggy

from . import __version__, hookspecs
from .errors import ConfigError, PluginError
from .providers import Archiver, Compression, Source, Target

log = logging.getLogger("eternia_backup.plugins")

PROJECT = "eternia_backup"
ENTRY_POINT_GROUP = "eternia_backup"
DISABLE_ENV = "ETERNIA_BACKUP_DISABLE_PLUGINS"

BUILTIN_PLUGINS = (
    "eternia_backup.builtin.directory",
    "eternia_backup.builtin.sqlite",
    "eternia_backup.builtin.command",
    "eternia_backup.builtin.tar",
    "eternia_backup.builtin.compressions",
    "eternia_backup.builtin.local_target",
    "eternia_backup.builtin.fsspec_target",
    "eternia_backup.builtin.s3_target",
)


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """An installed plugin that could not be loaded."""

    name: str  # the entry point's name: what blocking uses
    value: str  # module[:object]
    distribution: str
    version: str
    error: str

    def describe(self) -> str:
        return (f"plugin {self.name!r} ({self.value}, from {self.distribution} {self.version}) failed to load: "
                f"{self.error}; fix or uninstall it, or block it with {DISABLE_ENV}={self.name}")


@dataclasses.dataclass(frozen=True)
class Provided:
    """One provider and the plugin that registered it."""

    kind: str
    name: str
    cls: type
    plugin: str


class Registry:
    """Providers of every kind, by name, with who registered them."""

    def __init__(self, failures: list[PluginFailure] | tuple[PluginFailure, ...] = ()) -> None:
        self._by_kind: dict[str, dict[str, Provided]] = {
            "source": {}, "archiver": {}, "compression": {}, "target": {}
        }
        self.failures = tuple(failures)

    def add(self, kind: str, name: str, cls: type, plugin: str) -> None:
        table = self._by_kind[kind]
        if name in table:
            raise PluginError(
                f"plugin {plugin!r} registers the {kind} {name!r}, which plugin "
                f"{table[name].plugin!r} already registered; block one of them with "
                f"{DISABLE_ENV}={plugin}"
            )
        table[name] = Provided(kind, name, cls, plugin)

    def all(self) -> list[Provided]:
        return [p for table in self._by_kind.values() for p in table.values()]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> type:
        try:
            return self._by_kind[kind][name].cls
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            broken = "".join(f"; {f.describe()}" for f in self.failures)
            raise ConfigError(
                f"unknown {kind} {name!r}; known: {known} (see `eternia-backup plugins`){broken}"
            ) from None

    def source(self, type_name: str) -> type[Source]:
        return self.get("source", type_name)

    def archiver(self, name: str) -> type[Archiver]:
        return self.get("archiver", name)

    def compression(self, name: str) -> type[Compression]:
        return self.get("compression", name)

    def target_for(self, protocol: str) -> type[Target]:
        table = self._by_kind["target"]
        provided = table.get(protocol) or table.get("*")
        if provided is None:
            raise ConfigError(f"no storage target handles {protocol!r} URLs")
        return provided.cls


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus what loading found: where each plugin came from, and what failed."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.failures: list[PluginFailure] = []  # for `plugins` and unknown-provider errors
        self.distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)


def distribution_of(pm: pluggy.PluginManager, plugin: str) -> tuple[str, str]:
    """(distribution name, version) a plugin came from; ("?", "?") for one added by code."""
    return getattr(pm, "distributions", {}).get(plugin, ("?", "?"))


def blocked_plugins() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def get_plugin_manager(*, load_entry_points: bool = True, extra_plugins: tuple[Any, ...] = ()) -> pluggy.PluginManager:
    """Build a plugin manager: specs, built-ins, entry points, extra plugins.

    Raises :class:`PluginError` when a plugin fails to import or implements a
    hook that matches no specification.
    """
    pm = PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked_plugins():
        pm.set_blocked(name)
    for modname in BUILTIN_PLUGINS:
        if pm.is_blocked(modname):
            continue
        _register(pm, importlib.import_module(modname), modname)
        pm.distributions[modname] = ("eternia-backup", __version__)
    if load_entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        _register(pm, plugin, getattr(plugin, "__name__", None))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; check the hook's spelling against eternia_backup.hookspecs") from exc
    return pm


def _register(pm: pluggy.PluginManager, plugin: Any, name: str | None) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
    except ValueError as exc:  # already registered
        raise PluginError(f"plugin {name!r} could not be registered: {exc}") from exc


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        dist = (ep.dist.name, ep.dist.version) if ep.dist is not None else ("?", "?")
        try:
            plugin = ep.load()
        except Exception as exc:  # ImportError, or anything its import runs into
            failure = PluginFailure(ep.name, ep.value, dist[0], dist[1], f"{type(exc).__name__}: {exc}")
            pm.failures.append(failure)
            log.warning("%s", failure.describe())
            continue
        log.debug("plugin %r loaded from entry point %s (%s %s)", ep.name, ep.value, *dist)
        _register(pm, plugin, ep.name)
        pm.distributions[ep.name] = dist


def call_lifecycle(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> None:
    """Call the lifecycle hook named ``hook`` so that no implementation can change the outcome.

    Each plugin's implementation is called through pluggy on its own (a subset
    hook caller holding only that plugin), in pluggy's order: one that raises is
    logged with its plugin's name and the traceback, and the others still run.
    """
    everyone = pm.get_plugins()
    implementers = [impl.plugin for impl in reversed(getattr(pm.hook, hook).get_hookimpls())]
    for plugin in dict.fromkeys(implementers):  # a plugin with a wrapper and an impl is called once
        others = [p for p in everyone if p is not plugin]
        try:
            pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
        except Exception:
            log.exception("plugin %r: %s hook failed; carrying on", pm.get_name(plugin), hook)


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Ask every plugin for its providers, in registration order."""
    registry = Registry(getattr(pm, "failures", ()))
    hooks = (
        ("source", pm.hook.eternia_register_sources, "type_name", Source),
        ("archiver", pm.hook.eternia_register_archivers, "format_name", Archiver),
        ("compression", pm.hook.eternia_register_compressions, "name", Compression),
        ("target", pm.hook.eternia_register_targets, "protocols", Target),
    )
    for kind, hook, attr, base in hooks:
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(cls, _kind=kind, _attr=attr, _plugin=plugin_name, _base=base):
                if not (isinstance(cls, type) and issubclass(cls, _base)):
                    raise PluginError(f"plugin {_plugin!r} registered {cls!r} as a {_kind}; it must be a class "
                                      f"subclassing eternia_backup.api.{_base.__name__}")
                if inspect.isabstract(cls):
                    missing = ", ".join(sorted(cls.__abstractmethods__))
                    raise PluginError(f"plugin {_plugin!r} registered the {_kind} {cls.__qualname__}, which does "
                                      f"not implement {missing} (required by eternia_backup.api.{_base.__name__})")
                names = getattr(cls, _attr, None)
                if not names:
                    raise PluginError(f"plugin {_plugin!r} registered {cls!r} without a {_attr}")
                for n in (names if isinstance(names, tuple) else (names,)):
                    registry.add(_kind, n, cls, _plugin)

            impl.function(register=register)
    return registry


def cloud_backup_target(settings: dict[str, Any], environment: str) -> tuple[str, dict[str, Any]] | None:
    """Ask the plugins for the ``cloud`` target of a ``cloud_backup:`` section (see the hook's spec)."""
    pm = get_plugin_manager()
    return pm.hook.eternia_cloud_backup_target(settings=settings, environment=environment)
