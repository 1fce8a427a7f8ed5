"""The Ray system, on a real Ray cluster started here (``ray start --head``, 2 CPUs), no mocks.

A run on Ray equals a local run (the same output bytes, the same metrics); the pass ran in a Ray worker
(its node and torch thread count are in the footprints); a worker killed mid-pass is retried; the cluster
address comes from the file or from ``--ray-address`` unedited; errors are one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import S3_BUCKET, cli, write_config

pytest.importorskip("ray")  # a dev dependency: CI installs it; the skip is for a user's bare install

REPO = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
"""Subprocesses import tests/ from here, and honed from where this process does (scripts/mutants.py's copy)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Ray head on this machine for the module; its address, stopped at the end.  It offers 4 logical CPUs
    on 2 cores: a 2-process fine-tune's pass task and its two Ray Train workers reserve 3."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    ray = str(Path(sys.executable).parent / "ray")
    with pytest.MonkeyPatch.context() as mp:
        # Ray >= 2.50 asks clients for a token by default; this cluster lives for the module, on localhost.
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        subprocess.run([ray, "start", "--head", "--num-cpus", "4", "--port", str(port), "--node-ip-address",
                        "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                       check=True, capture_output=True)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([ray, "stop", "--force"], capture_output=True)


def _workflow(folder: Path, model: Path, passes: dict[str, Any], host: str | None = None, **extra: Any) -> Path:
    engine = {"cache_dir": "cache", "output_dir": "out", **({"host": host} if host else {})}
    return write_config(folder / "wf.yaml", {"input_model": {"model_path": str(model)}, "passes": passes,
                                             "engine": engine, **extra})


def _honed(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process (the Ray driver connects once per process)."""
    return subprocess.run([sys.executable, "-m", "honed.cli.main", *args], cwd=folder, capture_output=True,
                          text=True, env={**os.environ, **(env or {}), "PYTHONPATH": PYTHONPATH}, timeout=600)


def _footprints(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "out" / "footprints.json").read_text())


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".onnx", ".data")}


CAST = {"cast": {"type": "CastDtype", "dtype": "bfloat16"}}


def test_a_workflow_on_ray_equals_the_local_run(tmp_path: Path, tiny_llama: Path, ray_head: str) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    for folder in (local, remote):
        folder.mkdir()
        _workflow(folder, tiny_llama, CAST)
    assert cli("run", "-c", str(local / "wf.yaml"), "--output-dir", str(local / "out"),
               "--cache-dir", str(local / "cache")) == 0
    proc = _honed(remote, "run", "-c", "wf.yaml", "--ray-address", ray_head)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _digest(local / "out") == _digest(remote / "out") != {}
    here, there = _footprints(local)["steps"][0], _footprints(remote)["steps"][0]
    assert here["output_id"] != there["output_id"]  # the system identity is part of the key ...
    assert here["metrics"]["model_contents"] == there["metrics"]["model_contents"]  # ... the result is not
    assert "node" not in here["metrics"]
    assert there["metrics"]["node"].startswith(socket.gethostname() + "/")  # host/Ray node id
    assert there["metrics"]["torch_threads"] == 1  # the task's default num_cpus (1)
    # a rerun on the cluster is all cached; the same file run locally again is too (its own key)
    again = _honed(remote, "run", "-c", "wf.yaml", "--ray-address", ray_head)
    assert again.returncode == 0 and _footprints(remote)["steps"][0]["cached"] is True


def test_address_auto_resources_and_runtime_env_from_the_file(tmp_path: Path, tiny_llama: Path,
                                                              ray_head: str) -> None:
    """``address: auto`` finds the cluster through RAY_ADDRESS; num_cpus sets torch's threads in the task;
    runtime_env is part of the system identity, so of the pass keys."""
    def run(env_vars: dict[str, str]) -> dict[str, Any]:
        system = {"type": "Ray", "address": "auto", "resources": {"num_cpus": 2},
                  "runtime_env": {"env_vars": env_vars}}
        _workflow(tmp_path, tiny_llama, CAST, host="cluster", systems={"cluster": system})
        proc = _honed(tmp_path, "run", "-c", "wf.yaml", env={"RAY_ADDRESS": ray_head})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return _footprints(tmp_path)["steps"][0]

    first = run({"A": "1"})
    assert first["cached"] is False and first["metrics"]["torch_threads"] == 2
    assert run({"A": "1"})["cached"] is True
    other = run({"A": "2"})
    assert other["cached"] is False and other["output_id"] != first["output_id"]


def test_a_worker_killed_mid_pass_is_retried(tmp_path: Path, tiny_llama: Path, ray_head: str) -> None:
    """The pass's Ray worker is killed (SIGKILL) while it trains: Ray reruns the task, the run completes, and
    the footprint records the second attempt."""
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"text": f"row {i} says hello"}) for i in range(64)))
    _workflow(tmp_path, tiny_llama, {
        "lora": {"type": "LoRA", "train_data_config": "d", "r": 4,
                 "training_args": {"max_steps": 400, "per_device_train_batch_size": 2, "save_steps": 1000}},
    }, data_configs=[{"name": "d", "load_dataset_config": {"data_files": "rows.jsonl"},
                      "pre_process_data_config": {"text_template": "{text}", "max_seq_len": 32}}])
    proc = subprocess.Popen([sys.executable, "-m", "honed.cli.main", "run", "-c", "wf.yaml", "--ray-address",
                             ray_head], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH})
    deadline = time.time() + 300
    marker = None
    while time.time() < deadline and marker is None and proc.poll() is None:
        marker = next(iter((tmp_path / "cache").rglob("attempt-1")), None)
        time.sleep(0.2)
    assert marker is not None, proc.communicate()[1][-2000:]
    time.sleep(3)  # well into training
    os.kill(int(marker.read_text().split()[1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    step = _footprints(tmp_path)["steps"][0]
    assert step["metrics"]["attempts"] == 2 and step["cached"] is False
    assert not marker.parent.exists()  # the work dir (checkpoints, attempt markers) goes once the pass is done


def test_errors_are_one_line(tmp_path: Path, tiny_llama: Path, ray_head: str) -> None:
    _workflow(tmp_path, tiny_llama, CAST)
    proc = _honed(tmp_path, "run", "-c", "wf.yaml", "--ray-address", f"127.0.0.1:{_free_port()}")
    assert proc.returncode == 2
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert "--ray-address: no Ray cluster answers at" in line and "ray start --head" in line
    # a user error inside the pass, on the cluster, comes back as the same one line
    _workflow(tmp_path, tiny_llama, {"lora": {"type": "LoRA", "train_data_config": "d"}},
              data_configs=[{"name": "d", "load_dataset_config": {"data_files": "missing.jsonl"}}])
    proc = _honed(tmp_path, "run", "-c", "wf.yaml", "--ray-address", ray_head)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "missing.jsonl" in next(ln for ln in proc.stderr.splitlines() if ln.startswith("error"))


TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
import honed

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node runs no pass
worker = cluster.add_node(num_cpus=2)
ray.init(address=cluster.address)
head_id = ray.get_runtime_context().get_node_id()
honed.run(sys.argv[1], ray_address=cluster.address)
steps = json.load(open(sys.argv[2]))["steps"]
print(json.dumps({"head": head_id, "worker": worker.node_id, "nodes": [s["metrics"]["node"] for s in steps]}))
ray.shutdown()
cluster.shutdown()
"""


def test_two_nodes_the_passes_run_on_the_node_with_the_resources(tmp_path: Path, tiny_llama: Path) -> None:
    """Ray's own cluster utilities start a 2-node cluster on this machine: the head (the driver's node) has no
    CPU to give, so both passes run on the worker node."""
    _workflow(tmp_path, tiny_llama, {**CAST, "back": {"type": "CastDtype", "dtype": "float32"}})
    (tmp_path / "two_nodes.py").write_text(TWO_NODES)
    proc = subprocess.run([sys.executable, "two_nodes.py", "wf.yaml", "out/footprints.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH, "RAY_USAGE_STATS_ENABLED": "0",
                               "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(seen["nodes"]) == 2
    assert all(n.endswith("/" + seen["worker"][:12]) for n in seen["nodes"]), seen
    assert seen["head"] != seen["worker"]


def test_nodes_without_the_driver_cache_folder_go_through_the_shared_cache(
        tmp_path: Path, tiny_llama: Path, ray_head: str, s3: str) -> None:
    """Each node has its own cache (HONED_NODE_CACHE_DIR): a node downloads its input entry from the S3 tier,
    commits its output there, and the driver downloads it; the result equals the local run's."""
    node_cache = tmp_path / "node-cache"
    env_vars = {"HONED_NODE_CACHE_DIR": str(node_cache), **{k: os.environ[k] for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}}
    two = {**CAST, "back": {"type": "CastDtype", "dtype": "float32"}}
    write_config(tmp_path / "wf.yaml", {
        "input_model": {"model_path": str(tiny_llama)}, "passes": two,
        "systems": {"cluster": {"type": "Ray", "address": ray_head, "runtime_env": {"env_vars": env_vars}}},
        "engine": {"cache_dir": "cache", "output_dir": "out", "host": "cluster",
                   "shared_cache": f"s3://{S3_BUCKET}/ray-{time.time_ns()}"},
    })
    proc = _honed(tmp_path, "run", "-c", "wf.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = _footprints(tmp_path)["steps"]
    keys = [s["output_id"] for s in steps]
    assert all(s["cached"] is False for s in steps)
    # both passes ran and were committed in the node's own cache; the second read its input from there
    assert sorted(p.name for p in (node_cache / "entries").iterdir()) == sorted(keys)
    assert all((tmp_path / "cache" / "entries" / k / "meta.json").is_file() for k in keys)  # downloaded
    local = tmp_path / "local"
    local.mkdir()
    _workflow(local, tiny_llama, two)
    assert cli("run", "-c", str(local / "wf.yaml"), "--output-dir", str(local / "out"),
               "--cache-dir", str(local / "cache")) == 0
    assert _digest(local / "out") == _digest(tmp_path / "out") != {}


def _precision_search(folder: Path, model: Path, **strategy: Any) -> Path:
    """The seed's workflow on a tiny model: LoRA (rank 2 or 4), merge, ModelBuilder int4 or int8, scored by
    accuracy: four trials.  (fp16 is left out: onnxruntime-genai's CPU provider fails on this tiny model's fp16
    build with a Cast shape mismatch.)"""
    from tests.test_search import TEMPLATE, write_rows

    data = write_rows(folder / "rows.jsonl")
    return write_config(folder / "wf.yaml", {
        "input_model": {"model_path": str(model)},
        "data_configs": [{"name": "d", "load_dataset_config": {"data_files": str(data)},
                          "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 64}}],
        "evaluators": {"ev": {"metrics": [{"name": "acc", "type": "accuracy", "data_config": "d",
                                           "sub_types": [{"name": "accuracy_score", "priority": 1}]}]}},
        "passes": {"lora": {"type": "LoRA", "train_data_config": "d", "r": [2, 4], "alpha": 8,
                            "training_args": {"max_steps": 2, "per_device_train_batch_size": 4}},
                   "merge": {"type": "MergeAdapterWeights"},
                   "mb": {"type": "ModelBuilder", "precision": ["int4", "int8"]}},
        "engine": {"evaluator": "ev", "output_dir": "out", "cache_dir": "cache"},
        "search_strategy": {"sampler": "sequential", **strategy},
    })


def test_a_precision_search_on_ray_equals_the_local_search(tmp_path: Path, tiny_llama: Path, ray_head: str) -> None:
    """Four trials, two at a time as Ray tasks (each trial's passes are Ray tasks too): the same trials and
    accuracies as the search run here one trial at a time; each LoRA prefix is trained once."""
    local, remote = tmp_path / "local", tmp_path / "ray"
    local.mkdir(), remote.mkdir()
    _precision_search(local, tiny_llama)
    _precision_search(remote, tiny_llama, max_concurrent_trials=2)
    for folder, extra in ((local, ()), (remote, ("--ray-address", ray_head))):
        proc = _honed(folder, "run", "-c", "wf.yaml", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    here, there = (_footprints(f)["search"]["trials"] for f in (local, remote))

    def acc(trials: list[dict[str, Any]]) -> dict[tuple[int, str], float]:
        return {(t["params"]["passes.lora.r"], t["params"]["passes.mb.precision"]): t["metrics"]["acc-accuracy_score"]
                for t in trials}

    assert set(acc(here)) == {(2, "int4"), (2, "int8"), (4, "int4"), (4, "int8")}
    assert acc(there) == pytest.approx(acc(here), abs=1e-9)
    def ran_in_the_honed_process(t: dict[str, Any]) -> bool:
        return t["run"] == f"{t['node']}:{t['pid']}"  # run: the honed process that claimed the trial

    assert not any(map(ran_in_the_honed_process, there))  # each trial ran in a Ray worker ...
    assert all(map(ran_in_the_honed_process, here))  # ... where the local search ran them itself
    steps = [s for t in there for s in t["steps"]]
    assert [s["cached"] for s in steps if s["type"] == "LoRA"].count(False) == 2
    assert all(s["metrics"]["node"] for s in steps if not s["cached"])  # every pass ran in a Ray worker


def test_a_two_process_fine_tune_on_ray_runs_through_ray_train(tmp_path: Path, tiny_llama: Path,
                                                               ray_head: str) -> None:
    """num_processes 2 on a Ray system whose nodes see the cache: the pass's task starts two Ray Train workers
    (TorchTrainer, gloo); the adapter equals a 1-process local run's (tolerance: tests/test_distributed_training)."""
    from safetensors.torch import load_file

    from tests.test_distributed_training import LORA, LORA_ARGS, WEIGHT_TOL
    from tests.test_finetune import EXAMPLES

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"phrase": f"{t} {i}", "tone": tone}) + "\n"
                            for i in range(5) for t, tone in EXAMPLES[:5]))
    data = [{"name": "train", "load_dataset_config": {"data_files": str(rows)},
             "pre_process_data_config": {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}"}}]
    adapters = {}
    for n, extra in ((1, ()), (2, ("--ray-address", ray_head))):
        folder = tmp_path / f"p{n}"
        folder.mkdir()
        lora = {"type": "LoRA", "train_data_config": "train", **LORA,
                "training_args": {**LORA_ARGS, "num_processes": n}}
        _workflow(folder, tiny_llama, {"lora": lora}, data_configs=data)
        proc = _honed(folder, "run", "-c", "wf.yaml", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        adapters[n] = load_file(str(folder / "out" / "adapter_model.safetensors"))
        metrics = _footprints(folder)["steps"][0]["metrics"]
    assert metrics["num_processes"] == 2 and metrics["launcher"] == "ray"
    assert adapters[1].keys() == adapters[2].keys()
    assert max(float((adapters[1][k] - adapters[2][k]).abs().max()) for k in adapters[1]) < WEIGHT_TOL


def test_a_pass_asking_for_more_than_any_node_has_stops_in_one_line(tmp_path: Path, tiny_llama: Path,
                                                                   ray_head: str) -> None:
    """Ray would queue the task forever; honed says which key asks for what, and what the nodes have."""
    _workflow(tmp_path, tiny_llama, CAST, host="cluster",
              systems={"cluster": {"type": "Ray", "address": ray_head, "resources": {"num_cpus": 64}}})
    proc = _honed(tmp_path, "run", "-c", "wf.yaml")
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert "systems.cluster.resources: each pass asks for 64 CPU / 0 GPU" in line and "4 CPU / 0 GPU" in line
