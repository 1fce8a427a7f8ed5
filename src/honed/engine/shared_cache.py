"""A second cache tier on object storage every machine reaches (``engine.shared_cache``: s3://, gs://, az://).

Each machine keeps its own local cache (``engine.cache_dir``); the shared tier holds every committed entry
once, so a pass computed on one machine (or Ray node) is a cache hit on every other.  Layout under the URL::

    .honed-cache                       marks the prefix as a honed shared cache
    objects/<key>/<upload>/...         an entry's files (model/, handle.json, meta.json), one upload id each
    entries/<key>.json                 the commit record naming the upload; written once, with an exclusive
                                       create (S3 ``If-None-Match: *``): the first writer wins, atomically
    locks/<key>                        a lease: {"owner", "expires"}; renewed while held, taken over when expired

A reader trusts an entry only through its commit record, and the local cache checks every file's size and
sha256 (recorded at commit) after download, so a half-uploaded or damaged entry is a miss, never a result.
Locks: a lease is created with an exclusive create; an expired lease (its holder died) is taken over by
whoever wins the exclusive create of ``locks/<key>.takeover-<expires>``, so two waiters never both take it.
Object stores without exclusive create (plain local folders through fsspec) are refused: a shared folder is
used directly as ``engine.cache_dir`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from honed.engine.cache import Cache, Entry
from honed.errors import UserError

log = logging.getLogger("honed")

LEASE_S = 120.0
"""A lock's lease; the holder renews it every third of it, so a dead holder's lock frees within this time."""
POLL_S = 1.0

_OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")  # memory: one process, for tests


class SharedCache:
    """The shared tier at ``url`` (``storage_options`` go to fsspec: endpoint_url, profile...).

    Raises UserError (one line) when the URL is not an object store honed can lock on, or cannot be reached.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, key: str = "engine.shared_cache",
                 create: bool = True) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.key = key
        protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
        if protocol not in _OBJECT_STORES:
            raise UserError(f"{key}: '{url}' is not an object store URL (s3://, gs://, az://); a folder every "
                            "machine mounts is used directly as engine.cache_dir")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as e:
            raise UserError(f"{key}: cannot open '{url}' ({e}); install the fsspec package of that protocol "
                            "(s3fs, gcsfs, adlfs)") from e
        try:
            if not self.fs.exists(f"{self.root}/.honed-cache") and create:  # a dry run writes nothing
                self.fs.pipe_file(f"{self.root}/.honed-cache", b'{"format": 1}\n')
        except Exception as e:  # the storage client's own errors (credentials, endpoint, bucket): one line
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{key}: cannot use '{url}' ({type(e).__name__}: {why}); check the bucket, the "
                            "credentials (AWS_* or a profile) and the endpoint (AWS_ENDPOINT_URL)") from e

    # -- entries -------------------------------------------------------------------------------------

    def _record_path(self, key: str) -> str:
        return f"{self.root}/entries/{key}.json"

    def has(self, key: str) -> bool:
        return bool(self.fs.exists(self._record_path(key)))

    def pull(self, key: str, cache: Cache) -> Entry | None:
        """The entry for ``key`` in the local ``cache``, downloaded from the shared tier when only it has it;
        None when neither has it (or the download does not match its recorded hashes)."""
        entry = cache.get(key)
        if entry is not None:
            return entry
        try:
            record = json.loads(self.fs.cat_file(self._record_path(key)))
        except FileNotFoundError:
            return None
        src = f"{self.root}/objects/{key}/{record['upload']}"
        with cache.writing(key) as tmp:
            self.fs.get(src + "/", str(tmp) + "/", recursive=True)
            if not cache.entry_dir(key).exists():
                os.replace(tmp, cache.entry_dir(key))
        entry = cache.get(key)
        if entry is None:
            log.warning("%s: entry %s downloaded from %s does not match its hashes; computing it again",
                        self.key, key, self.url)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(cache.entry_dir(key))
        return entry

    def push(self, entry: Entry) -> bool:
        """Upload a local entry and commit it; False when another machine committed the key first (its
        entry stands; ours is removed from the shared tier)."""
        if self.has(entry.key):
            return False
        upload = uuid.uuid4().hex
        dest = f"{self.root}/objects/{entry.key}/{upload}"
        self.fs.put(str(entry.path) + "/", dest + "/", recursive=True)
        record = {"upload": upload, "node": socket.gethostname(), "pid": os.getpid(), "created": time.time()}
        try:
            self.fs.pipe_file(self._record_path(entry.key), json.dumps(record).encode(), mode="create")
        except FileExistsError:
            self.fs.rm(dest, recursive=True)
            return False
        return True

    # -- locks ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lease across machines while the block runs (waits while another holds it)."""
        path = f"{self.root}/locks/{key}"
        owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        waited = False
        while not self._try_acquire(path, owner):
            if not waited:
                log.info("%s: waiting for another machine computing %s", self.key, key)
                waited = True
            time.sleep(POLL_S)
        stop = threading.Event()
        renew = threading.Thread(target=self._renew, args=(path, owner, stop), daemon=True)
        renew.start()
        try:
            yield
        finally:
            stop.set()
            renew.join()
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)

    def _lease(self, owner: str) -> bytes:
        return json.dumps({"owner": owner, "expires": time.time() + LEASE_S}).encode()

    def _try_acquire(self, path: str, owner: str) -> bool:
        try:
            self.fs.pipe_file(path, self._lease(owner), mode="create")
            return True
        except FileExistsError:
            pass
        try:
            held = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:  # released between our create and read: try again
            return False
        if held.get("expires", 0) > time.time():
            return False
        try:  # the holder died: one waiter wins the takeover of this lease, by exclusive create
            self.fs.pipe_file(f"{path}.takeover-{held['expires']}", owner.encode(), mode="create")
        except FileExistsError:
            return False
        log.warning("%s: lock %s of %s expired; taking it over", self.key, path.rsplit("/", 1)[-1], held.get("owner"))
        self.fs.pipe_file(path, self._lease(owner))
        return True

    def _renew(self, path: str, owner: str, stop: threading.Event) -> None:
        while not stop.wait(LEASE_S / 3):
            self.fs.pipe_file(path, self._lease(owner))
