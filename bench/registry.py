"""Plugin registries found through entry points: methods (`sparsebench.methods`), activation-sparsity
rules (`sparsebench.activations`) and kernel backends (`sparsebench.kernels`).

    reg = method_registry()
    reg.names()               # discovered without importing any plugin
    cls = reg.get("wanda")    # imported on first use; a base class is checked

Built-ins are declared in pyproject.toml through the same groups as third-party plugins. A plugin that
fails to import raises an error naming its distribution when it is used; the others keep working.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from bench.errors import BenchError, did_you_mean

T = TypeVar("T")


class PluginError(BenchError):
    pass


class Registry(Generic[T]):
    """One entry-point group. `base` is the class every entry must derive from, or its "module:attr" path,
    imported on first use: the registry sits below what it loads and imports none of it."""

    def __init__(self, group: str, base: type | str, what: str):
        self.group, self.what = group, what
        self._base = base
        self._entries: dict[str, EntryPoint | type] = {}
        self._loaded: dict[str, type] = {}
        self._discovered = False

    @property
    def base(self) -> type:
        if isinstance(self._base, str):
            module, _, attr = self._base.partition(":")
            self._base = getattr(importlib.import_module(module), attr)
        return self._base

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        found: dict[str, EntryPoint] = {}
        for ep in sorted(entry_points(group=self.group), key=lambda e: (e.name, e.value)):
            other = found.get(ep.name)
            if other is not None and other.value != ep.value:
                raise PluginError(
                    f"{self.what} '{ep.name}' is declared twice, by {_dist(other)} ({other.value}) and by "
                    f"{_dist(ep)} ({ep.value}); uninstall one of them"
                )
            found[ep.name] = ep
        for name, ep in found.items():
            self._entries.setdefault(name, ep)

    def register(self, name: str, obj: type) -> None:
        """Add an entry by hand (tests, notebooks); an entry point of the same name is shadowed."""
        self._discover()
        self._entries[name] = obj
        self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        """Remove an entry registered by hand (tests)."""
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def distribution(self, name: str) -> tuple[str, str]:
        """(distribution name, version) that declared `name`, or ('(registered in code)', '')."""
        entry = self._entries[name]
        if isinstance(entry, EntryPoint) and entry.dist is not None:
            return entry.dist.name, entry.dist.version
        return "(registered in code)", ""

    def get(self, name: str) -> type:
        self._discover()
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._entries:
            known = self.names()
            raise PluginError(f"unknown {self.what} '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}")
        entry = self._entries[name]
        if isinstance(entry, EntryPoint):
            try:
                obj = entry.load()
            except Exception as err:  # any import-time failure of third-party code
                raise PluginError(
                    f"{self.what} '{name}' from {_dist(entry)} failed to import ({entry.value}): "
                    f"{type(err).__name__}: {err}"
                ) from err
        else:
            obj = entry
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise PluginError(f"{self.what} '{name}' ({_describe(entry)}) is not a subclass of {self.base.__qualname__}")
        if getattr(obj, "name", name) != name:
            raise PluginError(f"{self.what} '{name}' is declared under that name but its class says name = {obj.name!r}")
        self._loaded[name] = obj
        return obj


def _dist(ep: EntryPoint) -> str:
    return f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"


def _describe(entry) -> str:
    return entry.value if isinstance(entry, EntryPoint) else repr(entry)


@functools.cache
def method_registry() -> Registry:
    return Registry("sparsebench.methods", "bench.method:Method", "method")


@functools.cache
def kernel_registry() -> Registry:
    return Registry("sparsebench.kernels", "bench.speed.backends:KernelBackend", "kernel backend")


@functools.cache
def activation_registry() -> Registry:
    return Registry("sparsebench.activations", "bench.activation:ActivationMethod", "activation rule")
