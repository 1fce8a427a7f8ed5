"""``engine.shared_cache``: a second cache tier on S3 (a moto server on 127.0.0.1 started here, spoken to
through s3fs as a real bucket would be), shared by "machines" that each have their own local cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from honed.engine.cache import Cache
from honed.engine.shared_cache import LEASE_S, SharedCache
from honed.errors import UserError
from tests.helpers import S3_BUCKET as BUCKET
from tests.helpers import cli, write_config

REPO = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
"""Subprocesses import tests/ from here, and honed from where this process does (scripts/mutants.py's copy)."""


@pytest.fixture
def url(s3: str, request: pytest.FixtureRequest) -> str:
    """A fresh prefix per test."""
    return f"s3://{BUCKET}/{request.node.name[:40]}-{time.time_ns()}"


def _objects(url: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return sorted(fs.find(url.removeprefix("s3://")))


def _workflow(folder: Path, model: Path, url: str, passes: dict[str, Any] | None = None,
              **extra: Any) -> Path:
    return write_config(folder / "wf.yaml", {
        "input_model": {"model_path": str(model)},
        "passes": passes or {"cast": {"type": "CastDtype", "dtype": "bfloat16"}},
        "engine": {"cache_dir": "cache", "output_dir": "out", "shared_cache": url}, **extra,
    })


def _steps(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "out" / "footprints.json").read_text())["steps"]


def test_a_pass_made_on_one_machine_is_a_hit_on_another(tmp_path: Path, tiny_llama: Path, url: str) -> None:
    one, two = tmp_path / "one", tmp_path / "two"  # two machines: each its own local cache
    for m in (one, two):
        m.mkdir()
        _workflow(m, tiny_llama, url)
    assert cli("run", "-c", str(one / "wf.yaml"), "--output-dir", str(one / "out"),
               "--cache-dir", str(one / "cache"), "--dry-run") == 0
    assert _objects(url) == []  # a dry run writes nothing, not even the marker
    assert cli("run", "-c", str(one / "wf.yaml"), "--output-dir", str(one / "out"),
               "--cache-dir", str(one / "cache")) == 0
    [made] = _steps(one)
    assert made["cached"] is False
    assert any(o.endswith(f"entries/{made['output_id']}.json") for o in _objects(url))
    assert cli("run", "-c", str(two / "wf.yaml"), "--output-dir", str(two / "out"),
               "--cache-dir", str(two / "cache")) == 0
    [hit] = _steps(two)
    assert hit["cached"] is True and hit["output_id"] == made["output_id"]
    a, b = (sorted(p.relative_to(m / "out").as_posix() for p in (m / "out").rglob("*.safetensors"))
            for m in (one, two))
    assert a == b != []
    for rel in a:
        assert (one / "out" / rel).read_bytes() == (two / "out" / rel).read_bytes()


def test_an_entry_made_before_the_tier_existed_is_shared_on_the_next_run(tmp_path: Path, tiny_llama: Path,
                                                                          url: str, monkeypatch) -> None:
    write_config(tmp_path / "local.yaml", {"input_model": {"model_path": str(tiny_llama)},
                                           "passes": {"cast": {"type": "CastDtype", "dtype": "bfloat16"}},
                                           "engine": {"cache_dir": "cache", "output_dir": "out"}})
    monkeypatch.chdir(tmp_path)
    assert cli("run", "-c", "local.yaml") == 0
    _workflow(tmp_path, tiny_llama, url)
    assert cli("run", "-c", "wf.yaml") == 0
    [step] = _steps(tmp_path)
    assert SharedCache(url).has(step["output_id"])


def test_commit_is_exclusive_and_a_damaged_upload_is_a_miss(tmp_path: Path, tiny_llama: Path, url: str,
                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _workflow(tmp_path, tiny_llama, url)
    assert cli("run", "-c", "wf.yaml") == 0
    [step] = _steps(tmp_path)
    key = step["output_id"]
    shared, cache = SharedCache(url), Cache(tmp_path / "cache")
    entry = cache.get(key)
    assert entry is not None
    before = _objects(url)
    assert shared.push(entry) is False  # committed already: a second commit is refused ...
    assert _objects(url) == before  # ... and leaves nothing behind
    monkeypatch.setattr(shared, "has", lambda key: False)  # a machine that looked just before the commit
    assert shared.push(entry) is False  # the exclusive create of the record refuses it ...
    assert _objects(url) == before  # ... and its upload is removed
    # damage the shared copy of the weights: another machine's download does not match the recorded hashes
    import s3fs

    fs = s3fs.S3FileSystem()
    [weights] = [o for o in before if o.endswith(".safetensors") and f"objects/{key}/" in o]
    fs.pipe_file(weights, b"not the weights")
    other = Cache(tmp_path / "other-cache")
    assert shared.pull(key, other) is None
    assert not other.entry_dir(key).exists()


def test_the_lease_is_exclusive_and_an_expired_one_is_taken_over_once(url: str) -> None:
    shared = SharedCache(url)
    path = f"{shared.root}/locks/k"
    assert shared._try_acquire(path, "a") is True
    assert shared._try_acquire(path, "b") is False  # held and fresh
    shared.fs.pipe_file(path, json.dumps({"owner": "dead", "expires": time.time() - 1}).encode())
    assert shared._try_acquire(path, "c") is True  # expired: c takes it over ...
    shared.fs.pipe_file(path, json.dumps({"owner": "dead", "expires": time.time() - 1}).encode())
    shared.fs.pipe_file(f"{path}.takeover-x", b"")
    held = json.loads(shared.fs.cat_file(path))
    shared.fs.pipe_file(f"{path}.takeover-{held['expires']}", b"d")  # ... d already won this takeover
    assert shared._try_acquire(path, "e") is False
    with shared.lock("k2"):
        lease = json.loads(shared.fs.cat_file(f"{shared.root}/locks/k2"))
        assert time.time() < lease["expires"] <= time.time() + LEASE_S
    assert not shared.fs.exists(f"{shared.root}/locks/k2")  # released


TRAIN = {"lora": {"type": "LoRA", "train_data_config": "d", "r": 4,
                  "training_args": {"max_steps": 40, "per_device_train_batch_size": 2}}}


def test_two_machines_at_once_compute_a_pass_once(tmp_path: Path, tiny_llama: Path, url: str) -> None:
    """Two runs started together, each with its own local cache (so the local file lock cannot help): the
    shared lease makes one wait, then take the other's committed entry."""
    procs = []
    for name in ("one", "two"):
        m = tmp_path / name
        m.mkdir()
        (m / "rows.jsonl").write_text("\n".join(json.dumps({"text": f"row {i} says hi"}) for i in range(32)))
        _workflow(m, tiny_llama, url, TRAIN, data_configs=[{
            "name": "d", "load_dataset_config": {"data_files": "rows.jsonl"},
            "pre_process_data_config": {"text_template": "{text}", "max_seq_len": 32}}])
        procs.append(subprocess.Popen([sys.executable, "-m", "honed.cli.main", "run", "-c", "wf.yaml"], cwd=m,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": PYTHONPATH}))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    cached = sorted(_steps(tmp_path / n)[0]["cached"] for n in ("one", "two"))
    assert cached == [False, True]
    assert len([o for o in _objects(url) if "/entries/" in o]) == 1


@pytest.mark.parametrize(("value", "words"), [
    ("/shared/folder", "not an object store URL"),
    ("https://example.com/cache", "not an object store URL"),
])
def test_a_url_honed_cannot_lock_on_is_refused_in_one_line(value: str, words: str) -> None:
    with pytest.raises(UserError, match=words) as e:
        SharedCache(value)
    assert "\n" not in str(e.value) and "engine.cache_dir" in str(e.value)
