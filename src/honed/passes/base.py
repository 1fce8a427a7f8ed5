"""The pass contract and the one pass registry.

A pass is a class with a pydantic config model and ``run(model, config, output_dir, ctx)``.
Each built-in pass registers itself at the bottom of its own module with ``register_pass``;
third-party passes register through the ``honed.passes`` entry point group.  The registry
refuses a second pass under a name already taken.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from honed.util.context import PassContext

if TYPE_CHECKING:
    from honed.models.handle import ModelHandle


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are errors, never silently dropped; NaN and infinity are
    never numbers.  Declare booleans ``StrictBool`` so the string "false" is an error, not true."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    def uses_first_data_config(self) -> bool:
        """True when the pass reads the workflow's first data config without a field naming it (a default);
        the cache key then hashes that data config too, as it does every data config a field names."""
        return False


class Pass:
    """Base class of a pass. Subclasses set the class variables and implement ``run``."""

    name: ClassVar[str]
    """The ``type`` users write in a workflow (``LoRA``, ``ModelBuilder``)."""
    description: ClassVar[str]
    """One line for ``honed passes`` and the docs."""
    config_class: ClassVar[type[PassConfig]]
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable module names of optional dependencies (``bitsandbytes``)."""
    libraries: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions enter the cache key (``torch``, ``peft``)."""
    accepts: ClassVar[tuple[str, ...]] = ("hf",)
    """Model kinds (``ModelHandle.kind``) this pass takes as input."""
    produces: ClassVar[tuple[str, ...]] = ()
    """Model kinds this pass can output; empty: not declared (the preflight then checks no later pass's
    input kind)."""
    search_space: ClassVar[dict[str, list[Any]]] = {}
    """Values a search tries for a parameter set to ``SEARCHABLE_VALUES`` (see honed.config.space)."""

    def run(self, model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext) -> ModelHandle:
        """Write the output model under ``output_dir`` and return its handle."""
        raise NotImplementedError

    @classmethod
    def accepted_kinds(cls, config: Any) -> tuple[str, ...]:
        """The model kinds this pass takes with ``config`` (``accepts`` unless an option narrows it, e.g.
        ModelBuilder's metadata_only takes an ONNX model, its build a Hugging Face one)."""
        return cls.accepts

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """Optional dependencies that are not importable here."""
        return [mod for mod in cls.requires if importlib.util.find_spec(mod) is None]


_REGISTRY: dict[str, type[Pass]] = {}
_LOADED = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Add a pass class to the registry. A name may be registered once."""
    for attr in ("name", "description", "config_class"):
        if not hasattr(cls, attr):
            raise TypeError(f"pass class {cls.__qualname__} must define '{attr}'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"a pass named '{cls.name}' is already registered by {_REGISTRY[cls.name].__module__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    """Import every built-in pass module, then the entry-point plugins, once."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import honed.passes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"honed.passes.{info.name}")
    for ep in importlib.metadata.entry_points(group="honed.passes"):
        register_pass(ep.load())


def get_pass(name: str) -> type[Pass] | None:
    """The pass registered under ``name``, or None."""
    _load_all()
    return _REGISTRY.get(name)


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))
