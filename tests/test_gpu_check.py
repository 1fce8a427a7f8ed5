"""scripts/gpu_check.py (run on CUDA machines by scripts/gpu-check.sh) runs here in its CPU mode on a tiny model,
so it cannot rot between GPU sessions: every row, its numbers, and the harness that turns a failing, crashing or
hanging check into one row and goes on."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import gpu_check
finally:
    sys.path.remove(str(ROOT / "scripts"))

ROWS = ["qlora", "loftq", "lora", "lora-fused-vs-peft", "int4-build", "fp16-build", "decode", "nccl-2-process"]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-check")
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--cpu", "--model", "tiny", "--steps", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": ""})
    return {"proc": proc, "out": out, "seconds": time.perf_counter() - start}


def test_the_cpu_run_prints_every_row_and_writes_its_json(cpu_run: dict) -> None:
    # Fault caught: a check whose workflow no longer validates (a renamed pass field) fails its row: exit 1.
    proc = cpu_run["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("check "))
    cells = [[c.strip() for c in line.split("|")] for line in lines[head + 2:] if " | " in line]
    assert [c[0] for c in cells] == ROWS
    result = {c[0]: c[3] for c in cells}
    assert result["loftq"] == "skipped: no CUDA"
    assert all(result[r].startswith("ok: ") for r in ROWS if r != "loftq"), result
    assert result["nccl-2-process"].startswith("ok: gloo: ")  # the CPU stand-in for nccl
    report = json.loads((cpu_run["out"] / "gpu-check.json").read_text())
    assert report["device"] == "cpu" and [r["check"] for r in report["rows"]] == ROWS


def test_each_row_carries_its_numbers(cpu_run: dict) -> None:
    # Fault caught: the fused-vs-peft check comparing peft with itself (fused_lora never entered: 0 layers).
    rows = {r["check"]: r["metrics"] for r in json.loads((cpu_run["out"] / "gpu-check.json").read_text())["rows"]}
    for name in ("qlora", "lora", "nccl-2-process"):
        assert rows[name]["train_steps"] == 2 and rows[name]["train_tokens_per_s"] > 0, name
    assert rows["nccl-2-process"]["num_processes"] == 2
    assert rows["lora-fused-vs-peft"]["layers"] == 14 and rows["lora-fused-vs-peft"]["max_logit_diff"] <= 1e-4
    assert rows["int4-build"]["size_mb"] > 0 and rows["int4-build"]["kl_mean"] >= 0
    assert rows["decode"]["genai_int4_tokens_per_s"] > 0 and rows["decode"]["torch_float32_tokens_per_s"] > 0
    assert cpu_run["seconds"] < 180, f"the CPU run took {cpu_run['seconds']:.0f} s"  # about 50 s on 2 idle cores


# ---- the harness: one row per check, whatever the check does ------------------------------------------------


def _boom(s: gpu_check.Setup) -> tuple[str, dict]:
    raise RuntimeError("boom: the check's own message")


def _hang(s: gpu_check.Setup) -> tuple[str, dict]:
    time.sleep(60)
    return "never", {}


def _crash(s: gpu_check.Setup) -> tuple[str, dict]:
    import faulthandler

    faulthandler.disable()  # pytest's would print the dying process's stack into the test output
    os.kill(os.getpid(), signal.SIGSEGV)
    return "never", {}


def _fine(s: gpu_check.Setup) -> tuple[str, dict]:
    return "fine", {"x": 1}


def test_a_failing_hanging_or_crashing_check_is_one_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Fault caught: run_check waiting past its timeout, or taking the log's first line for the error (the
    # exception's line is the last); a result left by an earlier run of the same check read as this run's.
    monkeypatch.setitem(gpu_check.CHECKS, "boom", _boom)
    monkeypatch.setitem(gpu_check.CHECKS, "hang", _hang)
    monkeypatch.setitem(gpu_check.CHECKS, "crash", _crash)
    monkeypatch.setitem(gpu_check.CHECKS, "fine", _fine)
    s = gpu_check.Setup(tmp_path, tmp_path, tmp_path / "rows.jsonl", "cpu", 1)
    ctx = multiprocessing.get_context("fork")  # the checks above live in this process, not in the script
    boom = gpu_check.run_check("boom", s, 60, ctx)
    assert (boom.status, boom.detail) == ("FAILED", "RuntimeError: boom: the check's own message")
    hang = gpu_check.run_check("hang", s, 2, ctx)
    assert hang.status == "FAILED" and hang.detail.startswith("timed out after 2 s") and hang.seconds < 30
    crash = gpu_check.run_check("crash", s, 60, ctx)
    assert crash.status == "FAILED" and crash.detail.startswith("signal 11")
    fine = gpu_check.run_check("fine", s, 60, ctx)
    assert (fine.status, fine.detail, fine.metrics) == ("ok", "fine", {"x": 1})
    monkeypatch.setitem(gpu_check.CHECKS, "fine", _crash)  # the same check's second run dies
    assert gpu_check.run_check("fine", s, 60, ctx).status == "FAILED"


def test_what_cannot_run_here_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Fault caught: nccl launched on a one-GPU machine (honed refuses 2 processes on 1 GPU), or decode on CUDA
    # with the CPU build of onnxruntime-genai.
    import honed.util.runtime_flavour as rf

    cuda = gpu_check.Setup(tmp_path, tmp_path, tmp_path, "cuda", 1)
    monkeypatch.setattr(rf, "installed_flavours", lambda package: {"onnxruntime-genai": "1"})
    assert gpu_check._skip_reason("nccl-2-process", cuda, 1, {}) == "nccl needs a GPU per process: torch sees 1"
    assert gpu_check._skip_reason("nccl-2-process", cuda, 2, {}) is None
    assert "honed[cuda]" in gpu_check._skip_reason("decode", cuda, 1, {})
    assert "honed[cuda]" in gpu_check._skip_reason("int4-build", cuda, 1, {})  # its KL runs genai on CUDA
    cpu = gpu_check.Setup(tmp_path, tmp_path, tmp_path, "cpu", 1)
    assert gpu_check._skip_reason("int4-build", cpu, 0, {}) is None
    assert gpu_check._skip_reason("loftq", cpu, 0, {}) == "no CUDA"
    monkeypatch.setattr(rf, "installed_flavours", lambda package: {})
    assert re.match(r"onnxruntime-genai is not installed: pip install 'honed\[cpu\]'",
                    gpu_check._skip_reason("int4-build", cuda, 1, {}))
    failed = {"int4-build": gpu_check.Row("int4-build", "cuda", "FAILED", "x")}
    monkeypatch.setattr(rf, "installed_flavours", lambda package: {"onnxruntime-genai-cuda": "1"})
    assert gpu_check._skip_reason("int4-build", cuda, 1, {}) is None
    assert gpu_check._skip_reason("decode", cuda, 1, failed) == "needs the int4 build"
