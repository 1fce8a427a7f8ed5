"""Ray: run each pass as a Ray task on a cluster node that has the resources it asks for.

The driver (the ``honed run`` process) only orchestrates: it computes cache keys, holds the per-key lock,
and renames a finished pass output into the cache.  The pass itself runs in a Ray worker
(``_run_request``) that reads its input model from and writes its output into the cache folder, so
``engine.cache_dir`` must be storage every node reaches (one machine: any folder; a cluster: a shared
mount such as NFS, EFS or a Kubernetes ReadWriteMany volume).  A worker that dies mid-pass (killed, out of
memory, node lost) is retried ``max_retries`` times by Ray; the retry starts from an empty output folder
and the pass's footprint records the attempt.

Uses Ray's own task API (``ray.remote`` / ``ray.get``, https://docs.ray.io/en/latest/ray-core/tasks.html);
honed schedules nothing itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from honed.errors import UserError
from honed.systems.base import PassRequest, PassResponse, System, SystemConfig, WorkerDied, register_system
from honed.util.hashing import hash_json, library_versions

log = logging.getLogger("honed")


class RayResources(BaseModel):
    """What each pass's Ray task reserves on its node (Ray's ``num_cpus`` / ``num_gpus`` task options)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_cpus: float | None = Field(
        None, gt=0, description="CPU cores per pass task; torch's thread count follows it. Default: 1 (Ray's)."
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per pass task (fractions share a GPU).")


class RayConfig(SystemConfig):
    """A Ray cluster (or a Ray instance on this machine)."""

    type: Literal["Ray"] = Field("Ray", description="Runs each pass as a Ray task on a node with the resources.")
    address: str = Field(
        "auto", description="The cluster: 'auto' (the one `ray start` runs here, or RAY_ADDRESS), 'host:port' "
        "(its GCS), 'ray://host:10001' (Ray Client), or 'local' (start a Ray instance in this process for the run)."
    )
    resources: RayResources = Field(default_factory=RayResources, description="What each pass task reserves.")
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime environment of the tasks (pip, env_vars, working_dir...); enters the "
        "system identity, so the pass cache keys."
    )
    max_retries: int = Field(1, ge=0, le=10, description="Times Ray reruns a pass whose worker died.")


def _run_request(request: dict[str, Any], threads: int | None, runner: Callable[[PassRequest], PassResponse] | None
                 ) -> dict[str, Any]:
    """The Ray task: run one pass request in this worker (through ``runner`` when the engine gives one)."""
    import ray
    import torch

    if threads:
        torch.set_num_threads(threads)
    req = PassRequest.from_json(request)
    answer = runner(req) if runner else req.execute()
    answer.node = f"{answer.node}/{ray.get_runtime_context().get_node_id()[:12]}"  # hosts may share a name
    answer.metrics["torch_threads"] = torch.get_num_threads()
    return answer.to_json()


def _versions(distributions: tuple[str, ...]) -> dict[str, str]:
    return library_versions(distributions)


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


class RayTrialExecutor(concurrent.futures.Executor):
    """Search trials as Ray tasks that reserve no CPU (a trial only orchestrates; its passes are Ray tasks that
    reserve the resources).  A trial whose worker died raises ``WorkerDied``."""

    def __init__(self, system: RaySystem) -> None:
        self.system = system

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        ray = self.system.connect()
        task = ray.remote(_call).options(num_cpus=0, max_retries=0, runtime_env=self.system.cfg.runtime_env)
        ref = task.remote(fn, args, kwargs)
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(inner: concurrent.futures.Future[Any]) -> None:
            try:
                out.set_result(inner.result())
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
                out.set_exception(WorkerDied(f"the Ray worker running the trial died ({type(e).__name__})"))
            except BaseException as e:
                out.set_exception(e)

        ref.future().add_done_callback(done)
        return out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to release: the tasks belong to the cluster."""


class RaySystem(System):
    """Runs each pass as a Ray task (``pip install 'honed[ray]'``)."""

    name = "Ray"
    description = "a Ray cluster: each pass is a Ray task on a node with the resources (the cache must be shared)"
    config_class = RayConfig
    requires = ("ray",)
    install = "pip install 'honed[ray]'"

    def __init__(self, config: SystemConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.cfg = cast(RayConfig, config)
        self.identity = "ray:" + hash_json(self.cfg.runtime_env or {})[:16]
        self._versions: dict[tuple[str, ...], dict[str, str]] = {}

    def connect(self) -> Any:
        """``ray``, connected to the cluster. Raises UserError (one line) when ray is missing or unreachable."""
        try:
            import ray
        except ImportError as e:
            raise UserError(f"{self.label}.type: Ray needs the ray package; {self.install}") from e
        if ray.is_initialized():  # inside a Ray task (a trial), or connected earlier in this process
            return ray
        address = None if self.cfg.address == "local" else self.cfg.address
        if address and address != "auto":
            self._check_reachable(address)
        extra: dict[str, Any] = {}
        if address is None and len(tempfile.gettempdir()) > 40 and os.path.isdir("/tmp"):
            # A Ray started here puts unix sockets under its temp folder, and a socket path has at most 107 bytes:
            # under a long TMPDIR (a test's or a job scheduler's folder) it could not start.
            extra["_temp_dir"] = "/tmp/ray"
        try:
            ray.init(address=address, runtime_env=self.cfg.runtime_env, log_to_driver=False,
                     logging_level=logging.WARNING, include_dashboard=False if address is None else None, **extra)
        except ConnectionError as e:
            raise UserError(f"{self._address_key}: no Ray cluster at '{self.cfg.address}' ({e}); start one with "
                            f"`ray start --head`, or {self._local_hint} to start Ray in this process") from e
        log.info("%s: connected to Ray (%s)", self.label, self.cfg.address)
        return ray

    @property
    def _local_hint(self) -> str:
        return "use --ray-address local" if self.label.startswith("--") else "set address to 'local'"

    @property
    def _address_key(self) -> str:
        """Where the address came from, for messages: the workflow's key, or the command-line flag."""
        return self.label if self.label.startswith("--") else f"{self.label}.address"

    def _check_reachable(self, address: str) -> None:
        """Fail in one line at once when nothing listens at ``host:port`` (Ray itself waits minutes for a GCS)."""
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not port.isdigit():
            raise UserError(f"{self._address_key}: '{address}' is not 'auto', 'local', 'host:port' or "
                            "'ray://host:port'; give the head node's address")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except OSError as e:
            raise UserError(f"{self._address_key}: no Ray cluster answers at {address} ({e.strerror or e}); start "
                            "one with `ray start --head` there, or fix the address") from e

    def environment(self, distributions: tuple[str, ...]) -> dict[str, str]:
        """The versions a Ray worker sees (its interpreter and runtime_env), asked once per distribution set."""
        wanted = tuple(sorted(set(distributions)))
        if wanted not in self._versions and self.dry_run:  # a plan should not need the cluster up
            try:
                self.connect()
            except UserError as e:
                if not self._versions:
                    log.warning("%s; the plan's keys assume the cluster has this interpreter's versions", e)
                self._versions[wanted] = library_versions(wanted)
        if wanted not in self._versions:
            ray = self.connect()
            probe = ray.remote(_versions).options(num_cpus=0, runtime_env=self.cfg.runtime_env)
            self._versions[wanted] = ray.get(probe.remote(wanted))
        return self._versions[wanted]

    def _check_fits(self, ray: Any) -> None:
        """A pass asking for more CPUs or GPUs than any node has would wait forever: say so in one line."""
        res = self.cfg.resources
        want = {"CPU": res.num_cpus or 1, "GPU": res.num_gpus}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if nodes and not any(all(node.get(k, 0) >= v for k, v in want.items() if v) for node in nodes):
            have = ", ".join(f"{node.get('CPU', 0):g} CPU / {node.get('GPU', 0):g} GPU" for node in nodes)
            key = "resources" if self.label.startswith("--") else f"{self.label}.resources"
            raise UserError(f"{key}: each pass asks for {want['CPU']:g} CPU / {want['GPU']:g} GPU but no node of "
                            f"the cluster has that (nodes: {have}); ask for less or add a node that has it")

    def run_pass(self, request: PassRequest) -> PassResponse:
        ray = self.connect()
        self._check_fits(ray)
        res = self.cfg.resources
        threads = max(1, int(res.num_cpus)) if res.num_cpus else None
        task = ray.remote(_run_request).options(
            num_cpus=res.num_cpus if res.num_cpus is not None else 1, num_gpus=res.num_gpus,
            max_retries=self.cfg.max_retries, retry_exceptions=False, runtime_env=self.cfg.runtime_env,
        )
        try:
            answer = ray.get(task.remote(request.to_json(), threads, request.runner))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
            raise RuntimeError(f"the Ray worker running the pass died {self.cfg.max_retries + 1} times "
                               f"({type(e).__name__}); see `ray logs` on the node") from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if cause is not None:
                raise cause from None  # the pass's own error (a UserError stays one line)
            raise
        return PassResponse.from_json(answer)

    def trial_executor(self, max_workers: int) -> concurrent.futures.Executor:
        return RayTrialExecutor(self)


register_system(RaySystem)
