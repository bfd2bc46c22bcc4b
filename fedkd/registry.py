"""A named registry (DomainBed style): a method is valid in the config exactly when it is registered here, and
it brings its own parameter dataclass, so that the config schema never names a method.

A registry that backs a config section (``aggregator``, ``teacher``, ...) knows the section, the key that picks
the component (``name`` or ``objective``) and the base parameter class; ``register(name, params=...)`` adds a
builder together with the frozen dataclass of its parameters (a subclass of the base). The generic validator in
``fedkd.validation`` walks these registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedkd.field_types import UnsupportedType, field_types


class Registry(dict):
    """Maps names to builders; ``@REGISTRY.register("name", params=Params)`` adds one."""

    def __init__(self, kind: str, section: str | None = None, key: str = "name", params: type | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.section = section
        self.key = key
        self.base_params = params
        self.param_classes: dict[str, type] = {}
        self.trait_sets: dict[str, dict[str, Any]] = {}

    def register(self, name: str, params: type | None = None, **traits: Any) -> Callable[[Any], Any]:
        """Add a builder under ``name``, with the dataclass of its parameters (a config section's component) and
        any traits other components may ask about (``MODELS.register("resnet18", batch_norm=True)``). Parameters
        of a type the validator cannot check are refused here, at import, rather than met by a user."""
        if params is not None and self.base_params is not None and not issubclass(params, self.base_params):
            raise TypeError(f"{self.kind} {name!r}: its parameters {params.__name__} must extend "
                            f"{self.base_params.__name__}")
        if params is not None:
            try:
                field_types(params)
            except UnsupportedType as err:
                raise UnsupportedType(f"{self.kind} {name!r}: {err}") from None

        def wrap(builder: Any) -> Any:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = builder
            self.trait_sets[name] = dict(traits)
            if self.base_params is not None:
                self.param_classes[name] = params or self.base_params
            return builder

        return wrap

    def params(self, name: str) -> type:
        """The parameter dataclass of the component registered as ``name``."""
        self[name]  # noqa: B018 - the unknown-name error
        return self.param_classes[name]

    def config(self, name: str, **values: Any) -> Any:
        """The parameters of ``name`` with ``values`` set (the others at their defaults), e.g. in tests."""
        return self.params(name)(**{self.key: name, **values})

    def traits(self, name: str) -> dict[str, Any]:
        """What ``name`` was registered with besides its builder (empty when nothing)."""
        self[name]  # noqa: B018 - the unknown-name error
        return self.trait_sets[name]

    def __missing__(self, name: str) -> Any:
        raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
