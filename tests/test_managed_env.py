"""A managed PythonEnvironment (``managed_env``, Olive's ``olive_managed_env``): honed builds the venv
under ``<cache_dir>/envs/<key>`` from a requirements file, runs passes in it, reuses it, and keys
pass outputs by it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from honed.systems.python_env import COMPLETE, requirement_lines
from tests.helpers import cli, write_config


def _workflow(folder: Path, model: Path, dtype: str = "bfloat16", **system: Any) -> Path:
    env = {"type": "PythonEnvironment", "managed_env": True, "requirements_file": "reqs.txt", **system}
    return write_config(folder / "wf.yaml", {
        "input_model": {"model_path": str(model)},
        "systems": {"env": {k: v for k, v in env.items() if v is not None}},
        "passes": {"cast": {"type": "CastDtype", "dtype": dtype}},
        "engine": {"cache_dir": "cache", "output_dir": "out", "host": "env"},
    })


def _step(project: Path) -> dict[str, Any]:
    return json.loads((project / "out" / "footprints.json").read_text())["steps"][0]


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error")]


def _envs(project: Path) -> list[Path]:
    root = project / "cache" / "envs"
    return sorted(root.iterdir()) if root.exists() else []


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a requirement pip would download fails at once
    return tmp_path


def test_requirement_lines_skip_comments_and_blanks() -> None:
    assert requirement_lines("# only a comment\n\n   \n") == []
    assert requirement_lines("numpy==1.26 # pinned\n--no-index\n") == ["numpy==1.26", "--no-index"]


def test_env_is_built_once_used_reused_and_rekeyed(project: Path, tiny_llama: Path) -> None:
    (project / "reqs.txt").write_text("# nothing to install\n")
    _workflow(project, tiny_llama)
    assert cli("run", "-c", "wf.yaml", "--dry-run") == 0
    assert _envs(project) == []  # a dry run never builds the environment

    assert cli("run", "-c", "wf.yaml") == 0
    [env] = _envs(project)
    python = env / "bin" / "python"
    assert (env / COMPLETE).is_file() and python.exists()
    assert list(env.glob("lib/python*/site-packages/_honed_host_site.pth"))
    step = _step(project)
    assert step["cached"] is False
    assert step["metrics"]["python"] == str(python)  # the worker's own sys.executable
    built = (env / COMPLETE).stat()

    assert cli("run", "-c", "wf.yaml") == 0  # same requirements, same pass: a cache hit
    assert _step(project)["cached"] is True

    _workflow(project, tiny_llama, dtype="float16")  # a new pass runs in the same environment
    assert cli("run", "-c", "wf.yaml") == 0
    step = _step(project)
    assert step["cached"] is False and step["metrics"]["python"] == str(python)
    assert _envs(project) == [env]
    again = (env / COMPLETE).stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)  # not rebuilt

    (project / "reqs.txt").write_text("# nothing to install, version 2\n")  # changed file: new env, rerun
    assert cli("run", "-c", "wf.yaml") == 0
    envs = _envs(project)
    assert len(envs) == 2 and env in envs
    [new] = [e for e in envs if e != env]
    step = _step(project)
    assert step["cached"] is False and step["metrics"]["python"] == str(new / "bin" / "python")


def test_failed_install_leaves_no_env(project: Path, tiny_llama: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "reqs.txt").write_text("definitely-not-a-package-xyz==0.0.1\n")
    _workflow(project, tiny_llama)
    capsys.readouterr()
    assert cli("run", "-c", "wf.yaml") == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    assert "systems.env.requirements_file" in err[0] and "definitely-not-a-package-xyz" in err[0]
    assert _envs(project) == []
    assert not (project / "out" / "footprints.json").exists()


@pytest.mark.parametrize(("system", "reqs", "key", "words"), [
    ({"python_environment_path": "/usr"}, "", "systems.env.managed_env", "exclude each other"),
    ({"type": "LocalSystem"}, "", "systems.env.managed_env", "only a pythonenvironment"),
    ({"managed_env": False}, "", "systems.env.requirements_file", "managed_env: true"),
    ({"managed_env": "true"}, "", "systems.env.managed_env", "true or false"),
    ({"requirements_file": "missing.txt"}, "", "systems.env.requirements_file", "file not found"),
    ({"requirements_file": "reqs.txt"}, None, "systems.env.requirements_file", "file not found"),
])
def test_config_errors_are_one_line(project: Path, tiny_llama: Path, capsys: pytest.CaptureFixture,
                                    system: dict[str, Any], reqs: str | None, key: str, words: str) -> None:
    if reqs is not None:
        (project / "reqs.txt").write_text(reqs)
    _workflow(project, tiny_llama, **system)
    capsys.readouterr()
    assert cli("run", "-c", "wf.yaml") == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    assert key in err[0] and words in err[0].lower(), err[0]
    assert _envs(project) == []
