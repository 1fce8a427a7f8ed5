"""No network unless the workflow names a remote resource (a hub id, an http/s3 URL).

``datasets``, ``transformers`` and ``huggingface_hub`` may reach the network even for a local
folder or file: download counters, telemetry, hub lookups.  honed

* turns telemetry off for the whole process at import (``disable_telemetry``),
* keeps the ``kernels`` package from downloading and running hub kernels (``block_hub_kernels``),
* loads every local file or folder inside ``local_only()``, which switches the hub libraries to
  offline mode for the duration of the load (both their environment variables and the constants
  already imported modules read from them at import time),
* checks that the hub answers within a few seconds before it downloads something that is not in
  the local cache (``hub_reachable``), so a machine without network fails at once instead of
  waiting for timeouts and retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

# Set at honed import, overriding the environment: honed sends no telemetry.
TELEMETRY_OFF = {
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub / transformers usage pings
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets' HEAD request per load_dataset call
}
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
REACH_TIMEOUT_S = 3.0


def _true(value: str | None) -> bool:
    return (value or "").upper() in _TRUE


def disable_telemetry() -> None:
    """Telemetry off, also in hub libraries imported before honed (they read the environment once)."""
    os.environ.update(TELEMETRY_OFF)
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_DISABLE_TELEMETRY = True
    ds = sys.modules.get("datasets.config")
    if ds is not None:
        ds.HF_UPDATE_DOWNLOAD_COUNTS = False


class _NoHubKernels:
    """Import hook for the ``kernels`` package: its hub loaders are replaced by one that refuses.

    Why: bitsandbytes (>= 0.50), imported by peft, calls ``kernels.get_kernel`` at import on a CPU with
    AVX512-BF16 to download and run a compiled kernel from the Hugging Face hub (and, offline, runs a cached one
    without its publisher check). That is a network request in a local run and code from the hub that no
    ``trust_remote_code`` allowed; bitsandbytes falls back to its own CPU code when the call fails.
    """

    LOADERS = ("get_kernel", "get_local_kernel", "get_locked_kernel", "load_kernel", "install_kernel")

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "kernels":
            return None
        import importlib.machinery

        sys.meta_path.remove(self)
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        real_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            real_exec(module)
            for attr in self.LOADERS:
                if hasattr(module, attr):
                    setattr(module, attr, _refuse_hub_kernel)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _refuse_hub_kernel(repo_id: Any = None, *args: Any, **kwargs: Any) -> Any:
    raise ImportError(f"honed does not download or run hub kernels ({repo_id}); the library's own code is used")


class _DropKernelFallbackWarning(logging.Filter):
    """bitsandbytes' warning that its hub kernel did not load: expected under honed, so not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "from kernels-community" not in record.getMessage()


def block_hub_kernels() -> None:
    """Install :class:`_NoHubKernels` (before ``kernels`` is imported; an imported one is patched now)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelFallbackWarning())
    loaded = sys.modules.get("kernels")
    if loaded is not None:
        for attr in _NoHubKernels.LOADERS:
            if hasattr(loaded, attr):
                setattr(loaded, attr, _refuse_hub_kernel)
    if not any(isinstance(f, _NoHubKernels) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoHubKernels())


def _offline_values() -> dict[tuple[str, str], bool]:
    """The offline constants of the hub libraries as the current environment sets them."""
    hub = _true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    ds_env = os.environ.get("HF_DATASETS_OFFLINE")
    ds = hub if ds_env is None else _true(ds_env)
    return {("huggingface_hub.constants", "HF_HUB_OFFLINE"): hub,
            ("datasets.config", "HF_HUB_OFFLINE"): ds, ("datasets.config", "HF_DATASETS_OFFLINE"): ds}


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Hub libraries make no network request inside this block (offline mode, restored after).

    For loads of local files and folders.  Modules first imported inside the block read the
    offline environment; on exit they get the values the restored environment gives.
    """
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    saved_const = {(m, a): getattr(sys.modules[m], a) for m, a in _offline_values() if m in sys.modules}
    os.environ.update(dict.fromkeys(_OFFLINE_ENV, "1"))
    for m, a in _offline_values():
        if m in sys.modules:
            setattr(sys.modules[m], a, True)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        restored = _offline_values()
        for (m, a), value in restored.items():
            if m in sys.modules:
                setattr(sys.modules[m], a, saved_const.get((m, a), value))


def hub_offline() -> bool:
    """True when the user put the hub libraries in offline mode (HF_HUB_OFFLINE)."""
    return _true(os.environ.get("HF_HUB_OFFLINE"))


def _proxy_for(scheme: str) -> str | None:
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``url``'s host (or the proxy for it) opens within ``timeout``.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread that is
    abandoned when it takes too long.
    """
    parts = urlsplit(url)
    scheme = parts.scheme or "https"
    target = parts
    proxy = _proxy_for(scheme)
    if proxy:
        target = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    host = target.hostname
    if not host:
        return False
    port = target.port or (443 if target.scheme == "https" else 80)
    ok = threading.Event()

    def attempt() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            ok.set()

    worker = threading.Thread(target=attempt, name="honed-reach", daemon=True)
    worker.start()
    worker.join(timeout)
    return ok.is_set()


def hub_endpoint() -> str:
    """The Hugging Face endpoint huggingface_hub talks to (HF_ENDPOINT, else huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    return reachable(hub_endpoint(), timeout)
