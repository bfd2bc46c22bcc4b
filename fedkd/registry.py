"""A named registry (DomainBed style): a method is valid in the config exactly when it is registered here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry(dict):
    """Maps names to builders; ``@REGISTRY.register("name")`` adds one."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Any], Any]:
        def wrap(builder: Any) -> Any:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = builder
            return builder

        return wrap

    def __missing__(self, name: str) -> Any:
        raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
