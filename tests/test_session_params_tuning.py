"""OrtSessionParamsTuning: what is tried, what is chosen, where the choice is stored, and that honed's
runtime loads the model with it.  Timing assertions are about structure and consistency, never speed; the
selection itself is checked with measurements replaced by fixed numbers."""

from __future__ import annotations

import json
import logging
import math
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from honed.errors import ConfigError, UserError
from honed.models.handle import ModelHandle
from honed.models.onnx_runtime import SETTINGS_FILE, OnnxSession, physical_cores
from honed.passes import ort_session_params_tuning as spt
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator

PASS = "OrtSessionParamsTuning"
# Small but complete grid: 2 modes x 2 levels x 2 intra counts (parallel: x 1 inter count) = 8 trials.
GRID = {"execution_mode_list": [0, "parallel"], "opt_level_list": [1, "ORT_ENABLE_ALL"],
        "intra_thread_num_list": [1, 2], "inter_thread_num_list": [2], "warmup_num": 1, "repeat_test_num": 2}
GRID_KEYS = {(0, 1, 1, None), (0, 1, 2, None), (0, 99, 1, None), (0, 99, 2, None),
             (1, 1, 1, 2), (1, 1, 2, 2), (1, 99, 1, 2), (1, 99, 2, 2)}


def _ctx(tmp: Path, target: Accelerator | None = None, data_configs: dict | None = None) -> PassContext:
    return PassContext(pass_name="tune", host=Accelerator(), target=target or Accelerator(),
                       data_configs=data_configs or {}, work_dir=tmp / "work", cache_dir=tmp / "cache")


def _run(name: str, src: ModelHandle, tmp: Path, target: Accelerator | None = None,
         data_configs: dict | None = None, **options: Any) -> tuple[ModelHandle, PassContext]:
    cls = get_pass(name)
    ctx = _ctx(tmp, target, data_configs)
    out = tmp / "out"
    out.mkdir(parents=True)
    return cls().run(src, cls.config_class(**options), out, ctx), ctx


@pytest.fixture(scope="module")
def onnx_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    handle, _ = _run("OnnxConversion", ModelHandle(kind="hf", path=str(tiny_llama)), tmp_path_factory.mktemp("conv"))
    return handle


@pytest.fixture(scope="module")
def genai_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    handle, _ = _run("ModelBuilder", ModelHandle(kind="hf", path=str(tiny_llama)), tmp_path_factory.mktemp("mb"),
                     precision="fp32")
    return handle


def _key(so: dict[str, Any]) -> tuple:
    return (so["execution_mode"], so["graph_optimization_level"], so["intra_op_num_threads"],
            so.get("inter_op_num_threads"))


def _observed(sess: OnnxSession) -> tuple:
    """(mode, level, intra, inter) of the live onnxruntime session."""
    o = sess.session.get_session_options()
    return (int(o.execution_mode.value), int(o.graph_optimization_level.value), o.intra_op_num_threads,
            o.inter_op_num_threads or None)


def _expected(so: dict[str, Any]) -> tuple:
    """What honed's runtime should set for a session_options mapping ({}: its defaults)."""
    return (so.get("execution_mode", 0), so.get("graph_optimization_level", 99),
            so.get("intra_op_num_threads") or physical_cores(), so.get("inter_op_num_threads"))


def _logits(path: str | Path) -> np.ndarray:
    sess = OnnxSession(path)
    ids = np.arange(3, 12, dtype=np.int64)[None]
    return sess.run(ids, np.ones_like(ids))[0]


# ---------------------------------------------------------------- measuring for real


def test_every_setting_is_timed_and_the_fastest_is_applied(onnx_llama: ModelHandle, tmp_path: Path) -> None:
    out, ctx = _run(PASS, onnx_llama, tmp_path, **GRID)
    m = ctx.metrics
    json.dumps(m)  # footprints.json must be able to hold it
    trials = m["tuning_trials"]
    assert [t["defaults"] for t in trials] == [True] + [False] * 8
    assert trials[0]["session_options"] == {}  # the input has no sidecar: the runtime's defaults
    keys = [_key(t["session_options"]) for t in trials[1:]]
    assert sorted(keys, key=str) == sorted(GRID_KEYS, key=str)  # each combination once
    for t in trials:
        assert math.isfinite(t["latency_ms"]) and t["latency_ms"] > 0 and t["timed_runs"] == 2
    best = min(trials, key=lambda t: t["latency_ms"])
    assert m["best_latency_ms"] == best["latency_ms"]
    assert m["best_session_options"] == best["session_options"] and m["best_is_defaults"] == best["defaults"]
    assert m["defaults_latency_ms"] == trials[0]["latency_ms"]
    assert m["gain_over_defaults"] == pytest.approx(m["defaults_latency_ms"] / m["best_latency_ms"], rel=1e-12)
    assert m["gain_over_defaults"] >= 1.0
    assert m["execution_provider"] == "CPUExecutionProvider" and "input_ids [1, 16]" in m["tuning_inputs"]

    sidecar = json.loads((Path(out.path) / SETTINGS_FILE).read_text())
    assert sidecar["model_file"] == "model.onnx"
    assert sidecar["session_options"] == best["session_options"]
    assert _observed(OnnxSession(out.path)) == _expected(best["session_options"])
    # The input files travel unchanged, the input folder gains nothing, and outputs do not change.
    src = Path(onnx_llama.path)
    for f in src.iterdir():
        assert (Path(out.path) / f.name).read_bytes() == f.read_bytes()
    assert not (src / SETTINGS_FILE).exists()
    np.testing.assert_allclose(_logits(out.path), _logits(src), atol=1e-4)


def test_unset_lists_follow_cpu_cores() -> None:
    """Unset lists: sequential with 1..cores intra threads, parallel adds 2..cores inter threads, level 99;
    a genai model is tuned sequentially only."""
    cfg = get_pass(PASS).config_class()
    keys = [_key(so) for so in spt.candidate_settings(cfg, 4, genai=False)]
    seq = {(0, 99, n, None) for n in (1, 2, 4)}
    par = {(1, 99, n, k) for n, k in product((1, 2, 4), (2, 4))}
    assert len(keys) == len(set(keys)) and set(keys) == seq | par
    assert {_key(so) for so in spt.candidate_settings(cfg, 4, genai=True)} == seq
    affine = get_pass(PASS).config_class(extra_session_config={spt.AFFINITY_KEY: "1;2;3"}, execution_mode_list=[0])
    assert [_key(so) for so in spt.candidate_settings(affine, 8, genai=False)] == [(0, 99, 4, None)]


def test_rounds_are_forward_then_reversed() -> None:
    """One untimed warm-up of trial 0, then half the runs in order and half in reverse, so drift during the
    sweep favours no trial."""
    calls: list[tuple[int, int]] = []

    def measure(i: int, n: int) -> list[float]:
        calls.append((i, n))
        return [float(i)] * n

    runs = spt.measure_all(measure, 3, warmup=2, repeat=5)
    assert calls == [(0, 2), (0, 3), (1, 3), (2, 3), (2, 2), (1, 2), (0, 2)]
    assert runs == [[0.0] * 5, [1.0] * 5, [2.0] * 5]
    calls.clear()
    spt.measure_all(measure, 2, warmup=0, repeat=1)
    assert calls == [(0, 1), (1, 1)]


def test_data_config_rows_are_the_timed_input(onnx_llama: ModelHandle, tmp_path: Path) -> None:
    from honed.data.config import DataConfig

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"text": t}) for t in ["the quick brown fox jumps", "a cat sat on it"]))
    dc = DataConfig(name="timing", load_dataset_config={"data_files": str(rows)},
                    pre_process_data_config={"text_template": "{text}"})
    _, ctx = _run(PASS, onnx_llama, tmp_path, data_configs={"timing": dc}, data_config="timing", batch_size=3,
                  intra_thread_num_list=[1], execution_mode_list=[0], warmup_num=0, repeat_test_num=1)
    inputs = ctx.metrics["tuning_inputs"]
    assert inputs.startswith("data config 'timing'") and "input_ids [3, " in inputs
    with pytest.raises(ConfigError, match=r"passes\.tune\.data_config: no data config named 'nope'"):
        _run(PASS, onnx_llama, tmp_path / "x", data_config="nope", warmup_num=0, repeat_test_num=1)


def test_olive_dataloader_func_feeds_the_timing(onnx_llama: ModelHandle, tmp_path: Path) -> None:
    """Olive's older pass keys (user_script + dataloader_func + batch_size) become a data config whose first
    batch is what is timed."""
    from honed.config.load import validate

    script = tmp_path / "loader.py"
    script.write_text("def make_loader(data_dir, batch_size):\n"
                      "    return [{'input_ids': [[5, 6, 7, 8, 9]] * batch_size}]\n")
    raw = {"input_model": {"type": "ONNXModel", "model_path": onnx_llama.path},
           "passes": {"tune": {"type": PASS, "user_script": str(script), "dataloader_func": "make_loader",
                               "batch_size": 2, "intra_thread_num_list": [1], "execution_mode_list": [0],
                               "warmup_num": 0, "repeat_test_num": 1}}}
    wf = validate(raw)
    data = {d.name: d for d in wf.config.data_configs}
    step = wf.steps[0]
    ctx = _ctx(tmp_path, data_configs=data)
    (tmp_path / "out").mkdir()
    step.pass_cls().run(onnx_llama, step.config, tmp_path / "out", ctx)
    inputs = ctx.metrics["tuning_inputs"]
    assert inputs.startswith(f"data config '{step.config.data_config}'") and "input_ids [2, 5]" in inputs


# ---------------------------------------------------------------- choosing (fixed measurements)


@pytest.fixture
def fixed_times(monkeypatch: pytest.MonkeyPatch):
    """Replace ONNX measurements by fixed numbers (ms) per trial key; every session is still really built,
    so each setting must load."""
    real = spt.OnnxBench.measure

    def install(fast: dict, default: float = 2.0) -> None:
        def fake(self, settings, feeds, warmup, repeat):
            real(self, settings, feeds, 0, 1)
            key = "defaults" if settings is None else _key(settings["session_options"])
            return [fast.get(key, default)] * repeat
        monkeypatch.setattr(spt.OnnxBench, "measure", fake)
    return install


@pytest.mark.parametrize(("fast", "best", "gain"), [
    ({(1, 1, 1, 2): 0.5, "defaults": 4.0}, (1, 1, 1, 2), 8.0),       # a parallel, basic-level setting wins
    ({(0, 99, 2, None): 1.0, "defaults": 3.0}, (0, 99, 2, None), 3.0),
    ({"defaults": 1.0}, "defaults", 1.0),                              # nothing beats the defaults
])
def test_the_minimum_is_chosen_and_loaded(onnx_llama: ModelHandle, tmp_path: Path, fixed_times, fast, best,
                                          gain) -> None:
    fixed_times(fast)
    out, ctx = _run(PASS, onnx_llama, tmp_path, **{**GRID, "repeat_test_num": 1})
    m = ctx.metrics
    assert m["best_is_defaults"] == (best == "defaults")
    if best != "defaults":
        assert _key(m["best_session_options"]) == best
    assert m["gain_over_defaults"] == gain
    sidecar = json.loads((Path(out.path) / SETTINGS_FILE).read_text())
    assert sidecar["session_options"] == m["best_session_options"]
    assert _observed(OnnxSession(out.path)) == _expected(m["best_session_options"])


def test_retuning_keeps_the_inputs_settings_when_they_win(onnx_llama: ModelHandle, tmp_path: Path,
                                                          fixed_times) -> None:
    fixed_times({(1, 1, 1, 2): 0.5, "defaults": 4.0})
    first, _ = _run(PASS, onnx_llama, tmp_path / "a", **{**GRID, "repeat_test_num": 1})
    fixed_times({"defaults": 0.5})  # now the input's own (sidecar) settings are fastest
    second, ctx = _run(PASS, first, tmp_path / "b", **{**GRID, "repeat_test_num": 1})
    assert ctx.metrics["best_is_defaults"]
    assert _key(ctx.metrics["tuning_trials"][0]["session_options"]) == (1, 1, 1, 2)
    assert _observed(OnnxSession(second.path)) == (1, 1, 1, 2)


# ---------------------------------------------------------------- the runtime's sidecar


def _linked_model(src: ModelHandle, dst: Path) -> Path:
    dst.mkdir()
    for f in Path(src.path).iterdir():
        spt.link_or_copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize(("sidecar", "observed"), [
    ({"model_file": "model.onnx", "session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 3,
                                                      "execution_mode": 1, "graph_optimization_level": 2}},
     (1, 2, 1, 3)),
    ({"session_options": {"graph_optimization_level": 0}}, (0, 0, None, None)),  # no model_file: this model
    ({"model_file": "other.onnx", "session_options": {"intra_op_num_threads": 1}}, (0, 99, None, None)),
])
def test_runtime_applies_the_sidecar(onnx_llama: ModelHandle, tmp_path: Path, sidecar: dict, observed: tuple) -> None:
    folder = _linked_model(onnx_llama, tmp_path / "m")
    (folder / SETTINGS_FILE).write_text(json.dumps(sidecar))
    got = _observed(OnnxSession(folder))
    want = tuple(physical_cores() if (i == 2 and v is None) else v for i, v in enumerate(observed))
    assert got == want
    assert _observed(OnnxSession(folder, settings={}))[:3] == (0, 99, physical_cores())  # explicit override


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", ["not readable JSON"]),
    (json.dumps({"session_options": {"intra_op_num_threads": -1}}), ["session_options.intra_op_num_threads", "-1"]),
    (json.dumps({"session_options": {"execution_mode": 2}}), ["session_options.execution_mode"]),
    (json.dumps({"session_options": {"graph_optimization_level": 5}}), ["graph_optimization_level"]),
    (json.dumps([1]), ["JSON object"]),
])
def test_a_broken_sidecar_is_one_line_error(onnx_llama: ModelHandle, tmp_path: Path, text: str, words: list) -> None:
    folder = _linked_model(onnx_llama, tmp_path / "m")
    (folder / SETTINGS_FILE).write_text(text)
    with pytest.raises(UserError) as e:
        OnnxSession(folder)
    msg = str(e.value)
    assert "\n" not in msg and SETTINGS_FILE in msg and all(w in msg for w in words), msg


# ---------------------------------------------------------------- genai


def test_genai_choice_goes_into_genai_config(genai_llama: ModelHandle, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    src_cfg = (Path(genai_llama.path) / "genai_config.json").read_text()
    real = spt.GenaiBench.measure

    def fake(self, settings, ids, warmup, repeat):
        real(self, settings, ids, 0, 1)  # every setting must load and generate
        so = (settings or {}).get("session_options", {})
        return [0.5 if (so.get("intra_op_num_threads"), so.get("graph_optimization_level")) == (1, 1) else 2.0] * repeat

    monkeypatch.setattr(spt.GenaiBench, "measure", fake)
    out, ctx = _run(PASS, genai_llama, tmp_path, execution_mode_list=[0, 1], opt_level_list=[1, 99],
                    intra_thread_num_list=[1, 2], warmup_num=0, repeat_test_num=2)
    trials = ctx.metrics["tuning_trials"]
    assert {_key(t["session_options"]) for t in trials[1:]} == {(0, lv, n, None) for lv in (1, 99) for n in (1, 2)}
    assert ctx.metrics["gain_over_defaults"] == 4.0
    cfg = json.loads((Path(out.path) / "genai_config.json").read_text())
    so = cfg["model"]["decoder"]["session_options"]
    assert so["intra_op_num_threads"] == 1 and so["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    assert so["log_id"] == "onnxruntime-genai" and "execution_mode" not in so  # kept; genai has no mode
    assert (Path(genai_llama.path) / "genai_config.json").read_text() == src_cfg  # the input is untouched
    assert out.kind == "genai" and not (Path(out.path) / SETTINGS_FILE).exists()

    from honed.models.runtime import load_generator

    assert len(load_generator(out.path).generate_ids([5, 6, 7], 3, stop_at_eos=False)) == 3


def test_genai_real_timing_is_consistent(genai_llama: ModelHandle, tmp_path: Path) -> None:
    out, ctx = _run(PASS, genai_llama, tmp_path, intra_thread_num_list=[1, 2], warmup_num=1, repeat_test_num=2)
    m = ctx.metrics
    assert len(m["tuning_trials"]) == 3
    assert m["best_latency_ms"] == min(t["latency_ms"] for t in m["tuning_trials"])
    assert m["gain_over_defaults"] == pytest.approx(m["defaults_latency_ms"] / m["best_latency_ms"], rel=1e-12)
    so = json.loads((Path(out.path) / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    if not m["best_is_defaults"]:
        assert so["intra_op_num_threads"] == m["best_session_options"]["intra_op_num_threads"]


# ---------------------------------------------------------------- config errors and warnings


@pytest.mark.parametrize(("options", "words"), [
    ({"intra_thread_num_list": [-1]}, ["passes.tune.intra_thread_num_list[0]", "greater than or equal to 1"]),
    ({"inter_thread_num_list": [0]}, ["passes.tune.inter_thread_num_list[0]"]),
    ({"intra_thread_num_list": [True]}, ["passes.tune.intra_thread_num_list[0]", "integer"]),
    ({"intra_thread_num_list": []}, ["passes.tune.intra_thread_num_list", "at least 1"]),
    ({"execution_mode_list": ["fastest"]}, ["passes.tune.execution_mode_list[0]", "unknown execution mode",
                                            "sequential"]),
    ({"opt_level_list": [5]}, ["passes.tune.opt_level_list[0]", "unknown graph optimization level"]),
    ({"providers_list": ["CUDAExecutionProvder"]}, ["passes.tune.providers_list", "CUDAExecutionProvider"]),
    ({"input_shapes": [[1, 4]]}, ["passes.tune", "need input_names"]),
    ({"input_names": ["input_ids"], "input_shapes": [[1, 4], [1, 4]]}, ["passes.tune", "2 shapes for 1"]),
    ({"dataloader_func": "make_loader", "data_config": "rows"}, ["passes.tune.dataloader_func", "not both"]),
    ({"io_bind": "false"}, ["passes.tune.io_bind", "true or false"]),
    ({"extra_session_config": {spt.AFFINITY_KEY: "1;2"}, "intra_thread_num_list": [2]}, ["fixes intra-op threads at 3"]),
])
def test_bad_values_are_one_line_config_errors(onnx_llama: ModelHandle, options: dict, words: list) -> None:
    from honed.config.load import validate

    raw = {"input_model": {"type": "ONNXModel", "model_path": onnx_llama.path},
           "passes": {"tune": {"type": PASS, **options}}}
    with pytest.raises(ConfigError) as e:
        validate(raw)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_olive_spellings_are_accepted() -> None:
    cfg = get_pass(PASS).config_class.model_validate(
        {"execution_mode_list": 1, "opt_level_list": ["basic", "ORT_ENABLE_EXTENDED", 99], "intra_thread_num_list": 2,
         "providers_list": "CPUExecutionProvider", "extra_session_config": {"session.intra_op.allow_spinning": False}})
    assert cfg.execution_mode_list == ["parallel"] and cfg.opt_level_list == [1, 2, 99]
    assert cfg.intra_thread_num_list == [2] and cfg.providers_list == ["CPUExecutionProvider"]
    so = spt.candidate_settings(cfg, 2, genai=False)[0]
    assert so["extra_session_config"] == {"session.intra_op.allow_spinning": "0"}
    assert spt.thread_ladder(1) == [1] and spt.thread_ladder(6) == [1, 2, 4, 6] and spt.thread_ladder(8, 2) == [2, 4, 8]


@pytest.mark.parametrize(("target", "options", "error", "words"), [
    (None, {"device": "gpu"}, ConfigError, ["passes.tune.device", "target system's device is 'cpu'"]),
    (None, {"providers_list": ["CUDAExecutionProvider"], "force_evaluate_other_eps": True}, ConfigError,
     ["passes.tune.force_evaluate_other_eps", "CUDAExecutionProvider"]),
    (Accelerator(device="gpu", execution_provider="CUDAExecutionProvider"), {}, UserError,
     ["CUDAExecutionProvider is not available"]),
])
def test_run_time_errors_name_the_key(onnx_llama: ModelHandle, tmp_path: Path, target, options, error, words) -> None:
    with pytest.raises(error) as e:
        _run(PASS, onnx_llama, tmp_path, target=target, **options)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize(("options", "words"), [
    ({"execution_mode_list": [1]}, ["passes.tune.execution_mode_list", "sequential mode only"]),
    ({"opt_level_list": [3]}, ["passes.tune.opt_level_list", "no level 3"]),
])
def test_genai_limits_are_errors(genai_llama: ModelHandle, tmp_path: Path, options: dict, words: list) -> None:
    with pytest.raises(ConfigError) as e:
        _run(PASS, genai_llama, tmp_path, **options)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_unapplied_olive_keys_warn(onnx_llama: ModelHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="honed"):
        _, ctx = _run(PASS, onnx_llama, tmp_path, io_bind=True, enable_cuda_graph=True, enable_profiling=True,
                      trt_fp16_enable=True, data_dir="data", providers_list=["CPUExecutionProvider", "DmlExecutionProvider"],
                      execution_mode_list=[0], inter_thread_num_list=[2], intra_thread_num_list=[1],
                      warmup_num=0, repeat_test_num=1)
    for k in ("io_bind", "enable_cuda_graph", "enable_profiling", "trt_fp16_enable", "data_dir", "providers_list",
              "inter_thread_num_list"):
        assert f"passes.tune.{k}: not applied" in caplog.text, k
    assert len(ctx.metrics["tuning_trials"]) == 2  # the warnings changed nothing that was tried
