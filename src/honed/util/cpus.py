"""The CPUs this process may really use, and whether it shares them: honed's thread and spinning policy.

Why: honed used one thread per physical core of the *machine* and onnxruntime's default (spinning) thread
pools.  In a container with a CPU quota, under a narrower affinity mask or next to other busy processes that
oversubscribes the cores, and a spinning pool burns the slices the threads it waits for need (ONNX scoring
slowed 13-27x on a machine busy with several multi-threaded jobs).

The rule (:func:`cpu_budget`):

* ``usable`` = ``len(os.sched_getaffinity(0))``, capped by the cgroup CPU quota, rounded **up**
  (``ceil(quota / period)``: a 1.5-CPU quota runs 2 threads, each for 75% of the time, rather than leaving half
  a CPU idle), at least 1.  cgroup v2 reads ``cpu.max``; v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
* ``threads`` = ``min(usable, physical cores)`` (hyper-threads slow GEMMs down), or this process's share when a
  parent split the CPUs among workers (:func:`set_share`).
* ``shared`` is True when the affinity is narrower than the machine, or when the other runnable threads
  (the threads runnable right now, read from ``/proc/loadavg``; where that cannot be read, the 1-minute load
  average, which lags a load that started or stopped in the last minute; minus this process's runnable threads) exceed the machine's cores that this process does not use by more than half a core:
  ``others > (machine - usable) + 0.5``; ``threads`` is then cut to the cores the others leave free (at least 1).

``HONED_CPU_POLICY=off`` restores the old behaviour (physical cores of the machine, spinning pools), for
``bench/contention.py`` to compare.  A user's explicit setting (``OMP_NUM_THREADS``, a session's
``intra_op_num_threads`` or ``session.intra_op.allow_spinning``) always wins; the call sites check that.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
POLICY_ENV = "HONED_CPU_POLICY"
SHARED_SLACK = 0.5
"""Cores of other load tolerated before the CPUs count as shared (load averages are noisy)."""

_share: int | None = None


@dataclass(frozen=True)
class CpuBudget:
    """What this process may use: ``usable`` CPUs, ``threads`` for a thread pool, ``shared`` with others."""

    usable: int
    threads: int
    shared: bool
    machine: int
    reason: str


def policy_enabled() -> bool:
    """False when ``HONED_CPU_POLICY`` is ``off``/``0``/``false`` (the behaviour before the policy)."""
    return os.environ.get(POLICY_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None


def _cgroup_dirs(root: Path) -> list[Path]:
    """The folders that may hold this process's CPU controller files (its own cgroup first, then the root)."""
    dirs: list[Path] = []
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/") and (parts[0] == "0" or "cpu" in parts[1].split(",")):
            rel = parts[2].lstrip("/")
            for base in (root, root / "cpu", root / "cpu,cpuacct"):
                if rel:
                    dirs.append(base / rel)
    return [*dirs, root, root / "cpu", root / "cpu,cpuacct"]


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (``quota / period``) of this process's cgroup, or None for none or unreadable.

    cgroup v2: ``cpu.max`` ("max 100000" is no limit); v1: ``cpu.cfs_quota_us`` (-1 is no limit) over
    ``cpu.cfs_period_us``.  The smallest limit found wins.
    """
    limits: list[float] = []
    for d in _cgroup_dirs(root):
        v2 = _read(d / "cpu.max")
        if v2 is not None:
            fields = v2.split()
            try:
                if len(fields) == 2 and fields[0] != "max" and int(fields[1]) > 0:
                    limits.append(int(fields[0]) / int(fields[1]))
            except ValueError:
                pass
            continue
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        try:
            if quota is not None and period is not None and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
        except ValueError:
            pass
    return min(limits) if limits else None


def affinity_count() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is no mask, as on macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may use: the affinity count capped by ``ceil`` of the cgroup quota; at least 1."""
    n = affinity_count()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, math.ceil(limit - 1e-9))
    return max(1, n)


def _own_running() -> int:
    """Threads of this process that are runnable now (state R in ``/proc/self/task/*/stat``); 1 if unknown."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    running = 0
    for t in tasks:
        stat = _read(Path("/proc/self/task") / t / "stat")
        if stat and stat.rpartition(")")[2].split()[:1] == ["R"]:
            running += 1
    return max(1, running)


def _runnable_now(samples: int = 5) -> int | None:
    """Runnable threads on the machine now (``/proc/loadavg``'s 4th field, this process's included): the median
    of a few reads 2 ms apart, so a burst does not count; None where it cannot be read. Unlike the 1-minute
    load average it sees a competing load that started a moment ago, and forgets one that stopped."""
    import statistics
    import time

    seen = []
    for i in range(samples):
        text = _read(Path("/proc/loadavg"))
        try:
            seen.append(int(text.split()[3].split("/")[0]))  # type: ignore[union-attr]
        except (AttributeError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(0.002)
    return int(statistics.median(seen))


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _physical_cores() -> int | None:
    import psutil

    return psutil.cpu_count(logical=False)


def set_share(threads: int | None) -> None:
    """This process's share of the CPUs (a worker among several: its parent divided ``usable`` among them);
    None undoes it.  Raises ValueError for a count below 1."""
    global _share
    if threads is not None and threads < 1:
        raise ValueError(f"a CPU share must be at least 1 thread (got {threads})")
    _share = threads


def cpu_budget(root: Path = CGROUP, load1: float | None = None, own_running: int | None = None) -> CpuBudget:
    """This process's :class:`CpuBudget` now (``load1``/``own_running`` override the measured ones, for tests).

    When other threads keep cores busy, ``threads`` drops to the cores they leave free (at least 1): a thread
    pool wider than its free cores waits at every barrier for a thread the scheduler has parked (LoRA under two
    spinning processes on 2 cores: 4.2x slower with 2 threads, where a fair share is 2x)."""
    machine = os.cpu_count() or 1
    physical = _physical_cores() or machine
    if not policy_enabled():
        return CpuBudget(usable=machine, threads=physical, shared=False, machine=machine,
                         reason=f"{POLICY_ENV}=off: one thread per physical core, spinning pools")
    usable = usable_cpus(root)
    threads = max(1, min(usable, physical, _share or usable))
    load = _load1() if load1 is None else load1
    own = _own_running() if own_running is None else own_running
    runnable = _runnable_now()
    others = max(0.0, (load or 0.0) - own if runnable is None else runnable - own)
    narrower = affinity_count() < machine
    busy = others > (machine - usable) + SHARED_SLACK
    why = [f"{usable} usable of {machine} CPUs"]
    if narrower:
        why.append("affinity narrower than the machine")
    if busy:
        free = usable - (others - (machine - usable))
        threads = max(1, min(threads, math.floor(free + 0.5)))
        why.append(f"other load {others:.1f} > {machine - usable} free cores: {threads} threads")
    return CpuBudget(usable=usable, threads=threads, shared=narrower or busy, machine=machine,
                     reason="; ".join(why))


def user_torch_threads() -> int | None:
    """The thread count a user set for torch (``OMP_NUM_THREADS``, a positive integer), or None."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def torch_threads() -> int:
    """Threads for torch's intra-op pool: the user's ``OMP_NUM_THREADS``, else the budget's ``threads``."""
    return user_torch_threads() or cpu_budget().threads


def ort_config_entries(existing: dict[str, str] | None = None) -> dict[str, str]:
    """onnxruntime session config entries the policy adds: both pools' ``allow_spinning`` "0" when the CPUs
    are shared; a key in ``existing`` (the user's) is never overridden.  Empty when not shared."""
    existing = existing or {}
    if not cpu_budget().shared:
        return {}
    return {k: "0" for k in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
            if k not in existing}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16, AMX or Arm BF16).

    There oneDNN's bf16 GEMMs run about 2x faster than fp32 ones (SmolLM2's layer shapes on 2 Zen 4
    cores: 390-410 vs 170-180 GFLOP/s); without them bf16 is emulated and slower than fp32.
    ``HONED_CPU_BF16=0`` (or ``1``) overrides the detection.
    """
    forced = os.environ.get("HONED_CPU_BF16", "").strip()
    if forced in ("0", "1"):  # benches and tests: behave as a CPU without (0) or with (1) native bf16
        return forced == "1"
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
