"""The engine: cached reruns, exactly-the-affected reruns, kills, concurrent runs, failures, outputs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import cli, cli_subprocess, engine_project, write_config


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HONED_TEST_LOG", str(tmp_path / "ran.log"))
    return engine_project(tmp_path, tiny_llama)


def ran(project: Path) -> list[str]:
    log = project / "ran.log"
    lines = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def steps(project: Path) -> dict[str, bool]:
    fp = json.loads((project / "out" / "footprints.json").read_text())
    return {s["name"]: s["cached"] for s in fp["steps"]}


def edit_config(project: Path, **changes: object) -> None:
    import yaml

    cfg = yaml.safe_load((project / "wf.yaml").read_text())
    for path, value in changes.items():
        name, key = path.split("__")
        cfg["passes"][name][key] = value
    write_config(project / "wf.yaml", cfg)


def test_rerun_is_free_and_edits_rerun_exactly_the_affected_passes(project: Path) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    assert ran(project) == ["append"]  # CastDtype does not log; its cache state is in footprints
    assert steps(project) == {"cast": False, "append": False}

    assert cli("run", "-c", "wf.yaml") == 0
    assert ran(project) == [] and steps(project) == {"cast": True, "append": True}

    # One byte of the data file: only the pass that reads it.
    (project / "rows.jsonl").write_text('{"phrase": "b", "tone": "joy"}\n')
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project) == {"cast": True, "append": False}
    assert (project / "out" / "data-rows.jsonl").read_text().startswith('{"phrase": "b"')

    # A parameter of the second pass: only that pass.
    edit_config(project, append__tag="b")
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project) == {"cast": True, "append": False}
    assert (project / "out" / "tag.txt").read_text() == "b"

    # A parameter of the first pass: it and everything after it.
    edit_config(project, cast__dtype="float16")
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project) == {"cast": False, "append": False}


def test_input_model_identity_is_its_content(project: Path, tiny_llama: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_llama, copy)
    edit = (project / "wf.yaml").read_text().replace(str(tiny_llama), str(copy))
    assert cli("run", "-c", "wf.yaml") == 0
    (project / "wf.yaml").write_text(edit)
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project) == {"cast": True, "append": True}  # same bytes, other path: cached
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project) == {"cast": False, "append": False}


def test_failed_pass_is_not_cached(project: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    raw = yaml.safe_load((project / "wf.yaml").read_text())
    raw["passes"] = {"slow": {"type": "TestSlowCopy", "fail": True}}
    write_config(project / "fail.yaml", raw)
    for _ in range(2):
        assert cli("run", "-c", "fail.yaml") == 1
        err = capsys.readouterr().err
        assert "pass 'slow' failed" in err and "boom" in err and "Traceback" not in err
    assert ran(project) == ["slow", "slow"]  # ran both times: nothing cached
    assert not any((project / "cache" / "entries").iterdir())
    assert not any((project / "cache" / "tmp").iterdir())


def _slow_config(project: Path) -> None:
    import yaml

    raw = yaml.safe_load((project / "wf.yaml").read_text())
    raw["passes"] = {"cast": raw["passes"]["cast"], "slow": {"type": "TestSlowCopy"}}
    write_config(project / "slow.yaml", raw)


def _wait_for(path: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        if time.time() > end:
            raise TimeoutError(path)
        time.sleep(0.05)


def test_sigkill_mid_pass_then_rerun_completes(project: Path) -> None:
    _slow_config(project)
    started = project / "started"
    proc = cli_subprocess("run", "-c", "slow.yaml", cwd=project, background=True,
                          env={"HONED_TEST_SLEEP": "60", "HONED_TEST_STARTED": str(started)})
    _wait_for(started)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entries = project / "cache" / "entries"
    assert len(list(entries.iterdir())) == 1  # only the pass that finished (cast)
    assert len(list((project / "cache" / "tmp").iterdir())) == 1  # the killed pass's half output
    res = cli_subprocess("run", "-c", "slow.yaml", cwd=project)
    assert res.returncode == 0, res.stderr
    assert len(list(entries.iterdir())) == 2
    assert not any((project / "cache" / "tmp").iterdir())  # stale temp removed
    assert not (project / "out" / "partial").exists() and (project / "out" / "model.safetensors").exists()
    assert steps(project) == {"cast": True, "slow": False}


def test_concurrent_runs_share_the_cache(project: Path) -> None:
    _slow_config(project)
    procs = [cli_subprocess("run", "-c", "slow.yaml", "--output-dir", f"out{i}", cwd=project, background=True,
                            env={"HONED_TEST_SLEEP": "1"}) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert ran(project) == ["slow"]  # computed once; the other run waited and took it from the cache
    for i in range(2):
        assert (project / f"out{i}" / "model.safetensors").exists()


def test_output_dir_holds_the_final_model_and_drops_stale_files(project: Path) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    out = project / "out"
    assert {"config.json", "model.safetensors", "tag.txt", "footprints.json"} <= {p.name for p in out.iterdir()}
    (out / "mine.txt").write_text("user file")
    import yaml

    raw = yaml.safe_load((project / "wf.yaml").read_text())
    del raw["passes"]["append"]
    write_config(project / "wf.yaml", raw)
    assert cli("run", "-c", "wf.yaml") == 0
    names = {p.name for p in out.iterdir()}
    assert "tag.txt" not in names and "model.safetensors" in names
    assert (out / "mine.txt").read_text() == "user file"
    fp = json.loads((out / "footprints.json").read_text())
    assert fp["steps"][0]["config"] == {"dtype": "bfloat16"} and fp["output_model"]["kind"] == "hf"


def test_python_api_returns_outputs(project: Path) -> None:
    import honed
    import tests.plugin_passes  # noqa: F401

    result = honed.run(project / "wf.yaml")
    assert result.model is not None and result.model.kind == "hf"
    assert [s.name for s in result.steps] == ["cast", "append"]
    assert result.footprints_path.exists()


def test_cache_ls_and_clean(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    capsys.readouterr()
    assert cli("cache", "ls", "--cache-dir", "cache") == 0
    assert "CastDtype" in capsys.readouterr().out
    assert cli("cache", "clean", "--cache-dir", "cache") == 0
    assert not any((project / "cache" / "entries").iterdir())
    assert cli("cache", "ls", "--cache-dir", "nowhere") == 2


def test_python_environment_system_runs_passes_in_another_interpreter(project: Path) -> None:
    import sys

    import yaml

    raw = yaml.safe_load((project / "wf.yaml").read_text())
    raw["systems"] = {"env": {"type": "PythonEnvironment", "python_environment_path": sys.prefix}}
    raw["engine"]["host"] = "env"
    del raw["passes"]["append"]  # test passes are registered only in this interpreter
    write_config(project / "env.yaml", raw)
    assert cli("run", "-c", "env.yaml") == 0
    fp = json.loads((project / "out" / "footprints.json").read_text())
    assert fp["steps"][0]["metrics"]["python"] == str(Path(sys.prefix) / "bin" / "python")
    assert fp["steps"][0]["metrics"]["parameters"] > 0
    raw["systems"]["env"]["python_environment_path"] = str(project / "no-venv")
    write_config(project / "env.yaml", raw)
    assert cli("run", "-c", "env.yaml") == 2
