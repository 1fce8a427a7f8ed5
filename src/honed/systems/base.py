"""The system contract and the one system registry.

A system is where passes run.  It is one file under ``honed/systems/``: a pydantic config model whose
``type`` names it, and a ``System`` subclass registered with ``register_system``.  The engine knows
systems only through this contract:

* ``identity``: enters every pass cache key (outputs made by another interpreter are other outputs);
* ``environment(distributions)``: library versions as seen by the interpreter that will run the step
  (the cache keys use these, not the host's);
* ``run_pass(request)``: run one ``PassRequest`` (serializable: the JSON a PythonEnvironment worker or a
  Ray task receives) and answer a ``PassResponse``;
* ``trial_executor(max_workers)``: a ``concurrent.futures.Executor`` running search trials at once
  (local processes, or Ray tasks).

Adding a system touches no engine code: write the file and register it (``all_systems`` imports every module
of ``honed/systems/``).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import importlib
import importlib.util
import multiprocessing
import os
import pkgutil
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from honed.data.config import DataConfig
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator


class SystemConfig(BaseModel):
    """Fields every system has. Subclasses narrow ``type`` to a ``Literal`` of their name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str = Field("LocalSystem", description="The system type (see `honed systems`).")
    accelerators: list[Accelerator] = Field(
        default_factory=lambda: [Accelerator()], description="Devices and their execution providers."
    )

    @model_validator(mode="before")
    @classmethod
    def _key_of_another_system(cls, data: Any) -> Any:
        """A key another system type reads (``managed_env`` on a LocalSystem) names that type, not 'unknown'."""
        if not isinstance(data, dict):
            return data
        by_owner: dict[str, list[str]] = {}
        for key in data:
            owners = [n for n, s in _REGISTRY.items() if key in s.config_class.model_fields and s.config_class is not cls]
            if key not in cls.model_fields and owners:
                by_owner.setdefault(" or ".join(owners), []).append(key)
        errors = []
        for owner, keys in by_owner.items():  # one line per system type, at its first key
            them = "it" if len(keys) == 1 else f"{', '.join(keys)}"
            msg = f"only a {owner} system reads {them}; set type: {owner.split(' or ')[0]} or remove {them}"
            errors.append(InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=(keys[0],),
                                           input=data[keys[0]]))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    @field_validator("accelerators")
    @classmethod
    def _at_least_one(cls, v: list[Accelerator]) -> list[Accelerator]:
        if not v:
            raise ValueError("needs at least one accelerator, e.g. [{'device': 'cpu'}]")
        return v


ATTEMPT_PREFIX = "attempt-"
"""A worker writes ``<work_dir>/attempt-<n>`` when it starts a pass: a retried pass (its worker died)
knows its attempt number, and the footprints show it."""


@dataclass
class PassRequest:
    """One pass to run, as JSON-able data: the pass type, its config, the input model, the output folder
    and the context.  ``progress`` (a live progress-bar callback) never leaves this process."""

    pass_type: str
    config: dict[str, Any]
    model: dict[str, Any]
    output_dir: str
    pass_name: str
    host: dict[str, Any]
    target: dict[str, Any]
    data_configs: dict[str, dict[str, Any]]
    work_dir: str
    cache_dir: str
    key: str = ""
    """The pass's cache key (its output's entry name)."""
    shared_cache: str | None = None
    """``engine.shared_cache``: a node that cannot see ``cache_dir`` gets inputs from it and commits there."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What the entry's meta.json starts from (pass, type, config, input id), for a commit on a node."""
    launcher: str = "local"
    """``PassContext.launcher``: ``ray`` when the pass runs on a Ray node that sees the shared cache folder."""
    progress: Any = field(default=None, compare=False)
    runner: Any = field(default=None, compare=False)
    """A remote system runs ``runner(request)`` on the node instead of ``request.execute()`` (the engine's
    node-side commit, handed down so this layer needs nothing from above it); never serialized."""

    @classmethod
    def build(cls, pass_type: str, model: ModelHandle, config: BaseModel, output_dir: Path,
              ctx: PassContext) -> PassRequest:
        return cls(
            pass_type=pass_type, config=config.model_dump(mode="json"), model=model.model_dump(mode="json"),
            output_dir=str(output_dir), pass_name=ctx.pass_name, host=ctx.host.model_dump(),
            target=ctx.target.model_dump(),
            data_configs={k: v.model_dump(mode="json") for k, v in ctx.data_configs.items()},
            work_dir=str(ctx.work_dir), cache_dir=str(ctx.cache_dir), progress=ctx.progress,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("progress", "runner")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PassRequest:
        return cls(**data)

    def execute(self) -> PassResponse:
        """Run the pass in this process.

        Raises LookupError when the pass type is not registered in this interpreter, and whatever the pass
        raises.  A rerun (the previous worker died mid-pass) starts from an empty output folder.
        """
        cls = get_pass(self.pass_type)
        if cls is None:
            raise LookupError(f"pass '{self.pass_type}' is not registered in {sys.executable}")
        work = Path(self.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        attempt = 1 + sum(1 for p in work.glob(ATTEMPT_PREFIX + "*"))
        (work / f"{ATTEMPT_PREFIX}{attempt}").write_text(f"{socket.gethostname()} {os.getpid()}\n")
        out = Path(self.output_dir)
        if out.is_dir() and any(out.iterdir()):  # left by a worker that died
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        ctx = PassContext(
            pass_name=self.pass_name, host=Accelerator(**self.host), target=Accelerator(**self.target),
            data_configs={k: DataConfig.model_validate(v) for k, v in self.data_configs.items()},
            work_dir=work, cache_dir=Path(self.cache_dir), progress=self.progress, launcher=self.launcher,
        )
        config = cls.config_class.model_validate(self.config)
        handle = cls().run(ModelHandle.model_validate(self.model), config, out, ctx)
        return PassResponse(handle=handle.model_dump(mode="json"), metrics=ctx.metrics, python=sys.executable,
                            node=socket.gethostname(), pid=os.getpid(), attempt=attempt)


@dataclass
class PassResponse:
    """What a system answers for a ``PassRequest``: the output handle and where and how it ran."""

    handle: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    python: str = ""
    node: str = ""
    pid: int = 0
    attempt: int = 1
    committed: bool = False
    """True when the node committed the output to the shared cache itself (the driver then downloads it)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PassResponse:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class WorkerDied(concurrent.futures.process.BrokenProcessPool):
    """The worker running a trial died (killed, out of memory, node lost): the trial may be retried."""


class System:
    """Base class of a system. Subclasses set the class variables and implement ``run_pass``."""

    name: ClassVar[str]
    """The ``type`` users write under ``systems`` (``LocalSystem``, ``Ray``)."""
    description: ClassVar[str]
    """One line for ``honed systems`` and the docs."""
    config_class: ClassVar[type[SystemConfig]]
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable module names of optional dependencies (``ray``)."""
    install: ClassVar[str] = ""
    """How to install ``requires`` (``pip install 'honed[ray]'``)."""

    identity: str = ""

    def __init__(self, config: SystemConfig, accelerator: Accelerator, *, cache_root: Path,
                 config_dir: Path | None = None, label: str = "systems", dry_run: bool = False) -> None:
        self.config = config
        self.accelerator = accelerator
        self.cache_root = cache_root
        self.config_dir = config_dir
        self.label = label
        self.dry_run = dry_run

    def environment(self, distributions: tuple[str, ...]) -> dict[str, str]:
        """Python's and the distributions' versions in the interpreter that runs the passes."""
        raise NotImplementedError

    def run_pass(self, request: PassRequest) -> PassResponse:
        """Run one pass where this system runs passes. Raises what the pass raises (UserError stays one)."""
        raise NotImplementedError

    def trial_executor(self, max_workers: int) -> concurrent.futures.Executor:
        """An executor for search trials: here, one spawned process per trial (torch and the GIL rule out
        threads; fork would copy torch's thread pools)."""
        return concurrent.futures.ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("spawn"))

    def close(self) -> None:
        """Release what the system holds (a Ray connection). The engine calls it when the run ends."""

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return [mod for mod in cls.requires if importlib.util.find_spec(mod) is None]


_REGISTRY: dict[str, type[System]] = {}


def register_system(cls: type[System]) -> type[System]:
    """Add a system class to the registry. A name may be registered once."""
    for attr in ("name", "description", "config_class"):
        if not hasattr(cls, attr):
            raise TypeError(f"system class {cls.__qualname__} must define '{attr}'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a system named '{cls.name}' is already registered by {_REGISTRY[cls.name].__module__}")
    _REGISTRY[cls.name] = cls
    return cls


_LOADED = False


def all_systems() -> dict[str, type[System]]:
    """Every registered system, by type name: each module of ``honed.systems`` registers its own on import."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import honed.systems as pkg

        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name not in ("base", "worker"):
                importlib.import_module(f"honed.systems.{info.name}")
    return dict(_REGISTRY)


def get_system(name: str) -> type[System] | None:
    return all_systems().get(name)
