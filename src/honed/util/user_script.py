"""Importing the Python file a workflow names (``user_script``) and finding the functions it offers.

A ``user_script`` named in the user's own workflow is the user asking honed to run that code: it is
imported once per process (per file content), with ``script_dir`` on ``sys.path`` while it is imported
and while its functions run, and one log line says so.  This is the single loader of user code in
the data layer (``formatting_func`` goes through it too).

Olive users register data components with ``@Registry.register_dataset()`` and friends after
``from olive.data.registry import Registry`` (olive/data/registry.py).  When Olive is installed that
import is Olive's own and honed reads Olive's registry; when it is not, honed puts a small stand-in
``olive.data.registry`` module in ``sys.modules`` only while the script is imported or its functions
run, whose ``Registry`` records each decorated function under its (lower-cased) name, as Olive's
does, and returns it unchanged.  Anything else from Olive (``olive.data.component...``) is then an
error naming the import.  A ``type`` the script does not register is looked up as a function of that
name in the script (any case), so plain scripts without decorators work too.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from honed.errors import DataError

log = logging.getLogger("honed")

KINDS = ("load_dataset", "pre_process_data", "post_process_data", "dataloader")
"""Olive's component kinds (olive.data.constants.DataComponentType values)."""
_REGISTER = {"register_dataset": "load_dataset", "register_pre_process": "pre_process_data",
             "register_post_process": "post_process_data", "register_dataloader": "dataloader"}
_DEFAULTS = {"load_dataset": "default_load_dataset", "pre_process_data": "default_pre_process_data",
             "post_process_data": "default_post_process_data", "dataloader": "default_dataloader"}


@dataclass
class Script:
    """An imported user script and what it registered with the stand-in Registry."""

    path: Path
    module: ModuleType
    script_dir: Path | None
    registered: dict[str, dict[str, Callable[..., Any]]] = field(default_factory=dict)
    """Component kind -> lower-cased name -> function (the stand-in registry only)."""

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """script_dir on sys.path (and the stand-in olive modules) while the user's code runs."""
        with _on_path(self.script_dir), _olive_stand_in(self.registered):
            yield


_LOADED: dict[tuple[str, str, str | None], Script] = {}
_collecting: list[dict[str, dict[str, Callable[..., Any]]]] = []


def olive_installed() -> bool:
    """True when the real Olive package can be imported (then its Registry is used, never the stand-in)."""
    try:
        return importlib.util.find_spec("olive") is not None and not getattr(sys.modules.get("olive"),
                                                                             "__honed_stand_in__", False)
    except (ImportError, ValueError):
        return False


def load_script(path: str | Path, script_dir: str | Path | None = None, *, why: str = "") -> Script:
    """Import ``path`` once per process and content; DataError naming the file for what goes wrong.

    ``why`` says where the workflow names the script, for the one log line.
    """
    path = Path(path).resolve()
    try:
        source = path.read_bytes()
    except OSError as e:
        raise DataError(f"user_script {path} cannot be read: {e.strerror or e}; fix the path") from e
    digest = hashlib.sha256(source).hexdigest()
    folder = Path(script_dir).resolve() if script_dir else None
    key = (str(path), digest, str(folder) if folder else None)
    if key in _LOADED:
        return _LOADED[key]
    if path.suffix != ".py" or not path.is_file():
        raise DataError(f"user_script {path} is not a .py file; give the Python file that defines the functions")
    name = f"honed_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DataError(f"user_script {path} cannot be imported; it must be a .py file")
    module = importlib.util.module_from_spec(spec)
    script = Script(path, module, folder)
    log.info("running user_script %s%s: honed imports it and calls the functions the workflow names",
             path, f" ({why})" if why else "")
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        with script.running():
            spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        sys.modules.pop(name, None)
        raise _import_error(path, e) from e
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise DataError(f"user_script {path}, line {e.lineno}: syntax error ({e.msg}); fix the script") from e
    except Exception as e:  # the user's own code: whatever it raises while importing is theirs to fix
        sys.modules.pop(name, None)
        raise DataError(f"user_script {path} raised {type(e).__name__} while being imported: {_short(e)}; fix the "
                        "script (rerun with --log-level debug for the traceback)") from e
    _LOADED[key] = script
    return script


def _import_error(path: Path, e: ModuleNotFoundError) -> DataError:
    missing = e.name or str(e)
    if missing.split(".")[0] == "olive":
        return DataError(f"user_script {path} imports {missing}, which needs Olive (pip install olive-ai); without "
                         "it honed provides only `from olive.data.registry import Registry`")
    return DataError(f"user_script {path} imports {missing}, which is not installed or not on the path; install it "
                     "or set script_dir to the folder that holds it")


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def find_function(script: Script, kind: str, name: str, key: str) -> Callable[..., Any]:
    """The function ``name`` registered for ``kind`` (Olive's registry, or honed's stand-in), else the
    script's function of that name in any case; DataError naming ``key`` and what the script offers."""
    low = name.lower()
    func = script.registered.get(kind, {}).get(low)
    if func is None and olive_installed() and "olive.data.registry" in sys.modules:
        registry = sys.modules["olive.data.registry"].Registry
        with contextlib.suppress(KeyError, AttributeError):
            func = registry.get_component(kind, low)
    if func is None:
        found = [v for k, v in vars(script.module).items() if k.lower() == low and callable(v)]
        func = found[0] if len(found) == 1 else None
    if func is None or not callable(func):
        offered = sorted({*script.registered.get(kind, {}),
                          *(k for k, v in vars(script.module).items()
                            if inspect.isfunction(v) and v.__module__ == script.module.__name__)})
        raise DataError(f"{key} '{name}': {script.path} neither registers nor defines it; it offers "
                        f"{', '.join(offered) or 'no functions'}; fix {key}")
    return func


def user_function(path: str | Path, name: str, key: str, script_dir: str | Path | None = None) -> Callable[..., Any]:
    """Function ``name`` of the user script at ``path`` (imported once); DataError naming ``key``."""
    script = load_script(path, script_dir, why=key)
    func = getattr(script.module, name, None)
    if not callable(func):
        raise DataError(f"user_script {script.path} defines no function '{name}'; fix {key}")
    return func


def call(script: Script, func: Callable[..., Any], key: str, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` with script_dir on the path; DataError for arguments its signature refuses
    (naming ``key``) and for whatever the user's code raises."""
    label = f"{key} '{getattr(func, '__name__', func)}' ({script.path.name})"
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as e:
        raise DataError(f"{label} cannot be called with {sorted(kwargs)}: {e}; fix the arguments in the config "
                        "(params) or the function's signature") from e
    except ValueError:  # no signature to check (a builtin or C function): let the call tell
        pass
    try:
        with script.running():
            return func(*args, **kwargs)
    except DataError:
        raise
    except Exception as e:  # the user's own code: whatever it raises is theirs to fix
        raise DataError(f"{label} raised {type(e).__name__}: {_short(e)} (rerun with --log-level debug for the "
                        "traceback)") from e


def accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes a keyword argument ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any((p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind == p.VAR_KEYWORD
               for p in params)


@contextlib.contextmanager
def _on_path(folder: Path | None) -> Iterator[None]:
    if folder is None or str(folder) in sys.path:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


class _Registry:
    """Stand-in for olive.data.registry.Registry: records decorated functions, returns them unchanged."""

    @classmethod
    def register(cls, sub_type: Any, name: str | None = None) -> Callable[[Any], Any]:
        kind = str(getattr(sub_type, "value", sub_type))

        def decorator(component: Any) -> Any:
            if _collecting:
                _collecting[-1].setdefault(kind, {})[(name or component.__name__).lower()] = component
            return component

        return decorator


def _add_register_methods() -> None:
    for method, kind in _REGISTER.items():
        setattr(_Registry, method, classmethod(lambda cls, name=None, _k=kind: cls.register(_k, name)))
        default = method.replace("register_", "register_default_")
        setattr(_Registry, default, classmethod(lambda cls, _k=kind: cls.register(_k, _DEFAULTS[_k])))


_add_register_methods()


@contextlib.contextmanager
def _olive_stand_in(registered: dict[str, dict[str, Callable[..., Any]]]) -> Iterator[None]:
    """``olive``, ``olive.data`` and ``olive.data.registry`` in sys.modules for the duration, when Olive is
    not installed; removed afterwards so nothing else ever sees them."""
    if olive_installed():
        yield
        return
    names = ("olive", "olive.data", "olive.data.registry")
    before = {n: sys.modules.get(n) for n in names}
    top, data, reg = ModuleType("olive"), ModuleType("olive.data"), ModuleType("olive.data.registry")
    top.__path__, data.__path__ = [], []  # packages, so submodule imports reach sys.modules
    top.__honed_stand_in__ = True  # type: ignore[attr-defined]
    top.data, data.registry, reg.Registry = data, reg, _Registry  # type: ignore[attr-defined]
    sys.modules.update(dict(zip(names, (top, data, reg), strict=True)))
    _collecting.append(registered)
    try:
        yield
    finally:
        _collecting.pop()
        for n, m in before.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
