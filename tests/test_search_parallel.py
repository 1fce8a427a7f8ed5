"""Search trials at once (``max_concurrent_trials``), in a study on the shared cache that several runs join.

The searches are cheap: CastDtype (shared by every trial) then the test pass that copies the data with a
searched ``tag`` (tags of different lengths give different sizes on disk), scored by size on disk.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

import tests.plugin_passes  # noqa: F401  (registers TestAppendData and TestSlowCopy)
from honed import run as run_workflow
from honed.config.load import validate
from honed.config.space import extract_space
from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassConfig, PassContext, get_pass, register_pass
from honed.report.text import summary_text
from honed.search.samplers import make_sampler
from tests.helpers import cli_subprocess, write_config

TAGS = ["a", "b" * 2000, "c" * 4000, "d" * 6000]


class KillConfig(PassConfig):
    mode: Literal["ok", "once", "always"] = Field("ok", description="Whether the worker kills itself.")


class KillWorker(Pass):
    """Copies the model; ``once`` kills its own process the first time (a marker in $HONED_TEST_KILL_DIR says it
    did), ``always`` every time: a worker killed mid-pass, as by the OOM killer."""

    name = "TestKillWorker"
    description = "Test pass: kill the worker process running it."
    config_class = KillConfig
    accepts = ("hf",)

    def run(self, model: ModelHandle, config: KillConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        import shutil

        folder = Path(os.environ["HONED_TEST_KILL_DIR"])
        with open(folder / "starts.txt", "a") as f:
            f.write(config.mode + "\n")
        (output_dir / "partial").write_text("half written")
        marker = folder / f"{config.mode}.killed"
        if config.mode == "always" or (config.mode == "once" and not marker.exists()):
            if multiprocessing.parent_process() is None:
                raise RuntimeError("TestKillWorker kills only worker processes, never the test run")
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        (output_dir / "partial").unlink()
        shutil.copytree(model.path, output_dir, dirs_exist_ok=True)
        return ModelHandle(kind="hf", path=str(output_dir), task=model.task)


if get_pass(KillWorker.name) is None:
    register_pass(KillWorker)


def config(model: Path, tmp: Path, *, cache: Path | None = None, extra: dict[str, Any] | None = None,
           **strategy: Any) -> dict[str, Any]:
    (tmp / "rows.jsonl").write_text('{"phrase": "a", "tone": "joy"}\n')
    return {
        "input_model": {"model_path": str(model)},
        "data_configs": [{"name": "rows", "load_dataset_config": {"data_files": str(tmp / "rows.jsonl")}}],
        "evaluators": {"ev": {"metrics": [{"name": "size", "type": "size_on_disk",
                                           "sub_types": [{"name": "mb", "priority": 1, "higher_is_better": True}]}]}},
        "passes": {"cast": {"type": "CastDtype", "dtype": "float16"},
                   "append": {"type": "TestAppendData", "data_config": "rows", "tag": TAGS},
                   **(extra or {})},
        "engine": {"evaluator": "ev", "output_dir": str(tmp / "out"), "cache_dir": str(cache or tmp / "cache")},
        "search_strategy": {"sampler": "sequential", **strategy},
    }


def by_tag(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["params"]["passes.append.tag"]: t for t in trials}


@pytest.fixture(scope="module")
def sequential_and_concurrent(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    one = run_workflow(validate(config(tiny_llama, tmp_path_factory.mktemp("one"))))
    tmp = tmp_path_factory.mktemp("two")
    two = run_workflow(validate(config(tiny_llama, tmp, max_concurrent_trials=2)))
    return one, two, tmp


def test_concurrent_trials_match_sequential(sequential_and_concurrent: tuple[Any, Any, Path]) -> None:
    one, two, tmp = sequential_and_concurrent
    seq, par = by_tag(one.search["trials"]), by_tag(two.search["trials"])
    assert set(seq) == set(par) == set(TAGS)
    for tag in TAGS:
        assert par[tag]["metrics"]["size-mb"] == pytest.approx(seq[tag]["metrics"]["size-mb"], rel=1e-9)
        assert par[tag]["attempts"] == 1 and par[tag]["wall_s"] > 0
    assert len({t["metrics"]["size-mb"] for t in par.values()}) == 4
    assert [t["params"] for t in one.search["trials"]] == [{"passes.append.tag": t} for t in TAGS]  # in order
    assert len({t["pid"] for t in seq.values()}) == 1 and seq["a"]["pid"] == os.getpid()
    assert len({t["pid"] for t in par.values()}) == 2 and os.getpid() not in {t["pid"] for t in par.values()}
    assert one.search["ranking"] == [3, 2, 1, 0] and two.search["chosen"] == 3
    fp = json.loads((tmp / "out" / "footprints.json").read_text())
    assert {(t["node"], t["pid"], t["attempts"]) for t in fp["search"]["trials"]} == \
        {(t["node"], t["pid"], 1) for t in par.values()}
    assert (tmp / "out" / "1" / "tag.txt").read_text() == TAGS[3]
    # the text report names where each trial ran only when that was more than one process
    assert "node" in summary_text(tmp / "out" / "footprints.json").splitlines()[2]
    assert "node" not in summary_text(one.footprints_path).splitlines()[2]


def test_shared_first_pass_is_computed_once(sequential_and_concurrent: tuple[Any, Any, Path]) -> None:
    _, two, tmp = sequential_and_concurrent
    firsts = [t["steps"][0] for t in two.search["trials"]]
    assert len({s["output_id"] for s in firsts}) == 1
    assert [s["cached"] for s in firsts].count(False) == 1  # the other three waited on its lock, then read it
    meta = json.loads((tmp / "cache" / "entries" / firsts[0]["output_id"] / "meta.json").read_text())
    assert meta["pid"] in {t["pid"] for t in two.search["trials"]}


def test_rerun_joins_the_study(sequential_and_concurrent: tuple[Any, Any, Path], tiny_llama: Path) -> None:
    """A second run of the same search on the same cache (another output folder) runs nothing new: it joins the
    study and reports the trials the first run made."""
    _, two, tmp = sequential_and_concurrent
    again = run_workflow(validate(config(tiny_llama, tmp, max_concurrent_trials=2)), output_dir=tmp / "again")
    assert [(t["index"], t["pid"], t["metrics"]) for t in again.search["trials"]] == \
        [(t["index"], t["pid"], t["metrics"]) for t in two.search["trials"]]
    assert again.search["study"] == two.search["study"] and Path(two.search["study"]).is_file()
    assert (tmp / "again" / "1" / "tag.txt").read_text() == TAGS[3]


def test_two_runs_split_one_study(tiny_llama: Path, tmp_path: Path) -> None:
    """Two `honed run`s started together on one cache: every point runs once, in one of them, and every pass
    key is computed once."""
    cfg = config(tiny_llama, tmp_path, extra={"slow": {"type": "TestSlowCopy"}})
    cfg["passes"]["append"]["tag"] = [*TAGS, "e", "f"]
    path = write_config(tmp_path / "wf.json", cfg)
    env = {"HONED_TEST_SLEEP": "1"}  # each trial's TestSlowCopy takes a second: the runs overlap
    procs = [cli_subprocess("run", "--config", str(path), "--output-dir", str(tmp_path / f"out{i}"), env=env,
                            background=True) for i in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    reports = [json.loads((tmp_path / f"out{i}" / "footprints.json").read_text())["search"] for i in (1, 2)]
    assert all(len(r["trials"]) == 6 for r in reports)  # each shows every trial (finished, or running elsewhere)
    finished = {t["index"]: t for r in reports for t in r["trials"] if t.get("state") != "running"}
    assert sorted(finished) == list(range(6))
    assert {t["params"]["passes.append.tag"] for t in finished.values()} == {*TAGS, "e", "f"}
    runs = {t["run"] for t in finished.values()}
    assert runs == {f"{finished[0]['node']}:{p.pid}" for p in procs}  # both ran some, each trial in one
    computed: dict[str, int] = {}
    for t in finished.values():
        for s in t["steps"]:
            computed[s["output_id"]] = computed.get(s["output_id"], 0) + (not s["cached"])
    assert set(computed.values()) == {1}, computed
    # the study itself: one trial per point, none claimed twice
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(reports[0]["study"]))
    study = optuna.load_study(study_name=Path(reports[0]["study"]).stem, storage=storage)
    keys = [t.user_attrs["key"] for t in study.get_trials() if "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)) == 6
    for entry in (tmp_path / "cache" / "entries").iterdir():
        assert json.loads((entry / "meta.json").read_text())["pid"] in {p.pid for p in procs}


@pytest.fixture(scope="module")
def killed(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    tmp = tmp_path_factory.mktemp("kill")
    kill_dir = tmp / "kills"
    kill_dir.mkdir()
    cfg = config(tiny_llama, tmp, extra={"kill": {"type": "TestKillWorker", "mode": ["ok", "once", "always"]}},
                 max_concurrent_trials=2)
    cfg["passes"]["append"]["tag"] = "a"
    mp = pytest.MonkeyPatch()
    mp.setenv("HONED_TEST_KILL_DIR", str(kill_dir))  # the spawned workers inherit it
    try:
        result = run_workflow(validate(cfg))
    finally:
        mp.undo()
    return result, tmp


def test_a_killed_worker_is_retried_once(killed: tuple[Any, Path]) -> None:
    result, tmp = killed
    trials = {t["params"]["passes.kill.mode"]: t for t in result.search["trials"]}
    assert trials["once"]["attempts"] == 2 and not trials["once"].get("error")
    assert trials["once"]["metrics"]["size-mb"] > 0 and trials["once"]["rank"]
    starts = (tmp / "kills" / "starts.txt").read_text().split()
    assert starts.count("once") == 2 and starts.count("always") == 2  # retried once, never a third time
    fp = json.loads((tmp / "out" / "footprints.json").read_text())
    assert {t["attempts"] for t in fp["search"]["trials"] if t["params"]["passes.kill.mode"] != "ok"} == {2}


def test_a_worker_killed_twice_fails_the_trial_only(killed: tuple[Any, Path]) -> None:
    result, tmp = killed
    trials = {t["params"]["passes.kill.mode"]: t for t in result.search["trials"]}
    always = trials["always"]
    assert always["attempts"] == 2 and "died twice" in always["error"] and always["metrics"] is None
    assert "rank" not in always and trials["ok"]["rank"] and trials["ok"]["metrics"]
    # nothing of the killed pass is in the cache: no entry of it, and its temp folder goes with the next run
    modes = [json.loads((e / "meta.json").read_text())["config"].get("mode")
             for e in (tmp / "cache" / "entries").iterdir()]
    assert "always" not in modes and modes.count("once") == 1
    assert (tmp / "out" / "1" / "footprints.json").is_file()


def _space() -> Any:
    _, space, problems = extract_space({"lora": {"type": "LoRA", "train_data_config": "d", "r": [4, 8, 16, 32, 64]},
                                        "mb": {"type": "ModelBuilder", "precision": ["int4", "int8", "fp32"]}})
    assert not problems
    return space


def _claim_all(journal: str, delay: float) -> list[str]:
    """In a spawned process: claim points of the shared study until none is left (finishing each)."""
    sampler = make_sampler("sequential", _space(), [("acc", True)], 0, journal=Path(journal))
    got = []
    while (claim := sampler.claim()) is not None:
        got.append(json.dumps(claim.point, sort_keys=True))
        time.sleep(delay)
        sampler.finish(claim, {"index": claim.index, "point": claim.point, "metrics": {"acc": 1.0}}, {"acc": 1.0})
    return got


def test_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    """Three processes claiming the 15 points of one study at once: each point goes to exactly one."""
    journal = str(tmp_path / "studies" / "s.journal")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        got = pool.starmap(_claim_all, [(journal, 0.0)] * 3)
    claimed = [p for g in got for p in g]
    assert len(claimed) == len(set(claimed)) == 15


def _claim_and_die(journal: str) -> None:
    sampler = make_sampler("sequential", _space(), [("acc", True)], 0, journal=Path(journal))
    assert sampler.claim() is not None
    os._exit(0)  # the run dies with its trial running


def test_points_of_a_dead_run_are_run_again(tmp_path: Path) -> None:
    journal = tmp_path / "studies" / "s.journal"
    proc = multiprocessing.get_context("spawn").Process(target=_claim_and_die, args=(str(journal),))
    proc.start()
    proc.join(60)
    sampler = make_sampler("sequential", _space(), [("acc", True)], 0, journal=journal)
    claim = sampler.claim()
    assert claim is not None and claim.point == {"passes.lora.r": 4, "passes.mb.precision": "int4"}
    assert claim.index == 1  # the dead run's trial keeps its place; its point is run again


def test_points_of_a_run_gone_on_another_node_are_run_again(tmp_path: Path) -> None:
    """A run on another machine (a restarted pod) is judged by its heartbeat file beside the journal: while it is
    fresh the point stays taken; once stale (or missing) the point is claimed again."""
    from honed.search.samplers import STALE_S

    journal = tmp_path / "studies" / "s.journal"
    first = make_sampler("sequential", _space(), [("acc", True)], 0, journal=journal)
    claim = first.claim()
    assert claim is not None
    claim.trial.set_user_attr("owner", {"node": "pod-a", "pid": 7})  # as if pod-a claimed it
    beat = tmp_path / "studies" / "s.runs" / "pod-a-7"
    beat.touch()
    other = make_sampler("sequential", _space(), [("acc", True)], 0, journal=journal)
    assert other.claim().point != claim.point  # pod-a is alive: its point is taken
    old = time.time() - STALE_S - 1
    os.utime(beat, (old, old))
    again = make_sampler("sequential", _space(), [("acc", True)], 0, journal=journal).claim()
    assert again is not None and again.point == claim.point  # pod-a is gone: its point runs again


def test_tpe_uses_constant_liar(tmp_path: Path) -> None:
    sampler = make_sampler("tpe", _space(), [("acc", True)], 0, journal=tmp_path / "studies" / "t.journal")
    assert sampler.study.sampler._constant_liar is True


def test_a_full_cache_clean_forgets_the_study(tiny_llama: Path, tmp_path: Path) -> None:
    """After `honed cache clean`, the same search runs its trials again (a study left behind would only report
    the results of entries that are gone); a clean by age keeps studies."""
    from tests.helpers import cli

    cfg = config(tiny_llama, tmp_path)
    cfg["passes"]["append"]["tag"] = TAGS[:2]
    first = run_workflow(validate(cfg))
    assert all(t["steps"][-1]["cached"] is False for t in first.search["trials"])
    assert cli("cache", "clean", "--cache-dir", str(tmp_path / "cache"), "--older-than", "1") == 0
    assert Path(first.search["study"]).is_file()
    assert cli("cache", "clean", "--cache-dir", str(tmp_path / "cache")) == 0
    assert not Path(first.search["study"]).exists()
    again = run_workflow(validate(cfg))
    assert len(again.search["trials"]) == 2
    assert all(t["steps"][-1]["cached"] is False for t in again.search["trials"])


def test_a_changed_library_starts_a_new_study(tiny_llama: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's key holds the first trial's pass keys: after torch changes (here, as the interpreter reports
    it), a rerun does not report the old results from the study; it starts a new one and runs the trials again."""
    import honed.systems.local as local

    cfg = config(tiny_llama, tmp_path)
    cfg["passes"]["append"]["tag"] = TAGS[:2]
    first = run_workflow(validate(cfg))
    again = run_workflow(validate(cfg))
    assert again.search["study"] == first.search["study"]  # nothing changed: joined, nothing ran
    real = local.library_versions
    monkeypatch.setattr(local, "library_versions", lambda names: {**real(names), "torch": "99.0"})
    changed = run_workflow(validate(cfg))
    assert changed.search["study"] != first.search["study"]
    assert all(t["steps"][-1]["cached"] is False for t in changed.search["trials"])  # every trial ran again


def test_a_trial_whose_evaluation_fails_is_recorded_and_the_search_goes_on(tiny_llama: Path, tmp_path: Path) -> None:
    """A runtime that cannot score one trial's model (here a custom metric raising, as onnxruntime-genai does on
    some fp16 CPU builds) fails that trial in one line; the other trials are ranked."""
    script = tmp_path / "metric.py"
    script.write_text("from pathlib import Path\n\ndef score(model, rows):\n"
                      "    tag = (Path(model.path) / 'tag.txt').read_text()\n"
                      "    if tag.startswith('b'):\n        raise RuntimeError('this runtime cannot run the model')\n"
                      "    return {'len': len(tag)}\n")
    cfg = config(tiny_llama, tmp_path)
    cfg["passes"]["append"]["tag"] = TAGS[:3]
    cfg["evaluators"]["ev"]["metrics"] = [{"name": "mine", "type": "custom",
                                           "user_config": {"user_script": str(script), "evaluate_func": "score"},
                                           "sub_types": [{"name": "len", "priority": 1, "higher_is_better": True}]}]
    cfg["engine"]["evaluate_input_model"] = False
    result = run_workflow(validate(cfg))
    trials = by_tag(result.search["trials"])
    assert "evaluating the output model (ev) failed: RuntimeError: this runtime cannot run the model" in \
        trials[TAGS[1]]["error"]
    assert trials[TAGS[0]]["metrics"]["mine-len"] == 1 and trials[TAGS[2]]["metrics"]["mine-len"] == len(TAGS[2])
    assert result.search["chosen"] == trials[TAGS[2]]["index"]
