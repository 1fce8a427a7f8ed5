"""The node side of a pass on a cluster node that cannot see the driver's cache folder.

A remote system (Ray) runs ``execute_on_node(request)`` on the node.  When the node sees the driver's cache
folder (one machine, or a shared mount) it simply runs the pass there.  Otherwise (``HONED_NODE_CACHE_DIR``
names the node's own cache, or the driver's folder is absent on the node) it needs ``engine.shared_cache``:
the inputs that are cache entries are downloaded from it into the node's cache, the pass runs and is
committed there, and the entry is pushed to the shared tier, where the driver (holding the key's lease)
downloads it.  Models and data outside the cache (the input model's folder, data files) must be reachable
from every node: a hub id, a URL, or a path every node mounts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from honed.engine.cache import Cache
from honed.engine.shared_cache import SharedCache
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.systems.base import PassRequest, PassResponse

NODE_CACHE_ENV = "HONED_NODE_CACHE_DIR"
"""Set on the nodes (e.g. in the Ray system's runtime_env env_vars) to give each node its own local cache."""


def execute_on_node(request: PassRequest) -> PassResponse:
    """Run ``request`` on this node; commit through the shared cache when the node has its own cache."""
    node_root = os.environ.get(NODE_CACHE_ENV)
    if node_root is None and Path(request.output_dir).parent.is_dir():
        # the driver's cache folder is visible here, so on every node: a multi-process fine-tune may spread its
        # processes over the cluster (Ray Train); with a node's own cache they stay on this node
        return dataclasses.replace(request, launcher="ray").execute()
    if not request.shared_cache:
        raise UserError(f"the node {os.uname().nodename} cannot see engine.cache_dir {request.cache_dir}; mount it "
                        "on every node, or set engine.shared_cache to an s3:// (gs://, az://) URL every node reaches")
    cache = Cache(Path(node_root or request.cache_dir))
    shared = SharedCache(request.shared_cache)
    model = _localize(ModelHandle.model_validate(request.model), Path(request.cache_dir), cache, shared)
    with cache.lock(request.key), cache.writing(request.key) as tmp:
        out = tmp / "model"
        local = dataclasses.replace(request, model=model.model_dump(mode="json"), output_dir=str(out),
                                    work_dir=str(cache.work_dir(request.key)), cache_dir=str(cache.root))
        answer = local.execute()
        handle = ModelHandle.model_validate(answer.handle)
        meta = {**request.meta, "created": time.time(), "metrics": answer.metrics, "pid": os.getpid(),
                "node": answer.node}
        entry = cache.commit(request.key, tmp, handle, meta)
    shared.push(entry)
    answer.committed = True
    return answer


def _localize(handle: ModelHandle, driver_root: Path, cache: Cache, shared: SharedCache) -> ModelHandle:
    """``handle`` with every model that is an entry of the driver's cache replaced by this node's copy
    (downloaded from the shared tier when missing)."""
    base = _localize(handle.base, driver_root, cache, shared) if handle.base else None
    entries = driver_root / "entries"
    path = Path(handle.path)
    if path.is_relative_to(entries) and not path.exists():
        key = path.relative_to(entries).parts[0]
        entry = shared.pull(key, cache)
        if entry is None:
            raise UserError(f"input entry {key} is neither on this node nor in engine.shared_cache "
                            f"{shared.url}; run again to recompute it")
        handle = handle.model_copy(update={"path": str(cache.entry_dir(key) / path.relative_to(entries / key))})
    return handle.model_copy(update={"base": base})
