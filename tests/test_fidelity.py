"""Fidelity (KL divergence, top-1 agreement, perplexities) of a model to a reference: the arithmetic against numpy
by hand, the runtimes' positions, the pass option that records it after a quantized build, the evaluator metric
and its direction in a search, and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from honed import run as run_workflow
from honed.config.load import validate
from honed.data.config import DataConfig
from honed.errors import UserError
from honed.models.fidelity import compare_logits, compare_models, compare_runtimes, summarize
from honed.models.handle import ModelHandle
from honed.models.runtime import Runtime
from honed.passes._fidelity import record_fidelity
from honed.passes.base import PassContext, get_pass
from honed.report.html import build_html
from honed.report.text import summary_text
from honed.util.accelerator import Accelerator

ROWS = ["the cat sat on the mat", "a dog ran in the park today", "my old phone fell and broke",
        "they threw me a party", "something moved in the dark"]


def hand_kl(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """KL(ref || cand) per row, written out: sum p log(p / q) with p, q the softmaxes."""
    p = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
    q = np.exp(cand) / np.exp(cand).sum(-1, keepdims=True)
    return (p * np.log(p / q)).sum(-1)


# ------------------------------------------------------------------ arithmetic

def test_kl_is_reference_to_candidate_by_hand() -> None:
    ref = np.array([[4.0, 0.0, -2.0], [0.5, 0.5, 3.0]])
    cand = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    got = compare_logits(ref, cand, [0, 2])
    want = hand_kl(ref, cand)
    assert got.kl == pytest.approx(want, abs=1e-12)
    assert not np.allclose(want, hand_kl(cand, ref), atol=1e-3)  # the reverse direction is another number
    assert got.agree.tolist() == [True, False]  # argmax 0 == 0; 2 != 1
    assert got.nll == pytest.approx([-np.log(1 / 3), -np.log(np.exp(1) / (1 + np.exp(2) + np.e))])
    assert got.reference_nll[0] == pytest.approx(-(4 - np.log(np.exp(4) + 1 + np.exp(-2))))
    # stable far from 0 (no overflow), and in float32 input
    shifted = compare_logits((ref + 1000).astype(np.float32), (cand - 1000).astype(np.float32), [0, 2])
    assert shifted.kl == pytest.approx(want, abs=1e-5)
    with pytest.raises(UserError, match="same vocabulary"):
        compare_logits(ref, cand[:, :2], [0, 2])


class TableRuntime(Runtime):
    """A fake causal LM: the logits after a prefix are one fixed row per its last token (so each position is known
    in advance), with a context length."""

    def __init__(self, table: np.ndarray, context: int | None = None) -> None:
        self.table, self.context_length, self.tokenizer = table, context, None

    def _logits(self, batch: list[list[int]]) -> np.ndarray:
        return np.stack([self.table[ids] for ids in batch])


def test_positions_p99_and_perplexity_against_numpy() -> None:
    rng = np.random.default_rng(0)
    # float32, as runtimes give logits; the hand computation reads them in float64
    ref = (rng.normal(size=(50, 50)) * 3).astype(np.float32).astype(np.float64)
    cand = (ref + rng.normal(size=(50, 50)) * 2).astype(np.float32).astype(np.float64)
    seqs = [rng.integers(0, 50, size=n).tolist() for n in (12, 30, 7, 41)] + [[3]]  # the last scores nothing
    got = compare_runtimes(TableRuntime(ref), TableRuntime(cand), seqs)
    kl, agree, nll, ref_nll = [], [], [], []
    for s in seqs:
        for i in range(len(s) - 1):  # the logits after s[:i + 1] predict s[i + 1]
            kl.append(hand_kl(ref[s[i]][None], cand[s[i]][None])[0])
            agree.append(ref[s[i]].argmax() == cand[s[i]].argmax())
            nll.append(-(cand[s[i]][s[i + 1]] - np.log(np.exp(cand[s[i]]).sum())))
            ref_nll.append(-(ref[s[i]][s[i + 1]] - np.log(np.exp(ref[s[i]]).sum())))
    assert got.positions == len(kl) == 86 and got.sequences == 4
    assert got.kl_mean == pytest.approx(np.mean(kl), rel=1e-12)
    assert got.kl_p99 == pytest.approx(np.percentile(kl, 99), rel=1e-12)
    assert got.kl_p99 != pytest.approx(np.percentile(kl, 90), rel=1e-3)
    assert got.top1_agreement == pytest.approx(np.mean(agree)) and 0.2 < got.top1_agreement < 0.9
    assert got.perplexity == pytest.approx(math.exp(np.mean(nll)), rel=1e-12)
    assert got.reference_perplexity == pytest.approx(math.exp(np.mean(ref_nll)), rel=1e-12)
    # a context of 10 tokens cuts each sequence to 11 (the last is only predicted)
    short = compare_runtimes(TableRuntime(ref, 10), TableRuntime(cand), seqs)
    assert short.positions == 10 + 10 + 6 + 10
    with pytest.raises(UserError, match="no position"):
        summarize([])


# ------------------------------------------------------------------ real models

def test_a_model_against_itself(tiny_llama: Path, genai_fp32: ModelHandle) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    seqs = [tok(t)["input_ids"] for t in ROWS]
    hf = ModelHandle(kind="hf", path=str(tiny_llama))
    for handle in (hf, genai_fp32):
        r = compare_models(handle, handle, seqs)
        assert r.kl_mean == pytest.approx(0, abs=1e-6) and r.kl_p99 == pytest.approx(0, abs=1e-6)
        assert r.top1_agreement == 1.0
        assert r.perplexity == pytest.approx(r.reference_perplexity, rel=1e-6)
        assert r.positions == sum(len(s) - 1 for s in seqs)
    # the HF perplexity is the model's own: torch's cross-entropy of each row's next tokens
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    nll = []
    with torch.no_grad():
        for s in seqs:
            lp = torch.log_softmax(model(torch.tensor([s[:-1]])).logits[0].double(), -1)
            nll += (-lp[torch.arange(len(s) - 1), torch.tensor(s[1:])]).tolist()
    assert compare_models(hf, genai_fp32, seqs).reference_perplexity == pytest.approx(math.exp(np.mean(nll)),
                                                                                      rel=1e-6)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    path = tmp_path_factory.mktemp("fidelity") / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ROWS))
    return DataConfig.model_validate({"name": "rows", "load_dataset_config": {"data_files": str(path)},
                                      "pre_process_data_config": {"max_seq_len": 32}})


def build(tiny_llama: Path, out: Path, data: dict[str, DataConfig], **config: Any) -> dict[str, Any]:
    """ModelBuilder on tiny_llama with these data configs; the pass's metrics."""
    cls = get_pass("ModelBuilder")
    ctx = PassContext(pass_name="mb", host=Accelerator(), target=Accelerator(), data_configs=data,
                      work_dir=out / "work", cache_dir=out / "cache")
    (out / "model").mkdir(parents=True)
    cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), cls.config_class(**config), out / "model", ctx)
    return ctx.metrics


def test_model_builder_records_fidelity(tiny_llama: Path, rows: DataConfig, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="honed")
    int4 = build(tiny_llama, tmp_path / "int4", {"rows": rows}, precision="int4", int4_block_size=16)
    assert "fidelity measured on data config 'rows' (the workflow's first" in caplog.text
    assert int4["kl_mean"] > 0 and int4["kl_p99"] >= int4["kl_mean"] * 0.5
    assert 0 < int4["top1_agreement"] <= 1
    assert int4["perplexity"] > 1 and int4["source_perplexity"] > 1
    assert int4["perplexity"] != pytest.approx(int4["source_perplexity"], rel=1e-9)
    fp32 = build(tiny_llama, tmp_path / "fp32", {"rows": rows}, precision="fp32", fidelity_data_config="rows")
    assert fp32["kl_mean"] < 1e-3 and fp32["top1_agreement"] == 1.0
    assert fp32["perplexity"] == pytest.approx(fp32["source_perplexity"], rel=1e-3)
    assert fp32["source_perplexity"] == pytest.approx(int4["source_perplexity"], rel=1e-9)  # the same rows


def test_when_the_pass_measures(rows: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without a named data config only a quantized build is measured, on the workflow's first data config;
    fidelity_samples 0 turns it off; a name that is not defined is one line naming the key."""
    cfg = get_pass("ModelBuilder").config_class
    nothing = ModelHandle(kind="hf", path=str(tmp_path / "absent"))  # loading it would fail: nothing loads

    def ctx(data: dict[str, DataConfig]) -> PassContext:
        return PassContext(pass_name="mb", host=Accelerator(), target=Accelerator(), data_configs=data,
                           work_dir=tmp_path, cache_dir=tmp_path)

    caplog.set_level("INFO", logger="honed")
    assert record_fidelity(nothing, nothing, cfg(precision="fp32"), ctx({"rows": rows}), quantized=False) is None
    assert record_fidelity(nothing, nothing, cfg(precision="int4"), ctx({}), quantized=True) is None
    assert "no data config" in caplog.text
    off = cfg(precision="int4", fidelity_data_config="rows", fidelity_samples=0)
    assert record_fidelity(nothing, nothing, off, ctx({"rows": rows})) is None
    with pytest.raises(UserError, match="fidelity_data_config 'other' is not defined"):
        record_fidelity(nothing, nothing, cfg(fidelity_data_config="other"), ctx({"rows": rows}))


def test_gptq_records_fidelity(tiny_llama: Path, rows: DataConfig, tmp_path: Path) -> None:
    cls = get_pass("Gptq")
    ctx = PassContext(pass_name="gptq", host=Accelerator(), target=Accelerator(), data_configs={"rows": rows},
                      work_dir=tmp_path / "work", cache_dir=tmp_path / "cache")
    cfg = cls.config_class(data_config="rows", group_size=16, num_samples=4, fidelity_samples=3)
    cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), cfg, tmp_path / "out", ctx)
    assert ctx.metrics["kl_mean"] > 0 and 0 < ctx.metrics["top1_agreement"] <= 1
    assert {"kl_p99", "perplexity", "source_perplexity"} <= set(ctx.metrics)


# ------------------------------------------------------------------ the evaluator metric, a search, the report

def test_fidelity_metric_ranks_a_search(tiny_llama: Path, rows: DataConfig, tmp_path: Path) -> None:
    """Searching ModelBuilder's precision by KL alone picks fp32 over int4 (lower KL is better), the int4 step's
    own fidelity (measured by default: the workflow has a data config) reaches footprints and the report."""
    cfg = {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [rows.model_dump(mode="json")],
        "evaluators": {"ev": {"metrics": [
            {"name": "fid", "type": "fidelity", "data_config": "rows",
             "user_config": {"reference_model": str(tiny_llama)},
             "sub_types": [{"name": "kl_mean", "priority": 1}, {"name": "top1_agreement"},
                           {"name": "perplexity"}, {"name": "reference_perplexity"}]}]}},
        "passes": {"mb": {"type": "ModelBuilder", "precision": ["int4", "fp32"], "int4_block_size": 16}},
        "engine": {"evaluator": "ev", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")},
        "search_strategy": {"sampler": "sequential"},
    }
    result = run_workflow(validate(cfg))
    trials = {t["params"]["passes.mb.precision"]: t for t in result.search["trials"]}
    int4, fp32 = trials["int4"]["metrics"], trials["fp32"]["metrics"]
    assert 0 <= fp32["fid-kl_mean"] < int4["fid-kl_mean"] / 10, (fp32, int4)
    assert result.search["ranking"][0] == trials["fp32"]["index"]
    assert result.evaluation["input"]["fid-kl_mean"] == pytest.approx(0, abs=1e-9)
    assert result.evaluation["input"]["fid-top1_agreement"] == 1.0
    assert int4["fid-reference_perplexity"] == pytest.approx(result.evaluation["input"]["fid-perplexity"], rel=1e-9)
    steps = trials["int4"]["steps"][0]["metrics"]
    assert steps["kl_mean"] > 0 and "kl_mean" not in trials["fp32"]["steps"][0]["metrics"]  # fp32: not by default
    # the chosen model's report shows a measured step's fidelity; here, the int4 step of its own run
    fp = {"steps": trials["int4"]["steps"]}
    assert "Fidelity to the pass input" in build_html(fp) and "KL mean" in build_html(fp)
    (tmp_path / "fp.json").write_text(json.dumps(fp))
    assert "top-1 agreement" in summary_text(tmp_path / "fp.json")


def test_fidelity_metric_needs_a_reference(tiny_llama: Path, rows: DataConfig) -> None:
    from honed.evaluate.config import EvaluatorConfig
    from honed.evaluate.evaluator import eval_key, evaluate_model

    metric = {"name": "fid", "type": "fidelity", "data_config": "rows"}
    ev = EvaluatorConfig.model_validate({"metrics": [metric]})
    hf = ModelHandle(kind="hf", path=str(tiny_llama), id="a")
    with pytest.raises(UserError, match=r"user_config\.reference_model"):
        evaluate_model(hf, ev, {"rows": rows})
    r = evaluate_model(hf, ev, {"rows": rows}, reference=hf)
    assert r == {"fid-kl_mean": pytest.approx(0, abs=1e-9), "fid-kl_p99": pytest.approx(0, abs=1e-9),
                 "fid-top1_agreement": 1.0}
    # the reference is part of the evaluation's cache key
    target = Accelerator()
    other = hf.model_copy(update={"id": "b"})
    assert eval_key("m", ev, {"rows": rows}, target, hf) != eval_key("m", ev, {"rows": rows}, target, other)


# ------------------------------------------------------------------ memory and progress of the post-build check

@pytest.fixture(scope="module")
def bf16_source(bf16_llama: Path) -> Path:
    """tiny_llama stored in bf16 (the merged fine-tune a 3.8B build reads)."""
    return bf16_llama


@pytest.fixture(scope="module")
def genai_int4(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    """tiny_llama built at int4 (blocks of 16), without its own fidelity check."""
    from tests.helpers import run_pass

    return run_pass("ModelBuilder", tiny_llama, tmp_path_factory.mktemp("int4"), precision="int4",
                    int4_block_size=16, fidelity_samples=0)


def _bf16_policy(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    from honed.util.cpus import cpu_has_fast_bf16

    monkeypatch.setenv("HONED_CPU_BF16", "1" if native else "0")
    cpu_has_fast_bf16.cache_clear()  # the callers clear it again when done


def _opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The runtimes record_fidelity opens (a spy on honed.models.runtime.open_runtime)."""
    import honed.models.runtime as runtime

    opened: list[Any] = []
    real = runtime.open_runtime

    def spy(handle: ModelHandle, *a: Any, **k: Any) -> Any:
        rt = real(handle, *a, **k)
        if handle.kind == "hf":
            opened.append({m.weight.dtype for m in rt.model.modules() if isinstance(m, torch.nn.Linear)})
        return rt

    monkeypatch.setattr(runtime, "open_runtime", spy)
    return opened


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_source_is_held_in_bf16_and_scores_as_fp32(bf16_source: Path, genai_int4: ModelHandle,
                                                          rows: DataConfig, tmp_path: Path, native: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The fidelity reference of a bf16 checkpoint stays bf16 (no fp32 copy of its weights) and its KL to the
    output is the KL an fp32 copy of the same weights gives: equal within float rounding where the CPU has no
    native bf16 (fp32 per layer; bf16 arithmetic moves it 0.13% here), within 2% where it computes in bf16.
    Catches: record_fidelity opening the source at fp32 (or transformers' old fp32 default), the per-layer upcast
    computing in bf16 or leaving norms in bf16 (the KL moves), the bf16 policy ignored."""
    from honed.util.cpus import cpu_has_fast_bf16
    from tests.test_finetune import make_ctx

    _bf16_policy(monkeypatch, native)
    try:
        opened = _opened(monkeypatch)
        ctx, _ = make_ctx(tmp_path, "mb")
        ctx.data_configs = {"rows": rows}
        source = ModelHandle(kind="hf", path=str(bf16_source))
        cfg = get_pass("ModelBuilder").config_class(precision="int4")
        held = record_fidelity(source, genai_int4, cfg, ctx)
        assert held is not None and opened == [{torch.bfloat16}]
        fp32 = record_fidelity(source.model_copy(update={"load_kwargs": {"torch_dtype": "float32"}}), genai_int4,
                               cfg, ctx)
        assert fp32 is not None and opened[1] == {torch.float32}
        assert held["kl_mean"] > 1e-5  # the int4 build: something to measure
        rel = 0.02 if native else 1e-5
        assert held["kl_mean"] == pytest.approx(fp32["kl_mean"], rel=rel)
        assert held["source_perplexity"] == pytest.approx(fp32["source_perplexity"], rel=rel / 10)
    finally:
        monkeypatch.delenv("HONED_CPU_BF16")
        cpu_has_fast_bf16.cache_clear()


def test_held_bytes_are_what_the_runtime_holds(bf16_source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate of the source's bytes equals the parameters the runtime really holds, with and without the
    per-layer upcast.  Catches: the estimate counting an fp32 copy, or missing the embeddings and norms that
    upcast_linears casts to fp32."""
    from honed.models.memory import held_bytes, weights
    from honed.models.runtime import HFRuntime
    from honed.util.cpus import cpu_has_fast_bf16

    w = weights(bf16_source)
    try:
        for native in (True, False):
            _bf16_policy(monkeypatch, native)
            rt = HFRuntime(bf16_source, tokenizer=False)
            real = sum(p.numel() * p.element_size() for p in rt.model.parameters())
            assert (rt.held_dtype, rt.compute_dtype) == ("bfloat16", "bfloat16" if native else "float32")
            assert held_bytes(w, rt.held_dtype, rt.compute_dtype) == real
            rt.close()
    finally:
        monkeypatch.delenv("HONED_CPU_BF16")
        cpu_has_fast_bf16.cache_clear()


def test_a_check_that_would_not_fit_is_skipped_before_loading(bf16_source: Path, genai_fp32: ModelHandle,
                                                              rows: DataConfig, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Under HONED_MEMORY_LIMIT_GB below source + output + runtime the check is skipped with one warning line
    naming fidelity_samples: 0 and the estimate, and nothing is loaded; with room it runs.
    Catches: the check loading the models anyway (and running out of memory on a real machine), a skip that says
    nothing or raises, an estimate that ignores the output model."""
    import honed.models.runtime as runtime

    ctx = PassContext(pass_name="mb", host=Accelerator(), target=Accelerator(), data_configs={"rows": rows},
                      work_dir=tmp_path, cache_dir=tmp_path)
    source = ModelHandle(kind="hf", path=str(bf16_source))
    cfg = get_pass("ModelBuilder").config_class(precision="int4")
    real = runtime.open_runtime

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runtime, "open_runtime", refuse)
    monkeypatch.setenv("HONED_MEMORY_LIMIT_GB", "1.0")  # the runtime term alone is 1 GiB
    caplog.set_level("INFO", logger="honed")
    assert record_fidelity(source, genai_fp32, cfg, ctx) is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    msg = warnings[0].getMessage()
    assert "fidelity check skipped" in msg and "fidelity_samples: 0" in msg and "smaller model" in msg
    assert "HONED_MEMORY_LIMIT_GB allows 1.0 GiB" in msg and "output" in msg and "source" in msg
    assert "kl_mean" not in ctx.metrics
    monkeypatch.setattr(runtime, "open_runtime", real)
    monkeypatch.setenv("HONED_MEMORY_LIMIT_GB", "64")
    assert record_fidelity(source, genai_fp32, cfg, ctx) is not None


def test_the_check_moves_a_bar_once_per_row(tiny_llama: Path, genai_fp32: ModelHandle, rows: DataConfig,
                                            tmp_path: Path) -> None:
    """One bar named after the pass, total = the rows scored, advanced by one per row, closed at the end.
    Catches: a check with no progress (a 3.8B check ran 12 minutes with nothing on screen), a bar counting
    positions or tokens, a bar left open."""
    from tests.test_finetune import make_ctx

    ctx, bars = make_ctx(tmp_path, "mb")
    ctx.data_configs = {"rows": rows}
    steps: list[float] = []
    real_progress = ctx.progress

    def progress(description: str, total: float | None) -> Any:
        bar = real_progress(description, total)
        advance = bar.advance

        def record(n: float = 1, **fields: Any) -> None:
            steps.append(n)
            advance(n, **fields)

        bar.advance = record
        bar.description = description
        return bar

    ctx.progress = progress
    cfg = get_pass("ModelBuilder").config_class(precision="int4", fidelity_samples=4)
    assert record_fidelity(ModelHandle(kind="hf", path=str(tiny_llama)), genai_fp32, cfg, ctx) is not None
    assert [(b.description, b.total, b.done, b.closed) for b in bars] == [("mb: fidelity rows", 4, 4, True)]
    assert steps == [1, 1, 1, 1]
