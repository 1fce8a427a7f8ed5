"""Metrics against hand-computed values, on tiny models and on plain numbers; goals; the
evaluation cache in the engine; ``honed evaluate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from honed.config.load import validate
from honed.data.config import DataConfig
from honed.data.formatting import split_template
from honed.engine.runner import run_workflow
from honed.errors import UserError
from honed.evaluate.config import EvaluatorConfig, GoalConfig
from honed.evaluate.evaluator import evaluate_model
from honed.evaluate.goals import check_goals, goal_bound
from honed.evaluate.metrics import classification_scores, timing_stats
from honed.models.handle import ModelHandle
from tests.helpers import cli

ROWS = [("I passed the exam", "joy"), ("lights went out upstairs", "fear"), ("my old dog died", "sadness"),
        ("they threw me a party", "surprise"), ("top marks again", "joy"), ("something moved", "fear")]
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
LABELS = ["joy", "fear", "sadness", "surprise"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    path = tmp_path_factory.mktemp("eval") / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"phrase": p, "tone": t, "label": LABELS.index(t)}) for p, t in ROWS))
    return DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": str(path)},
                                      "pre_process_data_config": {"text_template": TEMPLATE}})


def evaluator(*metrics: dict) -> EvaluatorConfig:
    return EvaluatorConfig.model_validate({"metrics": list(metrics)})


# ------------------------------------------------------------------ pure arithmetic


def test_classification_scores_by_hand() -> None:
    s = classification_scores(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    # a: P 1/2 R 1/2 F 1/2; b: P 1/2 R 1 F 2/3; c: P 0 R 0 F 0 (macro averages)
    assert s["accuracy_score"] == pytest.approx(0.5)
    assert s["precision"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert s["recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["f1_score"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)


def test_timing_stats_by_hand() -> None:
    s = timing_stats([1, 2, 3, 4, 10])
    assert s["avg"] == pytest.approx(4) and s["p50"] == pytest.approx(3)
    assert s["p90"] == pytest.approx(4 + 0.6 * 6)  # position 3.6 between 4 and 10
    assert (s["min"], s["max"]) == (1, 10)


# ------------------------------------------------------------------ goals


@pytest.mark.parametrize(("kind", "value", "higher", "baseline", "bound"), [
    ("threshold", 0.8, True, None, 0.8),
    ("min-improvement", 0.05, True, 0.7, 0.75),
    ("max-degradation", 0.05, True, 0.7, 0.65),
    ("percent-min-improvement", 10, True, 0.5, 0.55),
    ("percent-max-degradation", 10, True, 0.5, 0.45),
    ("min-improvement", 2, False, 10, 8),        # latency: improving means lower
    ("max-degradation", 2, False, 10, 12),
    ("percent-min-improvement", 20, False, 10, 8),
    ("percent-max-degradation", 20, False, 10, 12),
])
def test_goal_bounds(kind: str, value: float, higher: bool, baseline: float | None, bound: float) -> None:
    assert goal_bound(GoalConfig(type=kind, value=value), higher, baseline) == pytest.approx(bound)


def test_goals_accept_and_reject() -> None:
    cfg = evaluator(
        {"name": "acc", "type": "accuracy", "data_config": "d",
         "sub_types": [{"name": "accuracy_score", "goal": {"type": "max-degradation", "value": 0.02}}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "p90", "goal": {"type": "threshold", "value": 5}}]},
    )
    base = {"acc-accuracy_score": 0.80, "lat-p90": 9.0}
    table = [
        ({"acc-accuracy_score": 0.79, "lat-p90": 4.0}, {"acc-accuracy_score": True, "lat-p90": True}),
        ({"acc-accuracy_score": 0.77, "lat-p90": 4.0}, {"acc-accuracy_score": False, "lat-p90": True}),
        ({"acc-accuracy_score": 0.85, "lat-p90": 6.0}, {"acc-accuracy_score": True, "lat-p90": False}),
        ({"lat-p90": 1.0}, {"acc-accuracy_score": False, "lat-p90": True}),  # missing result fails
    ]
    for results, expected in table:
        assert {c.key: c.met for c in check_goals(cfg, results, base)} == expected
    with pytest.raises(UserError, match="evaluate_input_model"):
        check_goals(cfg, table[0][0], None)


@pytest.mark.parametrize(("metric", "message"), [
    ({"name": "a", "type": "accuracy"}, "needs a data_config"),
    ({"name": "a", "type": "latency", "sub_types": [{"name": "p42"}]}, "unknown latency sub type"),
    ({"name": "c", "type": "custom", "sub_types": [{"name": "x"}]}, "higher_is_better"),
])
def test_bad_metric_configs(metric: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluator(metric)


# ------------------------------------------------------------------ on tiny models


def hand_scores(model_dir: Path) -> tuple[list[str], float]:
    """Predictions (label with the highest summed log-prob of its tokens + EOS after the prompt) and the
    perplexity of the full rows, computed directly with torch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]  # log p(ids[i+1] | ids[:i+1])

    preds, nll, n = [], 0.0, 0
    for phrase, tone in ROWS:
        prompt = f"### Text: {phrase}\n### The tone is:\n"
        scores = {}
        for label in LABELS:
            p_ids = tok(prompt)["input_ids"]
            ids = tok(prompt + label)["input_ids"] + [tok.eos_token_id]
            assert ids[:len(p_ids)] == p_ids  # the boundary does not merge for these rows
            scores[label] = float(logprobs(ids)[len(p_ids) - 1:].sum())
        preds.append(max(LABELS, key=lambda lab: scores[lab]))
        full = tok(prompt + tone)["input_ids"] + [tok.eos_token_id]
        lp = logprobs(full)
        nll -= float(lp.sum())
        n += len(lp)
    return preds, math.exp(nll / n)


ACC_PPL = (
    {"name": "acc", "type": "accuracy", "data_config": "d", "user_config": {"labels": LABELS},
     "sub_types": [{"name": "accuracy_score"}, {"name": "f1_score"}]},
    {"name": "ppl", "type": "perplexity", "data_config": "d"},
)


def test_accuracy_and_perplexity_match_hand_computation(tiny_llama: Path, data: DataConfig,
                                                        genai_fp32: ModelHandle) -> None:
    preds, ppl = hand_scores(tiny_llama)
    truth = [t for _, t in ROWS]
    expected = classification_scores(truth, preds, LABELS)
    cfg = evaluator(*ACC_PPL)
    handles = [ModelHandle(kind="hf", path=str(tiny_llama)), genai_fp32,
               ModelHandle(kind="onnx", path=str(Path(genai_fp32.path) / "model.onnx"))]
    for handle in handles:
        r = evaluate_model(handle, cfg, {"d": data})
        assert r["acc-accuracy_score"] == pytest.approx(expected["accuracy_score"]), handle.kind
        assert r["acc-f1_score"] == pytest.approx(expected["f1_score"]), handle.kind
        assert r["ppl-perplexity"] == pytest.approx(ppl, rel=1e-4), handle.kind


def test_latency_and_throughput_with_a_fake_clock(tiny_llama: Path) -> None:
    ticks = iter([0.0, 0.001, 1.0, 1.002, 2.0, 2.004] * 2)
    cfg = evaluator(
        {"name": "lat", "type": "latency", "user_config": {"warmup_num": 1, "repeat_test_num": 3},
         "sub_types": [{"name": "avg"}, {"name": "max"}, {"name": "p50"}]},
        {"name": "tp", "type": "throughput", "user_config": {"warmup_num": 0, "repeat_test_num": 3, "batch_size": 2}},
    )
    r = evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg, clock=lambda: next(ticks))
    assert r["lat-avg"] == pytest.approx(7 / 3)  # 1, 2 and 4 ms
    assert r["lat-max"] == pytest.approx(4.0) and r["lat-p50"] == pytest.approx(2.0)
    assert r["tp-avg"] == pytest.approx((2 / 0.001 + 2 / 0.002 + 2 / 0.004) / 3, rel=1e-6)  # items/s


def test_size_memory_and_custom(tiny_llama: Path, data: DataConfig, tmp_path: Path) -> None:
    script = tmp_path / "metric.py"
    script.write_text("def score(model, rows):\n    return {'rows': len(rows), 'kind_is_hf': model.kind == 'hf'}\n")
    cfg = evaluator(
        {"name": "size", "type": "size_on_disk"},
        {"name": "mem", "type": "memory", "sub_types": [{"name": "peak_rss_mb"}, {"name": "delta_rss_mb"}]},
        {"name": "mine", "type": "custom", "data_config": "d",
         "user_config": {"user_script": str(script), "evaluate_func": "score"},
         "sub_types": [{"name": "rows", "higher_is_better": True}, {"name": "kind_is_hf", "higher_is_better": True}]},
    )
    r = evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg, {"d": data})
    size = sum(f.stat().st_size for f in tiny_llama.rglob("*") if f.is_file()) / 2**20
    assert r["size-mb"] == pytest.approx(size)
    assert r["mem-peak_rss_mb"] > 50 and 0 <= r["mem-delta_rss_mb"] <= r["mem-peak_rss_mb"]
    assert r["mine-rows"] == len(ROWS) and r["mine-kind_is_hf"] == 1.0


def test_sequence_classifier_accuracy(tiny_bert: Path, data: DataConfig) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    texts = [f"### Text: {p}\n### The tone is:\n" for p, _ in ROWS]
    with torch.no_grad():
        pred = model(**tok(texts, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    expected = sum(p == LABELS.index(t) for p, (_, t) in zip(pred, ROWS, strict=True)) / len(ROWS)
    cfg = evaluator({"name": "acc", "type": "accuracy", "data_config": "d", "user_config": {"label_col": "label"}})
    handle = ModelHandle(kind="hf", path=str(tiny_bert), task="text-classification")
    # the template's prompt part (before {tone}) is the classifier's input; labels are class ids
    data2 = data.model_copy(update={"pre_process_data_config": data.pre_process_data_config.model_copy(
        update={"text_template": "### Text: {phrase}\n### The tone is:\n{label}"})})
    r = evaluate_model(handle, cfg, {"d": data2})
    assert r["acc-accuracy_score"] == pytest.approx(expected)


def test_engine_evaluates_before_and_after_and_caches(tiny_llama: Path, data: DataConfig, tmp_path: Path) -> None:
    cfg = {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [data.model_dump(mode="json")],
        "evaluators": {"ev": {"metrics": [
            {**ACC_PPL[1], "sub_types": [{"name": "perplexity", "goal": {"type": "max-degradation", "value": 1}}]},
            {"name": "size", "type": "size_on_disk"}]}},
        "passes": {"mb": {"type": "ModelBuilder", "precision": "fp32"}},
        "engine": {"evaluator": "ev", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")},
    }
    first = run_workflow(validate(cfg))
    ev = first.evaluation
    assert ev["input"]["ppl-perplexity"] == pytest.approx(ev["output"]["ppl-perplexity"], rel=1e-4)
    assert ev["goals_met"] and ev["cached"] == {"input": False, "output": False}
    second = run_workflow(validate(cfg))
    assert second.evaluation["cached"] == {"input": True, "output": True}
    assert second.evaluation["output"] == ev["output"]
    fp = json.loads((tmp_path / "out" / "footprints.json").read_text())
    assert fp["evaluation"]["output"] == ev["output"]
    assert (tmp_path / "out" / "report.html").is_file()
    cfg["engine"]["evaluate_input_model"] = False
    with pytest.raises(UserError, match="max-degradation goal needs the input model"):
        run_workflow(validate(cfg))


def test_cli_evaluate_with_flags(tiny_llama: Path, data: DataConfig, tmp_path: Path) -> None:
    prompt, label = split_template(TEMPLATE)
    assert (prompt, label) == ("### Text: {phrase}\n### The tone is:\n", "tone")
    preds, _ = hand_scores(tiny_llama)
    expected = classification_scores([t for _, t in ROWS], preds, LABELS)["accuracy_score"]
    out = tmp_path / "metrics.json"
    code = cli("evaluate", "--model", str(tiny_llama), "--data", data.load_dataset_config.data_files,
               "--text-template", TEMPLATE, "--label-col", "tone", "--labels", ",".join(LABELS),
               "--metrics", "accuracy,latency,size_on_disk", "--output", str(out))
    assert code == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["accuracy-accuracy_score"] == pytest.approx(expected)
    assert metrics["latency-avg"] > 0 and "size_on_disk-mb" in metrics
    assert cli("evaluate", "--model", str(tiny_llama), "--metrics", "accuracy") == 2  # no --data
    assert cli("evaluate", "--model", str(tiny_llama), "--metrics", "speed") == 2


# ------------------------------------------------------------------ every metric name Olive defines

OLIVE_SUB_TYPES = {  # olive/evaluator/metric.py (AccuracySubType, LatencySubType, ...), spelled as Olive does
    "accuracy": ["accuracy_score", "f1_score", "precision", "recall", "auroc", "perplexity", "wer", "rtfx",
                 "exact_match", "relaxed_accuracy", "word_sort_ratio"],
    "latency": ["avg", "max", "min", "p50", "p75", "p90", "p95", "p99", "p999"],
    "throughput": ["avg", "max", "min", "p50", "p75", "p90", "p95", "p99", "p999"],
    "size_on_disk": ["bytes"],
}
OLIVE_METRIC_TYPES = ["accuracy", "latency", "throughput", "size_on_disk", "custom"]  # MetricType
REFUSED = {("accuracy", "rtfx"): "throughput metric"}  # what honed cannot compute, and the alternative named
LOWER = {("accuracy", "perplexity"), ("accuracy", "wer"), *(("latency", s) for s in OLIVE_SUB_TYPES["latency"]),
         ("size_on_disk", "bytes")}
ACCEPTED = [(t, s) for t, subs in OLIVE_SUB_TYPES.items() for s in subs if (t, s) not in REFUSED]


def test_every_olive_metric_type_is_accepted() -> None:
    for t in OLIVE_METRIC_TYPES:
        metric = {"name": "m", "type": t, "data_config": "d"}
        if t == "custom":
            metric.update(sub_types=[{"name": "x", "higher_is_better": True}],
                          user_config={"user_script": __file__, "evaluate_func": "f"})
        assert evaluator(metric).metrics[0].type == t


@pytest.mark.parametrize(("mtype", "sub"), [(t, s) for t, subs in OLIVE_SUB_TYPES.items() for s in subs])
def test_every_olive_sub_type_is_accepted_or_refused_by_name(mtype: str, sub: str) -> None:
    metric = {"name": "m", "type": mtype, "data_config": "d", "sub_types": [{"name": sub}]}
    if (mtype, sub) in REFUSED:
        with pytest.raises(ValueError, match=f"{sub}.*{REFUSED[mtype, sub]}"):
            evaluator(metric)
        return
    assert evaluator(metric).directions() == {f"m-{sub}": (mtype, sub) not in LOWER}


def hand_label_scores(model_dir: Path) -> list[list[float]]:
    """Each row's summed log-prob of each label's tokens + EOS after the prompt, with torch directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for phrase, _ in ROWS:
        prompt = f"### Text: {phrase}\n### The tone is:\n"
        n = len(tok(prompt)["input_ids"])
        row = []
        for label in LABELS:
            ids = tok(prompt + label)["input_ids"] + [tok.eos_token_id]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            row.append(float(sum(lp[i - 1, ids[i]] for i in range(n, len(ids)))))
        out.append(row)
    return out


def test_every_accepted_olive_sub_type_is_computed(tiny_llama: Path, data: DataConfig) -> None:
    """No sub type is dropped: each configured key comes back, with the value honed's computation gives."""
    from honed.evaluate.metrics import auroc

    by_type: dict[str, list[dict]] = {}
    for t, s in [*ACCEPTED, ("accuracy", "auc")]:  # auc: Olive 0.2's name for auroc
        by_type.setdefault(t, []).append({"name": s})
    timing = {"warmup_num": 0, "repeat_test_num": 3}
    cfg = evaluator(
        {"name": "acc", "type": "accuracy", "data_config": "d", "user_config": {"labels": LABELS},
         "sub_types": by_type["accuracy"]},
        {"name": "ppl", "type": "perplexity", "data_config": "d"},
        {"name": "lat", "type": "latency", "user_config": timing, "sub_types": by_type["latency"]},
        {"name": "tp", "type": "throughput", "user_config": {**timing, "batch_size": 2},
         "sub_types": by_type["throughput"]},
        {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes"}, {"name": "mb"}]},
    )
    ticks = iter([0.0, 0.001, 1.0, 1.002, 2.0, 2.004] * 2)  # 1, 2 and 4 ms, for latency then throughput
    r = evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg, {"d": data}, clock=lambda: next(ticks))
    assert set(r) == set(cfg.directions())
    scores = hand_label_scores(tiny_llama)
    truth = [t for _, t in ROWS]
    preds = [LABELS[max(range(len(LABELS)), key=row.__getitem__)] for row in scores]
    acc = sum(p == t for p, t in zip(preds, truth, strict=True)) / len(ROWS)
    assert 0 < acc < 1  # the text scores below then tell right from wrong rows
    assert r["acc-accuracy_score"] == r["acc-exact_match"] == r["acc-relaxed_accuracy"] == pytest.approx(acc)
    assert r["acc-word_sort_ratio"] == pytest.approx(acc) and r["acc-wer"] == pytest.approx(1 - acc)  # 1-word labels
    probs = [[math.exp(x - max(row)) / sum(math.exp(y - max(row)) for y in row) for x in row] for row in scores]
    assert r["acc-auroc"] == r["acc-auc"] == pytest.approx(auroc(truth, probs, LABELS))
    assert r["acc-perplexity"] == pytest.approx(r["ppl-perplexity"])
    assert r["lat-p999"] == pytest.approx(2 + 2 * 0.998) and r["lat-p75"] == pytest.approx(3.0)  # ms
    assert r["tp-p999"] == pytest.approx(1000 + 1000 * 0.998) and r["tp-min"] == pytest.approx(500)  # items/s
    size = sum(f.stat().st_size for f in tiny_llama.rglob("*") if f.is_file())
    assert r["size-bytes"] == pytest.approx(size) and r["size-mb"] == pytest.approx(size / 2**20)


def test_auroc_of_a_classifier(tiny_bert: Path, data: DataConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from honed.evaluate.metrics import auroc

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    # A random tiny BERT scores every row within 1e-5 of the others, so float noise between CPUs
    # (batched vs one row, AVX-512 or not) reorders rows and moves AUROC (CI saw 0.331 vs 0.356).
    # Scaled pooler and head spread the rows' scores apart by >0.5% relative: the ranking is stable.
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(30)
        model.classifier.weight.mul_(300)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    tiny_bert = tmp_path
    texts = [f"### Text: {p}\n### The tone is:\n" for p, _ in ROWS]
    with torch.no_grad():
        probs = torch.softmax(model(**tok(texts, return_tensors="pt", padding=True)).logits, -1).tolist()
    truth = [str(LABELS.index(t)) for _, t in ROWS]
    data2 = data.model_copy(update={"pre_process_data_config": data.pre_process_data_config.model_copy(
        update={"text_template": "### Text: {phrase}\n### The tone is:\n{label}"})})
    cfg = evaluator({"name": "acc", "type": "accuracy", "data_config": "d", "user_config": {"label_col": "label"},
                     "sub_types": [{"name": "auroc"}]})
    r = evaluate_model(ModelHandle(kind="hf", path=str(tiny_bert), task="text-classification"), cfg, {"d": data2})
    assert r["acc-auroc"] == pytest.approx(auroc(truth, probs, ["0", "1", "2", "3"]))


def test_auroc_and_text_scores_by_hand() -> None:
    from honed.evaluate.metrics import auroc, binary_auroc, text_scores

    # scikit-learn's roc_auc_score example: 3 of the 4 positive-negative pairs ordered right
    assert binary_auroc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert binary_auroc([False, True], [0.3, 0.3]) == pytest.approx(0.5)  # a tie counts one half
    assert math.isnan(binary_auroc([True, True], [0.1, 0.2]))
    probs = [[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]]
    # one-vs-rest, truth a b a c: a 0.7, 0.5 over 0.2, 0.1; b 0.6 over 0.2, 0.1, 0.3; c 0.6 over 0.1, 0.2, 0.4
    assert auroc(["a", "b", "a", "c"], probs, ["a", "b", "c"]) == pytest.approx(1.0)
    # truth a b c a: a 0.7, 0.1 vs 0.2, 0.5 (2 of 4 pairs); b 3 of 3; c 0.4 vs 0.1, 0.2, 0.6 (2 of 3)
    assert auroc(["a", "b", "c", "a"], probs, ["a", "b", "c"]) == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert auroc(["x", "y", "y"], [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], ["x", "y"]) == pytest.approx(1.0)
    s = text_scores(["Paris|paris, France", "42", "the cat sat", "b"], [" PARIS ", "43", "sat the dog", "c"])
    assert s["exact_match"] == pytest.approx(1 / 4)  # case/whitespace-insensitive, '|' alternatives
    assert s["relaxed_accuracy"] == pytest.approx(2 / 4)  # 43 is within 5% of 42
    # word_sort_ratio and wer take the reference whole, as Olive does: 'paris|paris, france' shares no word
    # with 'paris' (word_sort_ratio) and normalizes to 'paris paris france' (wer: 2 deletions of 3 words)
    assert s["word_sort_ratio"] == pytest.approx((0 + 0 + 2 / 3 + 0) / 4)
    assert s["wer"] == pytest.approx((2 + 1 + 3 + 1) / (3 + 1 + 3 + 1))
    assert text_scores(["42"], ["43"], tolerance=0.01)["relaxed_accuracy"] == 0
    assert text_scores(["The cat, sat."], ["the cat sat"])["wer"] == 0  # punctuation and case normalized


@pytest.mark.parametrize(("metric", "message"), [
    ({"name": "a", "type": "accuracy", "data_config": "d", "sub_types": [{"name": "auroc"}],
      "user_config": {"scoring": "generate"}}, "auroc.*loglikelihood"),
    ({"name": "a", "type": "accuracy", "data_config": "d",
      "sub_types": [{"name": "f1_score", "metric_config": {"average": "micro"}}]}, "macro"),
    ({"name": "a", "type": "accuracy", "data_config": "d",
      "sub_types": [{"name": "relaxed_accuracy", "metric_config": {"tolerance": "5%"}}]}, "a number"),
    ({"name": "a", "type": "accuracy", "data_config": "d", "backend": "huggingface_metrics",
      "sub_types": [{"name": "bleu"}]}, "custom metric"),
])
def test_olive_options_honed_cannot_apply_are_errors(metric: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluator(metric)


def test_torchmetrics_options_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="honed"):
        evaluator({"name": "olive_acc", "type": "accuracy", "data_config": "d", "sub_types": [
            {"name": "accuracy_score", "metric_config": {"task": "multiclass", "num_classes": 4}}]})
    assert "metric_config.task is not applied" in caplog.text and "num_classes" in caplog.text
