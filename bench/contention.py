"""Speed under a competing load: honed's LoRA training and ONNX scoring, alone and beside busy processes, with
honed's CPU policy (``honed.util.cpus``: threads from the usable CPUs, no spinning onnxruntime pools when the
CPUs are shared) and with the old behaviour (``HONED_CPU_POLICY=off``: a thread per physical core, spinning).

Workloads (each measurement a fresh subprocess, so every thread pool starts from the policy's settings):

- ``lora``: honed's training loop (``honed.training.loop.train`` inside ``physical_core_threads``) on a small
  random Llama (hidden 256, 4 layers; tiny in --smoke), LoRA r16 on every linear layer, fp32, batch 8 of
  64-token rows; train tokens/s over steps 2.. (step 1 is warm-up).
- ``onnx``: an onnxruntime session created by honed (``OnnxSession``) over a 4-layer MLP (512-1024-1024-512),
  scoring batches of 64 rows for a fixed time; rows/s.

Load: ``--busy N`` processes started before the loaded measurement and stopped after it: ``spin`` (pure-Python
``while True``; 1 busy thread each) or ``matmul`` (a numpy matmul loop, BLAS threads = the usable CPUs each).

Fair share (stated exactly): with ``c`` usable CPUs, ``t`` threads of the workload and ``b`` competing busy
threads, the workload alone uses ``min(t, c)`` cores and its fair share under load is ``c * t / (t + b)`` cores
(capped at ``min(t, c)``), so ``fair = alone * min(1, c * t / (t + b) / min(t, c))``; ``fair slowdown = alone /
fair`` and ``vs fair = loaded / fair`` (1.0: a fair share; below 1: worse than fair).

    python bench/contention.py                 # ~3 minutes on 2 cores: both workloads, 2 spin processes
    python bench/contention.py --load matmul --busy 2
    python bench/contention.py --smoke         # seconds, in one process; JSON to a temporary folder

Results: bench/results/contention.json (the machine's 1-minute load average is recorded at each measurement,
since "alone" means beside whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

POLICY_ENV = "HONED_CPU_POLICY"
MODES = {"policy": "", "old": "off"}


def _llama(folder: Path, small: bool) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (folder / "config.json").is_file():
        return folder
    size = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2) if small else dict(hidden_size=64, intermediate_size=128,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, max_position_embeddings=256, tie_word_embeddings=False, **size)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def _mlp(path: Path, width: int) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    dims = [width, 2 * width, 2 * width, width, 16]
    nodes, inits, last = [], [], "x"
    for i in range(len(dims) - 1):
        w = numpy_helper.from_array((rng.standard_normal((dims[i], dims[i + 1])) / dims[i] ** 0.5).astype("float32"),
                                    f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]))
        last = f"m{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["n", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def worker_lora(model: Path, steps: int) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from honed.training.args import TrainingArgs
    from honed.training.loop import Callback, physical_core_threads, train

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    lm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(8 * steps):
        ids = torch.randint(3, 2048, (64,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * 64, "labels": ids})
    mark: dict[str, float] = {}

    class Mark(Callback):
        def on_step_end(self, state, args):
            if state.global_step == 1:
                mark.update(t=time.perf_counter(), tokens=state.tokens_seen)

    args = TrainingArgs(max_steps=steps, per_device_train_batch_size=8, learning_rate=2e-4, logging_steps=steps,
                        save_steps=10_000, seed=0)
    with tempfile.TemporaryDirectory() as work, physical_core_threads():
        threads = torch.get_num_threads()
        res = train(lm, rows, args, work_dir=Path(work), pad_token_id=0, callbacks=[Mark()])
    seconds = time.perf_counter() - mark["t"]
    return {"rate": (res.state.tokens_seen - mark["tokens"]) / seconds, "threads": threads, "seconds": seconds}


def worker_onnx(path: Path, seconds: float, width: int) -> dict[str, float]:
    import numpy as np

    from honed.models.onnx_runtime import OnnxSession, physical_cores

    sess = OnnxSession(path, settings={})
    x = np.random.default_rng(0).standard_normal((64, width)).astype("float32")
    sess.session.run(None, {"x": x})  # warm-up
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.session.run(None, {"x": x})
        rows += len(x)
    took = time.perf_counter() - t0
    return {"rate": rows / took, "threads": physical_cores(), "seconds": took}


def _budget() -> dict[str, object]:
    from honed.util.cpus import cpu_budget

    b = cpu_budget()
    return {"usable": b.usable, "threads": b.threads, "shared": b.shared, "reason": b.reason}


def _run_worker(kind: str, a: argparse.Namespace, work: Path) -> dict[str, object]:
    width = 64 if a.smoke else 512
    if kind == "lora":
        out = worker_lora(_llama(work / ("tiny-llama" if a.smoke else "small-llama"), not a.smoke), a.steps)
    else:
        out = worker_onnx(_mlp(work / f"mlp{width}.onnx", width), a.seconds, width)
    return {**out, "budget": _budget()}


def _measure(kind: str, mode: str, a: argparse.Namespace, work: Path) -> dict[str, object]:
    """One measurement: a fresh subprocess; in --smoke this process (the policy reads its variable per call)."""
    if a.smoke:
        os.environ[POLICY_ENV] = MODES[mode]
        load = os.getloadavg()[0]
        return {**_run_worker(kind, a, work), "load1_before": round(load, 2)}
    cmd = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--steps", str(a.steps),
           "--seconds", str(a.seconds)] + (["--smoke"] if a.smoke else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("OMP_NUM_THREADS", None)  # the policy (or the old rule) chooses, not the caller's shell
    env[POLICY_ENV] = MODES[mode]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{kind} worker ({mode}) failed")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load1_before": round(load, 2)}


def _start_load(kind: str, n: int, cores: int) -> list[subprocess.Popen[bytes]]:
    code = ("while True: pass" if kind == "spin" else
            "import numpy as np\na = np.ones((384, 384))\nwhile True: a @ a")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(cores), OMP_NUM_THREADS=str(cores))
    return [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(n)]


def _stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def fair_rate(alone: float, threads: int, busy: int, cores: int) -> float:
    """The fair-share rate (see the module docstring): ``alone * min(1, c*t/(t+b) / min(t, c))``."""
    return alone * min(1.0, cores * threads / (threads + busy) / min(threads, cores))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=2, help="competing busy processes (default 2)")
    ap.add_argument("--load", choices=["spin", "matmul"], default="spin", help="what each busy process runs")
    ap.add_argument("--steps", type=int, default=8, help="LoRA steps per measurement (step 1 untimed)")
    ap.add_argument("--seconds", type=float, default=6.0, help="ONNX scoring time per measurement")
    ap.add_argument("--workloads", default="lora,onnx", help="comma-separated: lora, onnx")
    ap.add_argument("--work", type=Path, help="models (default: bench/.work/contention)")
    ap.add_argument("--out", type=Path, help="results JSON (default: bench/results/contention.json)")
    ap.add_argument("--worker", choices=["lora", "onnx"], help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    a = ap.parse_args()
    width = 64 if a.smoke else 512
    if a.worker:
        print(json.dumps(_run_worker(a.worker, a, a.work)))
        return 0
    if a.smoke:
        tmp = benchlib.smoke_dir("contention")
        a.work, a.out = a.work or tmp, a.out or tmp / "contention.json"
        a.steps, a.seconds, a.busy = 3, 0.5, min(a.busy, 1)
    work = a.work or benchlib.WORK / "contention"
    work.mkdir(parents=True, exist_ok=True)
    _llama(work / ("tiny-llama" if a.smoke else "small-llama"), not a.smoke)
    _mlp(work / f"mlp{width}.onnx", width)
    from honed.util.cpus import usable_cpus

    cores = usable_cpus()
    busy_threads = a.busy * (1 if a.load == "spin" else cores)
    rows: list[dict[str, object]] = []
    for kind in [k.strip() for k in a.workloads.split(",") if k.strip()]:
        alone = {m: _measure(kind, m, a, work) for m in MODES}
        procs = _start_load(a.load, a.busy, cores)
        try:
            time.sleep(0.2 if a.smoke else 1.0)
            loaded = {m: _measure(kind, m, a, work) for m in MODES}
        finally:
            _stop_load(procs)
        for m in MODES:
            t = int(loaded[m]["threads"])  # type: ignore[call-overload]
            fair = fair_rate(float(alone[m]["rate"]), t, busy_threads, cores)  # type: ignore[arg-type]
            rate_alone, rate_loaded = float(alone[m]["rate"]), float(loaded[m]["rate"])  # type: ignore[arg-type]
            rows.append({"workload": kind, "mode": m, "threads": t, "alone": rate_alone, "loaded": rate_loaded,
                         "slowdown": rate_alone / rate_loaded, "fair_slowdown": rate_alone / fair,
                         "vs_fair": rate_loaded / fair, "alone_run": alone[m], "loaded_run": loaded[m]})
    unit = {"lora": "train tok/s", "onnx": "score rows/s"}
    print(f"\ncompeting load: {a.busy} {a.load} process(es) ({busy_threads} busy threads) on {cores} usable CPUs")
    print(f"{'workload':22s}{'mode':8s}{'threads':>8s}{'alone':>9s}{'with load':>11s}{'slowdown':>10s}"
          f"{'fair slowdown':>15s}{'vs fair':>9s}")
    for r in rows:
        print(f"{r['workload'] + ' ' + unit[str(r['workload'])]:22s}{r['mode']:8s}{r['threads']:8d}{r['alone']:9.0f}"
              f"{r['loaded']:11.0f}{r['slowdown']:9.2f}x{r['fair_slowdown']:14.2f}x{r['vs_fair']:9.2f}")
    result = {"bench": "contention", "load": a.load, "busy_processes": a.busy, "busy_threads": busy_threads,
              "usable_cpus": cores, "steps": a.steps, "seconds": a.seconds,
              "fair": "alone * min(1, c*t/(t+b) / min(t, c))",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "cpu": platform.processor() or platform.machine()},
              "rows": rows, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = a.out or benchlib.RESULTS / "contention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {benchlib.shown(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
