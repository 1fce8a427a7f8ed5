"""Safety: honed never deletes, overwrites or runs what the user did not ask, and damage heals.

Every case runs with a sandboxed HOME and working directory, under a tripwire that fails the test
instead of letting a broken honed write outside the test's folders (the "/" and system-folder cases
would otherwise damage the machine they run on). Each checks a defect found by trying honed the way
a careful user (or a hostile file) would; see the issue "Safety first". Defects 6 (no network) and 8
(hash-seed independence, resume) need fresh interpreters: tests/test_network.py and
tests/test_training_safety.py; tests/test_fuzz_config.py and tests/test_config_errors.py hold the
config cases (10).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import cli, engine_project, write_config


def _tripwire(monkeypatch: pytest.MonkeyPatch, allowed: list[Path]) -> None:
    """Refuse (AssertionError) every file-system write honed's output and cache code makes outside ``allowed``."""
    roots = [str(Path(a).resolve()) for a in allowed]

    def check(path: object) -> None:
        text = os.path.abspath(os.fspath(path))  # type: ignore[call-overload]
        if not any(text == r or text.startswith(r + os.sep) for r in roots):
            raise AssertionError(f"tripwire: honed tried to write {text}")

    def guard(fn, *which: int, kw: str | None = None):
        def wrapped(*args, **kwargs):
            for i in which:
                if len(args) > i:
                    check(args[i])
            if kw and kwargs.get(kw) is not None:
                check(kwargs[kw])
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "replace", guard(os.replace, 1))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, 0))
    monkeypatch.setattr(os, "unlink", guard(os.unlink, 0))
    monkeypatch.setattr(os, "rmdir", guard(os.rmdir, 0))
    import shutil

    monkeypatch.setattr(shutil, "copyfile", guard(shutil.copyfile, 1))
    monkeypatch.setattr(shutil, "rmtree", guard(shutil.rmtree, 0))
    monkeypatch.setattr(tempfile, "mkdtemp", guard(tempfile.mkdtemp, 2, kw="dir"))
    monkeypatch.setattr(tempfile, "mkstemp", guard(tempfile.mkstemp, 2, kw="dir"))


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the working directory inside tmp_path, behind the tripwire; returns the working directory."""
    _tripwire(monkeypatch, [tmp_path.parent.parent, Path(tempfile.gettempdir())])
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setenv("HONED_TEST_LOG", str(tmp_path / "ran.log"))
    return work


@pytest.fixture
def project(sandbox: Path, tiny_llama: Path) -> Path:
    return engine_project(sandbox, tiny_llama)


def ran(project: Path) -> list[str]:
    log = project.parent / "ran.log"
    lines = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def steps(out: Path) -> dict[str, bool]:
    fp = json.loads((out / "footprints.json").read_text())
    return {s["name"]: s["cached"] for s in fp["steps"]}


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256 (a snapshot to compare)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. a run deletes only what honed created -------------------------------------------------------

@pytest.mark.parametrize("cache_dir", ["proj", "."])
def test_a_folder_that_is_not_a_cache_is_refused_and_kept(project: Path, cache_dir: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    (project / "proj" / "tmp" / "experiment_42").mkdir(parents=True)
    (project / "proj" / "tmp" / "experiment_42" / "notes.txt").write_text("mine")
    before = tree(project)
    assert cli("run", "-c", "wf.yaml", "--cache-dir", cache_dir) == 2
    line = one_error(capsys)
    assert "cache_dir" in line and "not a honed cache" in line
    assert tree(project) == before
    assert ran(project) == []


def test_the_system_temp_folder_and_root_are_refused_as_cache(project: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    fake_tmp = tmp_path / "systmp"
    (fake_tmp / "someone-elses").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(fake_tmp))
    for root in (str(fake_tmp), "/"):
        assert cli("run", "-c", "wf.yaml", "--cache-dir", root) == 2
        assert "cache_dir" in one_error(capsys)
    assert (fake_tmp / "someone-elses").is_dir()


def test_cleanup_removes_only_honed_temp_names(project: Path) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    tmp = project / "cache" / "tmp"
    mine = tmp / "experiment_42"
    mine.mkdir()
    (mine / "data.bin").write_bytes(b"x")
    stale = tmp / ("ab" * 16 + ".12345.abcd_efg")  # the shape of a temp folder a killed run leaves
    stale.mkdir()
    assert cli("run", "-c", "wf.yaml") == 0
    assert (mine / "data.bin").read_bytes() == b"x" and not stale.exists()
    assert cli("cache", "clean", "--cache-dir", "cache") == 0
    assert (mine / "data.bin").read_bytes() == b"x"
    assert not any((project / "cache" / "entries").iterdir())


def test_cache_commands_refuse_a_folder_that_is_not_a_cache(sandbox: Path) -> None:
    (sandbox / "stuff" / "tmp" / "keep").mkdir(parents=True)
    assert cli("cache", "clean", "--cache-dir", "stuff") == 2
    assert cli("cache", "ls", "--cache-dir", ".") == 2
    assert (sandbox / "stuff" / "tmp" / "keep").is_dir()


def test_a_cache_from_an_older_honed_without_marker_is_adopted(project: Path) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    (project / "cache" / ".honed-cache").unlink()
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project / "out") == {"cast": True, "append": True}


# -- 2. the manifest is not trusted to point outside output_dir --------------------------------------

def test_manifest_entries_outside_the_output_dir_are_never_deleted(project: Path, tmp_path: Path) -> None:
    out = project / "out"
    out.mkdir()
    victim, absolute = project / "victim.txt", tmp_path / "victim2.txt"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.txt").write_text("keep")
    (out / "link").symlink_to(outside)
    for f in (victim, absolute):
        f.write_text("keep")
    names = ["../victim.txt", str(absolute), "link/linked.txt", "sub/../../victim.txt"]
    (out / ".honed-manifest.json").write_text(json.dumps(names))
    assert cli("run", "-c", "wf.yaml") == 0
    assert cli("run", "-c", "wf.yaml") == 0
    assert victim.read_text() == absolute.read_text() == (outside / "linked.txt").read_text() == "keep"
    manifest = json.loads((out / ".honed-manifest.json").read_text())
    manifest["files"].update({n: [4, 0] for n in names})
    (out / ".honed-manifest.json").write_text(json.dumps(manifest))
    assert cli("run", "-c", "wf.yaml") == 0
    assert victim.read_text() == absolute.read_text() == (outside / "linked.txt").read_text() == "keep"


# -- 3. files honed did not write are not overwritten; roots are refused -----------------------------

def test_user_files_in_output_dir_are_not_overwritten(project: Path, capsys: pytest.CaptureFixture) -> None:
    out = project / "out"
    out.mkdir()
    (out / "config.json").write_text("my config")
    (out / "report.html").write_text("my report")
    (out / "notes.md").write_text("mine")
    before = tree(out)
    assert cli("run", "-c", "wf.yaml") == 2
    line = one_error(capsys)
    assert "config.json" in line and "report.html" in line and "notes.md" not in line
    assert tree(out) == before  # nothing written, nothing removed
    # Moved away, the run writes its output and leaves the unrelated file alone.
    (out / "config.json").unlink()
    (out / "report.html").unlink()
    assert cli("run", "-c", "wf.yaml") == 0
    assert (out / "notes.md").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_a_file_the_user_changed_after_honed_wrote_it_is_theirs(project: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    out = project / "out"
    (out / "tag.txt").write_text("edited by me")
    cfg = yaml.safe_load((project / "wf.yaml").read_text())
    del cfg["passes"]["append"]  # the next run would drop tag.txt as stale
    write_config(project / "wf.yaml", cfg)
    assert cli("run", "-c", "wf.yaml") == 0
    assert (out / "tag.txt").read_text() == "edited by me"
    cfg["passes"]["append"] = {"type": "TestAppendData", "data_config": "rows", "tag": "b"}
    write_config(project / "wf.yaml", cfg)
    assert cli("run", "-c", "wf.yaml") == 2  # would overwrite it
    assert "tag.txt" in one_error(capsys) and (out / "tag.txt").read_text() == "edited by me"


def test_report_command_does_not_overwrite_a_user_report(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    assert cli("report", "out") == 0
    assert cli("run", "-c", "wf.yaml") == 0  # the regenerated report is still honed's
    (project / "out" / "report.html").write_text("mine!")
    assert cli("report", "out") == 2
    assert (project / "out" / "report.html").read_text() == "mine!"


@pytest.mark.parametrize("where", ["/", "~", "home-parent", "/usr/lib", "file"])
def test_roots_home_system_folders_and_files_are_refused_before_any_pass(
        project: Path, where: str, capsys: pytest.CaptureFixture) -> None:
    home = Path(os.environ["HOME"])
    if where == "home-parent":
        where = str(home.parent)
    elif where == "file":
        (project / "a-file").write_text("x")
        where = "a-file"
    assert cli("run", "-c", "wf.yaml", "--output-dir", where) == 2
    line = one_error(capsys)
    assert "output_dir" in line
    assert ran(project) == []  # refused before the first pass
    assert sorted(p.name for p in home.iterdir()) == []


def test_the_writability_probe_sees_what_permission_bits_do_not() -> None:
    from honed.util.fs import writable_problem

    # sysfs refuses new files even to root (tests run as root in CI, where mode bits grant everything).
    assert "not writable" in (writable_problem(Path("/sys/kernel/honed-out")) or "")
    assert writable_problem(Path(tempfile.gettempdir()) / "honed-probe-parent" / "out") is None


def test_a_read_only_output_folder_is_found_before_any_pass(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    real = tempfile.mkstemp

    def read_only(*args: object, **kw: object) -> tuple[int, str]:
        if str(kw.get("dir", "")).startswith(str(project / "ro")):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kw)

    (project / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cli("run", "-c", "wf.yaml", "--output-dir", "ro/out") == 2
    assert "read-only file system" in one_error(capsys)
    assert ran(project) == []


# -- 4. the output folder is replaced whole or not at all --------------------------------------------

def test_a_full_disk_while_writing_leaves_the_old_output_intact(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    out = project / "out"
    before = tree(out)
    cfg = yaml.safe_load((project / "wf.yaml").read_text())
    cfg["passes"]["cast"]["dtype"] = "float16"  # a new model: every weight file changes
    write_config(project / "wf.yaml", cfg)
    import honed.engine.outputs as outputs

    real_copy, copied = outputs.shutil.copyfile, []

    def copy_then_fill_disk(src: str, dst: str, **kw: object) -> None:
        if ".honed-staging" in str(dst):
            if copied:
                raise OSError(errno.ENOSPC, "No space left on device")
            copied.append(dst)
        real_copy(src, dst, **kw)

    monkeypatch.setattr(outputs.shutil, "copyfile", copy_then_fill_disk)
    assert cli("run", "-c", "wf.yaml") == 2
    assert "no space left" in one_error(capsys)
    assert tree(out) == before  # the old model, footprints and manifest, and no temp file
    assert not [p for p in out.iterdir() if p.name.startswith(".honed-staging")]
    monkeypatch.undo()


def test_a_write_killed_while_renaming_is_finished_by_the_next_run(project: Path, tiny_llama: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import honed.engine.outputs as outputs

    assert cli("run", "-c", "wf.yaml") == 0
    cfg = yaml.safe_load((project / "wf.yaml").read_text())
    cfg["passes"]["append"]["tag"] = "killed"
    write_config(project / "wf.yaml", cfg)
    real_replace, moved = os.replace, []

    def die_after_one(src: str, dst: str) -> None:
        if ".honed-staging" in str(src):
            if moved:
                raise KeyboardInterrupt  # stands in for a kill between two renames
            moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", die_after_one)
    assert cli("run", "-c", "wf.yaml") == 130
    monkeypatch.undo()
    out = project / "out"
    assert (out / ".honed-commit.json").is_file()  # the journal says what was left to do
    from honed.engine.outputs import recover

    recover(out)
    assert (out / "tag.txt").read_text() == "killed"
    assert not (out / ".honed-commit.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".honed-staging")]
    fp = json.loads((out / "footprints.json").read_text())
    assert fp["steps"][1]["config"]["tag"] == "killed"


# -- 9. a damaged cache heals ------------------------------------------------------------------------

def _entry_of(project: Path, pass_name: str) -> Path:
    for d in (project / "cache" / "entries").iterdir():
        if json.loads((d / "meta.json").read_text())["pass"] == pass_name:
            return d
    raise AssertionError(pass_name)


@pytest.mark.parametrize("damage", ["truncated-handle", "emptied", "bit-flip", "missing-file", "malformed-records",
                                    "deep-meta"])
def test_a_damaged_entry_is_a_miss_and_is_recomputed(project: Path, damage: str) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    good = tree(project / "out")
    entry = _entry_of(project, "cast")
    weights = entry / "model" / "model.safetensors"
    if damage == "truncated-handle":
        text = (entry / "handle.json").read_text()
        (entry / "handle.json").write_text(text[: len(text) // 2])
    elif damage == "emptied":
        for f in entry.rglob("*"):
            if f.is_file():
                f.unlink()
    elif damage == "bit-flip":
        data = bytearray(weights.read_bytes())
        data[len(data) - 3] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "malformed-records":
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, "files": [1]}))
    elif damage == "deep-meta":
        (entry / "meta.json").write_text("[" * 100000 + "]" * 100000)
    else:
        weights.unlink()
    assert cli("cache", "ls", "--cache-dir", "cache") == 0
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project / "out") == {"cast": False, "append": True}  # recomputed, same key, same bytes
    assert tree(project / "out") == {**good, "footprints.json": tree(project / "out")["footprints.json"],
                                     ".honed-manifest.json": tree(project / "out")[".honed-manifest.json"],
                                     "report.html": tree(project / "out")["report.html"]}
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project / "out") == {"cast": True, "append": True}


# -- 12. remembered hashes live in the cache and miss no edit ----------------------------------------

def test_hash_memo_is_inside_the_cache_and_sees_an_edit_with_the_mtime_restored(project: Path) -> None:
    data = project / "rows.jsonl"
    old = time.time() - 3600
    os.utime(data, (old, old))
    time.sleep(2.1)  # past the racy window, so the first run remembers the digest
    assert cli("run", "-c", "wf.yaml") == 0
    assert (project / "cache" / "hashes.sqlite").is_file()
    assert not (Path(os.environ["HOME"]) / ".cache" / "honed").exists()
    st = data.stat()
    data.write_text(data.read_text().replace('"a"', '"b"'))  # same size, new content
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_size == st.st_size and data.stat().st_mtime_ns == st.st_mtime_ns
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project / "out") == {"cast": True, "append": False}
    assert (project / "out" / "data-rows.jsonl").read_text().startswith('{"phrase": "b"')


@pytest.mark.parametrize("damage", ["stats", "arrow"])
def test_damaged_tokenized_data_is_tokenized_again(sandbox: Path, tiny_llama: Path, damage: str) -> None:
    from transformers import AutoTokenizer

    from honed.data import build_datasets
    from honed.data.config import DataConfig

    (sandbox / "rows.jsonl").write_text("".join(json.dumps({"t": f"row {i}", "y": "a"}) + "\n" for i in range(8)))
    cfg = DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": str(sandbox / "rows.jsonl")},
                                     "pre_process_data_config": {"text_template": "{t} -> {y}"}})
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    first = build_datasets(cfg, tokenizer=tok, cache_dir=sandbox / "c")
    assert first.stats["cache"] == "miss"
    (entry,) = (sandbox / "c" / "tokenized").iterdir()
    if damage == "stats":
        (entry / "stats.json").write_text('{"rows": ')
    else:
        for f in (entry / "train").glob("*.arrow"):
            f.write_bytes(f.read_bytes()[:40])
    again = build_datasets(cfg, tokenizer=tok, cache_dir=sandbox / "c")
    assert again.stats["cache"] == "miss" and again.train["input_ids"] == first.train["input_ids"]
    assert build_datasets(cfg, tokenizer=tok, cache_dir=sandbox / "c").stats["cache"] == "hit"


# -- 5. blocked code stays blocked; 7. garbage numbers are refused -------------------------------------

@pytest.mark.parametrize("value", ["false", "False", 0, 2, 0.5, "abc"])
def test_trust_remote_code_accepts_only_booleans_and_runs_nothing(project: Path, tiny_llama: Path, value: object,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from tests.test_training_safety import custom_code_model

    marker = project / "custom-code-ran"
    model = custom_code_model(tiny_llama, project / "custom", marker)
    cfg = yaml.safe_load((project / "wf.yaml").read_text())
    cfg["input_model"] = {"model_path": str(model), "load_kwargs": {"trust_remote_code": value}}
    write_config(project / "wf.yaml", cfg)
    assert cli("run", "-c", "wf.yaml") == 2
    assert "input_model.load_kwargs.trust_remote_code" in one_error(capsys)
    assert not marker.exists() and ran(project) == []


@pytest.mark.parametrize("key,value", [("learning_rate", ".nan"), ("learning_rate", ".inf"), ("weight_decay", "-.inf"),
                                       ("learning_rate", "1e300"), ("max_grad_norm", ".nan"),
                                       ("max_steps", "true"), ("max_steps", "1000000000000000000"),
                                       ("num_train_epochs", "1e30")])
def test_non_finite_or_absurd_training_numbers_are_refused(project: Path, tiny_llama: Path, key: str, value: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    (project / "lora.yaml").write_text(
        f"input_model: {{model_path: {project / 'tiny'}}}\n"
        "data_configs: [{name: rows, load_dataset_config: {data_files: rows.jsonl},\n"
        "  pre_process_data_config: {text_template: '{phrase} -> {tone}'}}]\n"
        f"passes: {{lora: {{type: LoRA, train_data_config: rows, training_args: {{max_steps: 1, {key}: {value}}}}}}}\n")
    import shutil

    shutil.copytree(tiny_llama, project / "tiny")
    assert cli("run", "-c", "lora.yaml", "--dry-run") == 2
    assert f"passes.lora.training_args.{key}" in one_error(capsys)


def test_a_root_or_system_folder_in_a_config_string_is_not_hashed() -> None:
    from honed.util.hashing import with_content_hashes

    start = time.perf_counter()
    assert with_content_hashes({"model_type": "/", "x": ["/usr", "/etc"]}) == {"model_type": "/", "x": ["/usr", "/etc"]}
    assert time.perf_counter() - start < 1.0



# -- what a fresh user found next (adversarial review) -------------------------------------------------

def test_weights_that_diverge_on_the_last_step_fail_the_pass(project: Path, tiny_llama: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    model = project / "huge"
    shutil.copytree(tiny_llama, model)
    weights = load_file(model / "model.safetensors")
    save_file({k: v * 1e37 if "embed" in k or "lm_head" in k else v for k, v in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})
    (project / "lora.yaml").write_text(
        f"input_model: {{model_path: {model}}}\n"
        "data_configs: [{name: rows, load_dataset_config: {data_files: rows.jsonl},\n"
        "  pre_process_data_config: {text_template: '{phrase} -> {tone}'}}]\n"
        "passes: {lora: {type: LoRA, r: 4, train_data_config: rows, training_args: {max_steps: 1}}}\n"
        "engine: {cache_dir: cache, output_dir: out}\n")
    assert cli("run", "-c", "lora.yaml") == 2
    assert "not finite after step 1" in one_error(capsys)
    assert not any((project / "cache" / "entries").iterdir()) and not (project / "out").exists()


def test_a_huge_template_width_is_refused_before_any_pass(project: Path, capsys: pytest.CaptureFixture) -> None:
    for template in ("{phrase:>100000000} {tone}", "{phrase.upper} {tone}", "{phrase[0]} {tone}"):
        cfg = yaml.safe_load((project / "wf.yaml").read_text())
        cfg["data_configs"][0]["pre_process_data_config"] = {"text_template": template}
        write_config(project / "wf.yaml", cfg)
        assert cli("run", "-c", "wf.yaml", "--dry-run") == 2
        assert "text_template" in one_error(capsys)


def test_damaged_hash_memo_and_manifest_are_rebuilt(project: Path) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    (project / "cache" / "hashes.sqlite").write_bytes(b"not a database" * 100)
    (project / "out" / ".honed-manifest.json").write_text("[" * 100000 + "]" * 100000)
    (project / "out" / "model.safetensors").unlink()  # no manifest: honed must not claim the other files
    assert cli("run", "-c", "wf.yaml") == 2  # config.json & co. are now unknown files: refused, not overwritten
    for f in (project / "out").iterdir():
        f.unlink()
    assert cli("run", "-c", "wf.yaml") == 0
    assert steps(project / "out") == {"cast": True, "append": True}


def test_a_cache_folder_replaced_by_a_file_is_one_line(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    import shutil

    shutil.rmtree(project / "cache" / "locks")
    (project / "cache" / "locks").write_text("x")
    assert cli("run", "-c", "wf.yaml") == 2
    assert "locks" in one_error(capsys)


def test_a_planted_journal_deletes_and_claims_nothing(project: Path) -> None:
    assert cli("run", "-c", "wf.yaml") == 0
    out = project / "out"
    (out / "user.txt").write_text("U1")
    (out / "user2.txt").write_text("U2")
    (out / "config.json").write_text('{"edited": 1}')
    (out / ".honed-commit.json").write_text(json.dumps({
        "staging": ".honed-staging-nothere", "files": {"user.txt": [2, 0], "footprints.json": [1, 0]},
        "remove": ["user2.txt", "config.json"]}))
    assert cli("run", "-c", "wf.yaml") == 2  # config.json is the user's now
    assert (out / "user2.txt").read_text() == "U2" and (out / "config.json").read_text() == '{"edited": 1}'
    assert "user.txt" not in json.loads((out / ".honed-manifest.json").read_text())["files"]


def test_a_pickle_checkpoint_is_one_line_and_never_unpickled(sandbox: Path, tiny_llama: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    import shutil

    import torch

    model = sandbox / "pickled"
    shutil.copytree(tiny_llama, model)
    (model / "model.safetensors").unlink()
    marker = sandbox / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    torch.save({"model.embed_tokens.weight": Evil()}, model / "pytorch_model.bin")
    from honed.errors import UserError
    from honed.models.handle import ModelHandle
    from honed.models.loaders import load_model

    with pytest.raises(UserError, match="pickle checkpoint"):
        load_model(ModelHandle(kind="hf", path=str(model)))
    assert not marker.exists()
