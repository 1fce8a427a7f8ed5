"""The onnxruntime flavour comes from an extra, never the base install; honed says which extra when none is
installed and warns once when two are (``honed.util.runtime_flavour``).  ``scripts/check-install-flavours.sh``
asks pip itself what each install leaves; these tests pin the declarations and honed's side."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from honed.errors import UserError
from honed.util import runtime_flavour
from honed.util.runtime_flavour import FLAVOURS, import_runtime, missing_message

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NO_FLAVOUR_LINE = "onnxruntime is not installed: pip install 'honed[cpu]' (or 'honed[cuda]' on a CUDA host)"
ALL_FLAVOURS = {d for dists in FLAVOURS.values() for d in dists}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _installed(monkeypatch: pytest.MonkeyPatch, *dists: str) -> None:
    """Package metadata as if exactly ``dists`` of the runtime flavours were installed."""
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name in ALL_FLAVOURS:
            if name in dists:
                return "1.0"
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(runtime_flavour, "_checked", False)


def _absent(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Importing ``modules`` fails as it does when they are not installed (None in sys.modules)."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


# ---- the declarations -------------------------------------------------------------------------------------


def test_the_base_install_names_no_flavour_and_each_extra_one() -> None:
    # Fault caught: "onnxruntime>=1.20" back in [project] dependencies (or a flavour in the wrong extra).
    assert not {_name(r) for r in PYPROJECT["dependencies"]} & ALL_FLAVOURS
    extras = PYPROJECT["optional-dependencies"]
    assert {_name(r) for r in extras["cpu"]} == {"onnxruntime", "onnxruntime-genai"}
    assert {_name(r) for r in extras["cuda"]} == {"onnxruntime-gpu", "onnxruntime-genai-cuda"}
    assert {_name(r) for r in extras["directml"]} == {"onnxruntime-directml", "onnxruntime-genai-directml"}
    assert all("sys_platform == 'win32'" in r for r in extras["directml"])  # no DirectML build elsewhere
    for name, dists in FLAVOURS.items():  # the extras install what honed's table calls that flavour
        for dist, extra in dists.items():
            if extra:
                assert dist in {_name(r) for r in extras[extra]}, (name, dist)


def test_dev_and_demo_install_the_cpu_flavour() -> None:
    # Fault caught: dev without "honed[cpu]" (the README's test command would install no runtime).
    for extra in ("dev", "demo"):
        assert "honed[cpu]" in PYPROJECT["optional-dependencies"][extra], extra


def test_torch_is_a_range_and_ci_pins_the_release_it_tests() -> None:
    # Fault caught: "torch==2.13.0" back in pyproject (a CUDA host's torch would be replaced).
    torch = [r for r in PYPROJECT["dependencies"] if _name(r) == "torch"]
    assert len(torch) == 1 and "==" not in torch[0] and ">=" in torch[0] and "<" in torch[0].replace("<=", "")
    pins = [line for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines() if line.startswith("torch")]
    assert len(pins) == 1 and re.fullmatch(r"torch==\d+\.\d+\.\d+", pins[0])


def test_ci_runs_the_readme_test_command_and_the_flavour_check() -> None:
    # Fault caught: .ci/run installing without the constraints (or not calling the flavour check).
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    test_cmd = re.search(r"pip install (-c \S+ -e \"\.\[dev\]\")", readme)
    assert test_cmd, "README's test command is gone"
    assert f"pip install -q {test_cmd[1]}" in ci
    assert "bash scripts/check-install-flavours.sh" in ci
    assert ci.index("check-install-flavours") < ci.index("python -m pytest")
    assert 'pip install -c .ci/constraints.txt -e ".[cpu]"' in readme  # the demo's command has a runtime


# ---- no flavour ----------------------------------------------------------------------------------------------


def test_a_missing_runtime_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault caught: import_runtime letting ModuleNotFoundError through (a traceback, not the extra).
    _installed(monkeypatch)
    _absent(monkeypatch, "onnxruntime", "onnxruntime_genai")
    with pytest.raises(UserError) as info:
        import_runtime("onnxruntime.quantization")
    assert str(info.value) == NO_FLAVOUR_LINE
    with pytest.raises(UserError, match=r"^onnxruntime-genai is not installed: pip install 'honed\[cpu\]'"):
        import_runtime("onnxruntime_genai")


def test_half_a_cuda_flavour_names_the_cuda_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault caught: always suggesting honed[cpu], which would put onnxruntime beside onnxruntime-gpu.
    _installed(monkeypatch, "onnxruntime-gpu")
    assert missing_message("onnxruntime_genai") == (
        "onnxruntime-genai is not installed: pip install 'honed[cuda]' (onnxruntime-gpu is installed here)")


def test_a_missing_submodule_or_dependency_is_not_blamed_on_the_install(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    # Fault caught: every ModuleNotFoundError turned into "not installed" (an old release's missing module, or
    # a dependency the runtime itself imports).
    with pytest.raises(ModuleNotFoundError) as info:
        import_runtime("onnxruntime.no_such_module_xyz")
    assert not isinstance(info.value, UserError)
    fake = tmp_path / "onnxruntime_genai"
    fake.mkdir()
    (fake / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.partition(".")[0] == "onnxruntime_genai"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModuleNotFoundError) as info:
        import_runtime("onnxruntime_genai")
    assert info.value.name == "no_such_dependency_xyz" and not isinstance(info.value, UserError)
    with pytest.raises(ValueError, match="onnxruntime or onnxruntime_genai"):
        import_runtime("numpy")


def test_model_builder_without_genai_or_onnx_ir(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault caught: ModelBuilder recommending `pip install onnxruntime-genai` (the CPU flavour) on any host.
    from honed.passes.model_builder import _builder

    _installed(monkeypatch)
    _absent(monkeypatch, "onnxruntime_genai")
    with pytest.raises(UserError, match=r"^onnxruntime-genai is not installed: pip install 'honed\[cpu\]'"):
        _builder()
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith("onnxruntime_genai.models")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, so that it meets the missing onnx_ir
    _absent(monkeypatch, "onnx_ir")
    with pytest.raises(UserError, match=r"builder needs onnx-ir, which is not installed; .*pip install onnx-ir$"):
        _builder()


# ---- two flavours --------------------------------------------------------------------------------------------


def test_two_flavours_warn_once_naming_both_and_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # Fault caught: warn_if_mixed never called (or called without its once-per-process guard).
    _installed(monkeypatch, "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai-cuda")
    with caplog.at_level(logging.WARNING, logger="honed"):
        import_runtime("onnxruntime")
        import_runtime("onnxruntime")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == ["onnxruntime and onnxruntime-gpu are installed side by side and share the 'onnxruntime' "
                     "folder, so one overwrote the other's files; keep one: pip uninstall -y onnxruntime "
                     "onnxruntime-gpu && pip install 'honed[cuda]'"]


def test_one_flavour_each_is_quiet(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Fault caught: a mixed check that counts the genai flavour against the onnxruntime one.
    _installed(monkeypatch, "onnxruntime-gpu", "onnxruntime-genai-cuda")
    with caplog.at_level(logging.WARNING, logger="honed"):
        import_runtime("onnxruntime")
    assert runtime_flavour.mixed_flavours() == [] and not caplog.records


# ---- every import site ---------------------------------------------------------------------------------------


def _runtime_imports(tree: ast.AST) -> list[ast.stmt]:
    out = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n.partition(".")[0] in FLAVOURS for n in names):
            out.append(node)
    return out


def test_every_runtime_import_in_honed_goes_through_the_helper() -> None:
    # Fault caught: a new `import onnxruntime as ort` in a function, which would fail with a bare traceback.
    bad = []
    for path in sorted((ROOT / "src" / "honed").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for imp in _runtime_imports(tree):
            owner = min((f for f in funcs if f.lineno <= imp.lineno <= (f.end_lineno or 0)),
                        key=lambda f: (f.end_lineno or 0) - f.lineno, default=None)
            guarded = owner is not None and any(
                isinstance(c, ast.Call) and getattr(c.func, "id", "") == "import_runtime" and c.lineno < imp.lineno
                for c in ast.walk(owner))
            if not guarded:
                bad.append(f"{path.relative_to(ROOT)}:{imp.lineno}")
    assert not bad, "onnxruntime imported without honed.util.runtime_flavour.import_runtime first: " + ", ".join(bad)


# ---- the CLI without a runtime -------------------------------------------------------------------------------


NO_RUNTIME = """
import sys
for m in ("onnxruntime", "onnxruntime_genai"):
    sys.modules[m] = None  # as when no flavour is installed
from honed.cli.main import main
for argv in {argvs!r}:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    print("EXIT", argv[0], code, flush=True)
"""


def test_commands_that_run_no_runtime_work_without_one(tiny_llama: Path, tmp_path: Path) -> None:
    # Fault caught: a module-level `import onnxruntime` in anything the CLI imports (every command would die).
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}", "label": "a"}) + "\n" for i in range(8)))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [{"name": "d", "load_dataset_config": {"data_files": str(rows)},
                          "pre_process_data_config": {"text_template": "{text} {label}", "max_seq_len": 32}}],
        "passes": {"lora": {"type": "LoRA", "train_data_config": "d", "training_args": {"max_steps": 1}}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    }))
    genai = tmp_path / "genai"
    genai.mkdir()
    (genai / "genai_config.json").write_text('{"model": {}}')
    argvs = [["--version"], ["passes"], ["systems"], ["config", "schema"], ["run", "--config", str(wf), "--dry-run"],
             ["generate", "--model", str(genai), "--prompt", "hi"]]
    proc = subprocess.run([sys.executable, "-c", NO_RUNTIME.format(argvs=argvs)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    codes = re.findall(r"^EXIT (\S+) (\S+)$", proc.stdout, re.MULTILINE)
    assert codes == [("--version", "0"), ("passes", "0"), ("systems", "0"), ("config", "0"), ("run", "0"),
                     ("generate", "2")], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"error: {NO_FLAVOUR_LINE.replace('onnxruntime is', 'onnxruntime-genai is')}" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr


def test_dry_run_names_the_extra_for_a_missing_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The preflight problem for a pass whose runtime is missing names honed's extra, not `pip install
    onnxruntime_genai` (a module name, and the CPU build on any host); other missing libraries keep pip's line."""
    from honed.config.load import load_workflow
    from honed.engine.preflight import _requirements
    from honed.passes.model_builder import ModelBuilder

    monkeypatch.setattr(ModelBuilder, "missing_requirements", classmethod(lambda cls: ["onnxruntime_genai", "onnx_ir"]))
    monkeypatch.setattr(runtime_flavour, "installed_flavours", lambda package: {})
    f = tmp_path / "wf.json"
    f.write_text(json.dumps({"input_model": {"model_path": "m"}, "passes": {"mb": {"type": "ModelBuilder"}}}))
    wf = load_workflow(f)
    problems = {p.fix for p in _requirements(wf)}
    assert any("pip install 'honed[cpu]'" in f for f in problems), problems
    assert "install it with `pip install onnx_ir`" in problems
