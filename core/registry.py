"""One small registry: ``@REG.register(name)``, ``REG.get(name)``, ``REG.names()``.

It feeds the CLI, the dashboard and the registry-driven tests, so nobody keeps a
hand-written list of variants beside it.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import FusionLensError

T = TypeVar("T")


class RegistryError(FusionLensError, KeyError):
    """Unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a plain sentence
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistryError(f"{self.kind} '{name}' is registered twice.")
            self._items[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except AttributeError:
                pass
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"Unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}."
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
