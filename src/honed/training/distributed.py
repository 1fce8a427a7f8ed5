"""Data-parallel fine-tuning in several processes on one machine (``training_args.num_processes``).

honed launches the processes itself with torch's elastic launcher (``elastic_launch``: c10d rendezvous on
localhost, ``max_restarts=0``), each running the same training code on its share of every optimizer step's
rows; the helpers here (rank, world size, sums across processes) are no-ops in one process, so the loop has
one code path.  A worker loads the model and the tokenized data itself (it is given paths and picklable
configs, never a live model); rank 0 alone writes checkpoints and the final model.

Why explicit sums rather than ``DistributedDataParallel``: the loop normalises the loss by the label tokens of
the whole optimizer step, so one all-reduce of the gradients after the last accumulation micro-batch (what
DDP's ``no_sync`` would give) is all a step needs, and it keeps the single-process path free of wrappers.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from honed.errors import UserError

log = logging.getLogger("honed")

BUCKET_BYTES = 32 * 2**20
"""Gradients are summed across processes in flat buffers of at most this many bytes (fewer, larger messages)."""


# ----------------------------------------------------------------------------- inside a process


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes training together; 1 outside a launched run."""
    import torch.distributed as dist

    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank (0 writes checkpoints and the model); 0 outside a launched run."""
    import torch.distributed as dist

    return dist.get_rank() if _initialized() else 0


def is_main() -> bool:
    """True in the process that writes files and logs (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in one)."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: Sequence[float], dtype: Any = None) -> list[float]:
    """``values`` summed element-wise over the processes (one message); the values themselves in one process.

    float64 by default so that summed losses and token counts (exact below 2**53) lose nothing.
    """
    if world_size() == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=dtype or torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_grads(params: Sequence[Any]) -> None:
    """Sum the gradients of ``params`` over the processes, in place (a parameter without one counts as zeros).

    The loop divides each process's loss by the label tokens of the whole step before backward, so the sum is
    the gradient one process would have computed over all the step's rows.  A parameter no process gave a
    gradient keeps none (the optimizer skips it, as in one process).  Gradients travel in flat buffers of at
    most ``BUCKET_BYTES`` per dtype.
    """
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    has = all_reduce_sum([float(p.grad is not None) for p in params])
    params = [p for p, n in zip(params, has, strict=True) if n > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[Any] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket, size = [], 0

    by_kind: dict[tuple[Any, Any], list[Any]] = {}
    for p in params:
        by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in by_kind.values():
        for g in grads:
            nbytes = g.numel() * g.element_size()
            if bucket and size + nbytes > BUCKET_BYTES:
                flush()
            bucket.append(g)
            size += nbytes
        flush()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` in every process (e.g. which checkpoint to resume from); ``obj`` itself in one."""
    if world_size() == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, by rank; ``[obj]`` in one process."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _comm_device() -> Any:
    """Where small tensors must live for the process group's backend (nccl: this process's GPU)."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- choosing a backend


def backend_for(requested: str | None, device: str, key: str, num_processes: int) -> str:
    """The process-group backend: ``requested``, else gloo on CPU and nccl on CUDA.

    nccl without CUDA, or more CUDA processes than GPUs, is a one-line UserError naming ``key``
    (``passes.<name>.training_args``).
    """
    cuda = device.startswith("cuda")
    if requested == "nccl" and not cuda:
        raise UserError(f"{key}.ddp_backend: 'nccl' needs CUDA but this pass trains on {device}; set ddp_backend "
                        "to gloo or leave it unset")
    if cuda:
        import torch

        gpus = torch.cuda.device_count()
        if num_processes > gpus:
            raise UserError(f"{key}.num_processes: {num_processes} processes need one GPU each but torch sees "
                            f"{gpus}; set num_processes to at most {gpus}")
    return requested or ("nccl" if cuda else "gloo")


def threads_per_process(num_processes: int) -> int:
    """torch threads each process gets: the cores honed would use in one process (``OMP_NUM_THREADS`` when set,
    else the physical cores), shared out, at least 1."""
    import psutil

    env = os.environ.get("OMP_NUM_THREADS", "")
    cores = int(env) if env.isdigit() and int(env) > 0 else (psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    return max(1, cores // num_processes)


# ----------------------------------------------------------------------------- launching


_AGENT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    fn: Callable[..., Any], args: tuple[Any, ...], *, num_processes: int, backend: str, timeout_s: float, key: str,
) -> list[Any]:
    """Run ``fn(*args)`` in ``num_processes`` fresh processes that form one process group; their results by rank.

    ``fn`` and ``args`` must pickle (a module-level function; paths and configs, not live models).  Each process
    gets ``threads_per_process`` torch threads (also as ``OMP_NUM_THREADS``), its own GPU on CUDA, and a process
    group with ``timeout_s`` on every collective.  When a process fails the others are stopped and this raises
    one line: the worker's ``UserError`` as a UserError, anything else as a RuntimeError naming ``key``, the
    rank and the worker's last error line.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    scratch = Path(tempfile.mkdtemp(prefix="honed-ddp-"))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint=f"localhost:{_free_port()}", rdzv_configs={"timeout": 120},
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(scratch / "logs")),
    )
    worker_args = (fn, args, backend, float(timeout_s), threads_per_process(num_processes), str(scratch),
                   log.getEffectiveLevel())
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    # The agent installs its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers in this process (they stop the workers)
    # and names them in the environment; put the pass's process back as it was afterwards.
    handlers = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS} if _main_thread() else {}
    env_before = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    # The agent logs its settings, each worker's exit and a failed worker's traceback; the failure is raised below.
    quiet.setLevel(logging.CRITICAL)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        results = elastic_launch(config, _run_worker)(*worker_args)
    except ChildFailedError as e:
        raise _worker_error(scratch, e, key) from None
    finally:
        quiet.setLevel(level)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if env_before is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = env_before
        shutil.rmtree(scratch, ignore_errors=True)
    return [results[r] for r in range(num_processes)]


def launch_ray(
    fn: Callable[..., Any], args: tuple[Any, ...], *, num_processes: int, backend: str, timeout_s: float, key: str,
    scratch_root: Path,
) -> list[Any]:
    """``launch`` over a Ray cluster: ``fn(*args)`` in ``num_processes`` Ray Train workers (``TorchTrainer``, which
    places them on the nodes with the resources and forms the process group), their results by rank.

    Called inside a Ray task (the pass, on a node that sees the shared cache folder, where rank 0 writes the
    output).  ``fn`` returns JSON-able data; each rank writes it under ``scratch_root`` (a folder on that shared
    storage: Ray Train returns nothing from a worker).  Each worker reserves ``threads_per_process`` CPUs (and one
    GPU with nccl).  Raises one line, as ``launch`` does, when a worker fails.
    """
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    threads = threads_per_process(num_processes)
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ray-train-", dir=scratch_root))
    trainer = TorchTrainer(
        _ray_train_worker,
        train_loop_config={"fn": fn, "args": args, "threads": threads, "scratch": str(scratch),
                           "log_level": log.getEffectiveLevel()},
        torch_config=TorchConfig(backend=backend, timeout_s=int(timeout_s)),
        scaling_config=ScalingConfig(num_workers=num_processes, use_gpu=backend == "nccl",
                                     resources_per_worker={"CPU": threads, **({"GPU": 1} if backend == "nccl" else {})}),
        run_config=RunConfig(name=f"honed-{uuid.uuid4().hex[:8]}", storage_path=str(scratch / "ray"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    try:
        trainer.fit()
        return [json.loads((scratch / f"result-rank{r}.json").read_text()) for r in range(num_processes)]
    except ray.train.TrainingFailedError as e:
        failures = sorted(getattr(e, "worker_failures", {}).items())  # WorkerGroupError: {rank: exception}
        causes = [(r, getattr(x, "cause", None) or x) for r, x in failures]
        user = [x for _, x in causes if isinstance(x, UserError)]
        if user:
            raise UserError(str(user[0])) from e
        if causes:
            r, x = causes[0]
            lines = [ln for ln in str(x).strip().splitlines() if ln.strip()] or [type(x).__name__]
            raise RuntimeError(f"{key}: training process rank {r} (Ray Train) failed: {lines[-1]}") from e
        raise RuntimeError(f"{key}: Ray Train failed: {str(e).strip().splitlines()[-1]}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ray_train_worker(config: dict[str, Any]) -> None:
    """The body of every Ray Train worker: threads and logging around ``fn(*args)``, whose result it writes as
    JSON (the process group is Ray Train's)."""
    import ray.train
    import torch

    rank_ = ray.train.get_context().get_world_rank()
    os.environ["OMP_NUM_THREADS"] = str(config["threads"])
    torch.set_num_threads(config["threads"])
    log.setLevel(config["log_level"] if rank_ == 0 else max(config["log_level"], logging.ERROR))
    out = config["fn"](*config["args"])
    Path(config["scratch"], f"result-rank{rank_}.json").write_text(json.dumps(out))


def _worker_error(scratch: Path, failed: Any, key: str) -> Exception:
    """One exception for a failed launch: a worker's UserError first, else the first failure in time."""
    records = []
    for f in scratch.glob("error-rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(f.read_text()))
    user = [r for r in records if r["user"]]
    if user:
        return UserError(min(user, key=lambda r: r["time"])["message"])
    if records:
        first = min(records, key=lambda r: r["time"])
        return RuntimeError(f"{key}: training process rank {first['rank']} failed: {first['last_line']}")
    rank_, failure = failed.get_first_failure()
    how = f"signal {-failure.exitcode}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return RuntimeError(f"{key}: training process rank {rank_} died ({how}) outside the training code; its "
                        "output (above) says why")


def _run_worker(
    fn: Callable[..., Any], args: tuple[Any, ...], backend: str, timeout_s: float, threads: int, scratch: str,
    log_level: int,
) -> Any:
    """The body of every launched process: threads, logging and the process group around ``fn(*args)``."""
    import torch
    import torch.distributed as dist

    rank_ = int(os.environ["RANK"])
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # honed's thread rule reads it (see physical_core_threads)
    torch.set_num_threads(threads)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if rank_ == 0 else f"[rank {rank_}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(log_level if rank_ == 0 else max(log_level, logging.ERROR))  # one copy of each line: rank 0's
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        return fn(*args)
    except BaseException as e:
        lines = [ln for ln in traceback.format_exception_only(type(e), e)[-1].splitlines() if ln.strip()]
        record = {"rank": rank_, "time": time.time(), "user": isinstance(e, UserError), "message": str(e),
                  "last_line": lines[-1] if lines else type(e).__name__}
        with contextlib.suppress(OSError):
            Path(scratch, f"error-rank{rank_}.json").write_text(json.dumps(record))
        raise
    finally:
        with contextlib.suppress(RuntimeError, ValueError):
            dist.destroy_process_group()


PARENT_ENV = "HONED_DDP_PARENT"
"""The launching process's pid, inherited by the workers (see ``_die_with_parent``)."""


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the process that launched it dies (a SIGKILLed honed run
    would otherwise leave its training processes running, holding memory)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        parent = os.environ.get(PARENT_ENV)
        if parent and os.getppid() != int(parent):  # the launcher died before the call
            os._exit(1)


def seed_for_rank(seed: int) -> int:
    """The torch seed of this process: ``seed`` on rank 0 (one process trains as before), distinct on the others
    so their dropout masks are drawn independently."""
    return seed + 1_000_003 * rank()
