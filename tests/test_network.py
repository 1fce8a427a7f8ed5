"""No network unless the workflow names a remote resource; a hub id without network fails at once.

Each run is a fresh interpreter with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset (as on a user's
machine) and ``tests/fixtures/netguard/sitecustomize.py`` on its path: it records every attempt to
resolve or connect to a non-local address in a file and blocks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, write_config

GUARD = ROOT / "tests" / "fixtures" / "netguard"
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
ROWS = [("I won the prize", "joy"), ("the dark room scared me", "fear"), ("my old dog died", "sadness"),
        ("a party for me?", "surprise")]


def run_guarded(args: list[str], tmp: Path, *, mode: str = "refuse", code: str | None = None,
                timeout: float = 300) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``honed ARGS`` (or python ``code``) guarded; the result and the blocked attempts."""
    log = tmp / f"net-{mode}.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                        "HF_HUB_DISABLE_TELEMETRY", "HF_UPDATE_DOWNLOAD_COUNTS")}
    path = os.pathsep.join(p for p in (str(GUARD), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update({"PYTHONPATH": path, "HONED_NET_LOG": str(log), "HONED_NET_MODE": mode,
                "HF_HOME": str(tmp / "hf-home"), "OMP_NUM_THREADS": "1"})
    argv = ["-c", code] if code else ["-m", "honed.cli.main", *args]
    proc = subprocess.run([sys.executable, *argv], env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout)
    attempts = [line for line in log.read_text().splitlines() if line.startswith(("getaddrinfo", "connect"))] \
        if log.exists() else []
    return proc, attempts


def test_the_guard_sees_a_connection(tmp_path: Path) -> None:
    """Without this the other tests could pass with a guard that records nothing."""
    proc, attempts = run_guarded([], tmp_path, code=(
        "import socket\ntry:\n    socket.create_connection(('example.com', 80), timeout=1)\n"
        "except OSError:\n    pass\n"))
    assert proc.returncode == 0, proc.stderr
    assert attempts == ["getaddrinfo example.com"]


def test_local_workflow_makes_no_network_request(tmp_path: Path, tiny_llama: Path) -> None:
    """LoRA on local JSONL rows -> merge -> int4 ModelBuilder, with the network open to the libraries."""
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"phrase": p, "tone": t}) + "\n" for p, t in ROWS))
    write_config(tmp_path / "wf.json", {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [{"name": "d", "load_dataset_config": {"data_files": "rows.jsonl"},
                          "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 64}}],
        "passes": {
            "lora": {"type": "LoRA", "train_data_config": "d", "r": 4, "alpha": 8,
                     "training_args": {"max_steps": 2, "per_device_train_batch_size": 2}},
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "engine": {"cache_dir": "cache", "output_dir": "out"},
    })
    proc, attempts = run_guarded(["run", "--config", "wf.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == [], (tmp_path / "net-refuse.log").read_text()[:4000]
    assert (tmp_path / "out" / "genai_config.json").is_file()


def test_hub_id_without_network_fails_at_once(tmp_path: Path) -> None:
    """A hub id not in the cache, on a network that drops packets: exit 2 in seconds, one line."""
    write_config(tmp_path / "wf.json", {
        "input_model": {"model_path": "honed-nobody/not-cached-model"},
        "passes": {"cast": {"type": "CastDtype", "dtype": "float16"}},
        "engine": {"cache_dir": "cache", "output_dir": "out"},
    })
    start = time.monotonic()
    proc, attempts = run_guarded(["run", "--config", "wf.json"], tmp_path, mode="blackhole", timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert took < 10, f"took {took:.1f} s"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "honed-nobody/not-cached-model" in lines[0] and "hub" in lines[0], proc.stderr
    assert attempts  # it did try the hub (the guard held it)


def test_local_only_switches_the_hub_libraries_offline_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub
    import huggingface_hub.constants

    from honed.util.offline import local_only

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with local_only():
        assert huggingface_hub.is_offline_mode() and datasets.config.HF_HUB_OFFLINE
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        with local_only():
            pass
        assert huggingface_hub.is_offline_mode()  # nested blocks restore the outer one's state
    assert not huggingface_hub.is_offline_mode() and not datasets.config.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ


def test_hub_kernels_are_neither_fetched_nor_run(tmp_path: Path) -> None:
    """bitsandbytes >= 0.50 asks ``kernels`` for a hub kernel at import on AVX512-BF16 CPUs: under honed the
    request is refused before any connection, on every CPU (the call is made here directly)."""
    proc, attempts = run_guarded([], tmp_path, code=(
        "import honed, kernels\ntry:\n    kernels.get_kernel('kernels-community/quantization-bitsandbytes', "
        "version=1)\nexcept ImportError as e:\n    print('refused', e)\n"))
    assert proc.returncode == 0, proc.stderr
    assert "refused honed does not download" in proc.stdout
    assert attempts == []
