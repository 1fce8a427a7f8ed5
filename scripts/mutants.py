"""One-line faults the tests must catch (a small, hand-picked mutation test).

    python scripts/mutants.py            # every fault; about 4-5 minutes on 2 cores
    python scripts/mutants.py --list     # the faults, one line each
    python scripts/mutants.py key-code   # only the named ones

Each fault replaces one exact piece of a source file in a copy of the repository (src/, tests/,
pyproject.toml), then runs the tests that should notice it, in-process tests only, with the copy's src/ first
on PYTHONPATH. A fault the tests miss, or a piece of source that is no longer there (the fault is stale: update
it with the code), is a failure: exit 1. The unchanged copy runs the same tests first, and they must pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS = [
    Mutant("key-code", "src/honed/engine/keys.py",
           'code=code_fingerprint(module.__name__) if module else "",', 'code="",',
           ("tests/test_cache_keys.py",), "the pass key forgets the pass's code"),
    Mutant("key-tokenizer", "src/honed/data/build.py",
           '"tokenizer": tokenizer_fingerprint(tokenizer)}', '"tokenizer": None}',
           ("tests/test_cache_keys.py",), "the tokenized-data key forgets the tokenizer"),
    Mutant("eval-key-code", "src/honed/evaluate/evaluator.py",
           "code=code_fingerprint(__name__), environment=environment(library_versions(EVAL_LIBRARIES))",
           'code="", environment=environment(library_versions(EVAL_LIBRARIES))',
           ("tests/test_cache_keys.py",), "the evaluation key forgets the scoring code (template, labels, runtimes)"),
    Mutant("key-host-versions", "src/honed/systems/python_env.py",
           '[str(self.python), "-c", code, *wanted]', '[sys.executable, "-c", code, *wanted]',
           ("tests/test_cache_keys.py",), "a PythonEnvironment's key reads versions in the host interpreter"),
    Mutant("key-path", "src/honed/util/hashing.py",
           'return {"name": p.name, "sha256": hash_path(p)}', 'return {"name": p.name, "path": obj}',
           ("tests/test_cache_keys.py",), "a file enters keys by its path, not its content"),
    Mutant("flipped-loss-mask", "src/honed/data/packing.py",
           "labels = [t if end > a and begin < b else IGNORE", "labels = [IGNORE if end > a and begin < b else t",
           ("tests/test_completion_only.py", "tests/test_data.py"), "the loss covers the prompt, not the answer"),
    Mutant("skipped-lora-scaling", "src/honed/training/fused_lora.py",
           "y.addmm_(h, b.t(), alpha=scaling)", "y.addmm_(h, b.t(), alpha=1.0)",
           ("tests/test_fused_lora.py",), "the fused LoRA forward drops alpha/r"),
    Mutant("self-compared-guard", "src/honed/passes/_onnx_common.py",
           "got = sess.run(ids, mask)[0]", "got = ref_out.float().numpy()",
           ("tests/test_guards.py",), "the ONNX parity guard compares the source with itself"),
    Mutant("swapped-renames", "src/honed/config/olive.py",
           'PASS_RENAMES = {"lora_r": "r", "lora_alpha": "alpha"}', 'PASS_RENAMES = {"lora_r": "alpha", "lora_alpha": "r"}',
           ("tests/test_olive_schema.py::test_translation",), "Olive's lora_r and lora_alpha land swapped"),
    Mutant("dropped-legacy-load-keys", "src/honed/config/olive.py",
           "kwargs.update(extra or {})", "kwargs.update({})",
           ("tests/test_olive_schema.py::test_translation",), "the legacy generation's model_loading_args vanish"),
    Mutant("no-metric-data-ref-check", "src/honed/config/load.py",
           "if metric.data_config is not None and metric.data_config not in data_names:", "if False:",
           ("tests/test_config_errors.py",), "a metric naming a missing data config is not reported"),
    Mutant("gptq-no-error-feedback", "src/honed/passes/gptq.py",
           "W1[:, i:] -= e[:, None] @ Hinv1[i, i:][None, :]", "W1[:, i:] -= 0 * e[:, None]",
           ("tests/test_gptq.py",), "GPTQ rounds without spreading the error (plain RTN)"),
    Mutant("resume-forgets-best", "src/honed/training/loop.py",
           "best = read(BEST_FILE) if (path / BEST_FILE).is_file() else None", "best = None",
           ("tests/test_training_resume.py",), "a resumed run ends with its last weights, not its best"),
    Mutant("ddp-averaged-grads", "src/honed/training/distributed.py",
           "dist.all_reduce(flat, op=dist.ReduceOp.SUM)", "dist.all_reduce(flat, op=dist.ReduceOp.SUM); flat /= world_size()",
           ("tests/test_distributed_training.py::test_lora_in_two_processes_trains_what_one_process_trains",),
           "data-parallel fine-tuning averages the processes' gradients instead of summing them"),
    Mutant("shared-commit-overwrites", "src/honed/engine/shared_cache.py",
           'json.dumps(record).encode(), mode="create")', "json.dumps(record).encode())",
           ("tests/test_shared_cache.py::test_commit_is_exclusive_and_a_damaged_upload_is_a_miss",),
           "a second machine's commit replaces the first one's in the shared cache"),
    Mutant("shared-no-lease", "src/honed/engine/shared_cache.py",
           "while not self._try_acquire(path, owner):", "while False:",
           ("tests/test_shared_cache.py::test_two_machines_at_once_compute_a_pass_once",),
           "two machines compute the same pass at once (no lease across machines)"),
    Mutant("upward-import", "src/honed/data/formatting.py",
           "from __future__ import annotations\n", "from __future__ import annotations\nimport honed.engine.runner  # noqa\n",
           ("tests/test_layers.py",), "the data layer imports the engine"),
    Mutant("eval-after-last-step", "src/honed/training/loop.py",
           "        return args.load_best_model_at_end and evaluated and step >= total_steps",
           "        return step >= total_steps",
           ("tests/test_eval_schedule.py",), "eval_strategy 'steps' evaluates when training ends (issue 17)"),
    Mutant("gptq-widths-dropped", "src/honed/passes/gptq.py",
           "q = gptq_linear(linears[n].weight, stats[n].H, cfg, (bits or {}).get(name))",
           "q = gptq_linear(linears[n].weight, stats[n].H, cfg)",
           ("tests/test_gptq.py::test_measured_mix_keeps_the_chosen_linears_at_8_bits_through_the_builder",),
           "Gptq's measured mix never reaches the 8-bit codes"),
    Mutant("runtime-extra-unnamed", "src/honed/util/runtime_flavour.py",
           "        raise UserError(missing_message(e.name)) from e", "        raise",
           ("tests/test_install_flavours.py::test_a_missing_runtime_is_one_line_naming_the_extra",),
           "a missing onnxruntime is a traceback, not the line naming the extra"),
    Mutant("qa-lora-unscaled", "src/honed/passes/_lora_graph.py",
           "b_all[lo:hi, col:col + a.shape[0]] = b * scale", "b_all[lo:hi, col:col + a.shape[0]] = b",
           ("tests/test_quantization_aware.py",), "the shipped adapter branch drops peft's alpha/r"),
    Mutant("fidelity-kl-reversed", "src/honed/models/fidelity.py",
           "kl = (np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1)",
           "kl = (np.exp(lp_cand) * (lp_cand - lp_ref)).sum(axis=-1)",
           ("tests/test_fidelity.py",), "the KL divergence is taken the wrong way round"),
    Mutant("sensitivity-least-first", "src/honed/passes/_sensitivity.py",
           "key=lambda g: g.score / g.extra_bytes, reverse=True)", "key=lambda g: g.score / g.extra_bytes)",
           ("tests/test_sensitivity.py",), "the measured mix keeps the least sensitive MatMuls at int8"),
    Mutant("awq-fold-multiplies", "src/honed/passes/awq.py",
           "        prev.weight.div_(s)\n", "        prev.weight.mul_(s)\n",
           ("tests/test_awq.py",), "AWQ folds its scales into the norm the wrong way"),
]


def _copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for part in ("src", "tests", "examples", "docs", "scripts"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore, symlinks=True)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy2(ROOT / "README.md", dest / "README.md")


def _pytest(copy: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy / "src") + os.pathsep + str(copy)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=900)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="run only these faults")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list or not chosen:
        for m in MUTANTS:
            print(f"{m.name:28s} {m.file}: {m.why}")
        return 0 if args.list else 2
    failures = 0
    with tempfile.TemporaryDirectory(prefix="honed-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        _copy(copy)
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        base = _pytest(copy, tests)
        if base.returncode != 0:
            print("the unchanged copy fails its tests; fix them first:\n" + base.stdout[-3000:])
            return 1
        for m in chosen:
            path = copy / m.file
            source = path.read_text(encoding="utf-8")
            if source.count(m.old) != 1:
                print(f"STALE   {m.name}: {m.file} holds the piece {m.old!r} {source.count(m.old)} times (want 1)")
                failures += 1
                continue
            path.write_text(source.replace(m.old, m.new), encoding="utf-8")
            start = time.perf_counter()
            try:
                proc = _pytest(copy, m.tests)
            finally:
                path.write_text(source, encoding="utf-8")
            seconds = time.perf_counter() - start
            if proc.returncode == 0:
                print(f"MISSED  {m.name}: {m.why} ({m.file}); {', '.join(m.tests)} still pass")
                failures += 1
            else:
                print(f"caught  {m.name} in {seconds:.0f} s: {m.why}")
    print(f"{len(chosen) - failures}/{len(chosen)} faults caught")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
