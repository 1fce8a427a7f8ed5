"""Olive's LMEvaluator: lm-eval tasks from local YAML + JSONL scored through honed's HF, ONNX and genai
backends, checked against log-likelihoods computed by hand with torch and against lm-eval's own HFLM;
results in footprints.json and the report; config and preflight errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from honed.config.load import validate
from honed.engine.runner import run_workflow
from honed.errors import UserError
from honed.evaluate import lmeval
from honed.evaluate.backends import Backend, GenaiBackend, HFBackend, OnnxBackend
from honed.evaluate.config import EvaluatorConfig
from honed.evaluate.evaluator import evaluate_model
from honed.models.handle import ModelHandle
from honed.util.accelerator import Accelerator
from tests.helpers import cli, write_config

QUESTIONS = ["I passed the exam", "lights went out upstairs", "my old dog died", "they threw me a party",
             "top marks again", "something moved"]
CHOICES = ["joy", "fear", "sadness", "surprise"]
CONTEXT = "### Text: {q}\n### The tone is:"

MC_YAML = """task: mytask
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "### Text: {{{{q}}}}\\n### The tone is:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GEN_YAML = """task: mygen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "### Text: {{{{q}}}}\\n### The tone is:\\n"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

PPL_YAML = """task: myppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "### Text: {{{{q}}}} and the quick brown fox jumps over the lazy dog"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""


def hand_loglikelihoods(model_dir: Path) -> list[list[float]]:
    """log p(" " + choice | context) per row and choice, with torch directly: lm-eval's split of
    context and continuation (encode both together, the context alone, cut at its length)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for q in QUESTIONS:
        ctx = CONTEXT.format(q=q)
        row = []
        for choice in CHOICES:
            whole = tok.encode(ctx + " " + choice)
            n_ctx = len(tok.encode(ctx))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), -1)
            row.append(float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole)))))
        out.append(row)
    return out


@pytest.fixture(scope="module")
def hand(tiny_llama: Path) -> list[list[float]]:
    lls = hand_loglikelihoods(tiny_llama)
    for row in lls:  # no near-ties: HF, ONNX and genai must agree on every argmax
        top = sorted(row, reverse=True)
        assert top[0] - top[1] > 1e-3
    return lls


@pytest.fixture(scope="module")
def answers(hand: list[list[float]]) -> list[int]:
    """The model's own choice for the first four rows, its second choice for the last two: accuracy
    4/6 exactly, which scoring the wrong choice (or the wrong tokens) would not give."""
    ranked = [sorted(range(len(CHOICES)), key=lambda k: -row[k]) for row in hand]
    return [r[0] for r in ranked[:4]] + [r[1] for r in ranked[4:]]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory, answers: list[int]) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"q": q, "choices": CHOICES, "answer": a})
                              for q, a in zip(QUESTIONS, answers, strict=True)) + "\n")
    (folder / "mytask.yaml").write_text(MC_YAML.format(data=data))
    (folder / "mygen.yaml").write_text(GEN_YAML.format(data=data))
    (folder / "myppl.yaml").write_text(PPL_YAML.format(data=data))
    return folder


def run_lm(model: Any, tasks: list[str], task_dir: Path) -> dict[str, Any]:
    """lm-eval's simple_evaluate on an LM object (honed's or lm-eval's own), with the per-sample answers."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    return simple_evaluate(model=model, tasks=tasks, task_manager=tm, log_samples=True, bootstrap_iters=0)


def sample_lls(raw: dict[str, Any], task: str) -> list[float]:
    """Each row's choice log-likelihoods, rows in order, flattened."""
    rows = sorted(raw["samples"][task], key=lambda s: s["doc_id"])
    return [float(r[0]) for s in rows for r in s["filtered_resps"]]


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


TASKS = ["mytask", "mygen", "myppl"]


def responses(raw: dict[str, Any], task: str) -> list[Any]:
    return [s["filtered_resps"] for s in sorted(raw["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def hf_raw(tiny_llama: Path, task_dir: Path) -> dict[str, Any]:
    """lm-eval's results and samples of the three tasks through honed's HF backend."""
    from honed.evaluate.lmeval_model import HonedLM

    return run_lm(HonedLM(HFBackend(ModelHandle(kind="hf", path=str(tiny_llama))), batch_size=3), TASKS, task_dir)


def lm_config(task_dir: Path, **extra: Any) -> EvaluatorConfig:
    return EvaluatorConfig.model_validate({"type": "LMEvaluator", "tasks": ["mytask"], "include_path": str(task_dir),
                                           "batch_size": 4, **extra})


# ------------------------------------------------------------------ scores


def test_hf_matches_hand_and_lm_eval_hflm(tiny_llama: Path, task_dir: Path, hand: list[list[float]],
                                          hf_raw: dict[str, Any]) -> None:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.evaluate.lmeval_model import HonedLM

    check_greedy(HFBackend(ModelHandle(kind="hf", path=str(tiny_llama))))
    assert sample_lls(hf_raw, "mytask") == pytest.approx(flat(hand), abs=1e-5)
    assert hf_raw["results"]["mytask"]["acc,none"] == pytest.approx(4 / 6)
    reference = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(tiny_llama).eval(),
                     tokenizer=AutoTokenizer.from_pretrained(tiny_llama), batch_size=1)
    theirs = run_lm(reference, TASKS, task_dir)
    for task in TASKS:
        for key, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in key:
                assert hf_raw["results"][task][key] == pytest.approx(value, rel=1e-6), (task, key)
    assert responses(hf_raw, "mygen") == responses(theirs, "mygen")  # the same greedy text, cut at the stop
    assert any(r[0] for r in responses(hf_raw, "mygen"))
    assert hf_raw["results"]["myppl"]["word_perplexity,none"] > 1
    # documents longer than max_length: several rolling windows, each token predicted once
    short = HFLM(pretrained=reference.model, tokenizer=reference.tokenizer, batch_size=1, max_length=8)
    ours = run_lm(HonedLM(HFBackend(ModelHandle(kind="hf", path=str(tiny_llama))), max_length=8), ["myppl"], task_dir)
    theirs = run_lm(short, ["myppl"], task_dir)
    value = ours["results"]["myppl"]["word_perplexity,none"]
    assert value == pytest.approx(theirs["results"]["myppl"]["word_perplexity,none"], rel=1e-6)
    assert value != pytest.approx(hf_raw["results"]["myppl"]["word_perplexity,none"], rel=1e-3)  # less context


def check_greedy(backend: Backend) -> None:
    """is_greedy: true for the model's own greedy continuation, false once its last token is changed."""
    prompt = backend.tokenizer.encode("### Text: I passed the exam")
    ids = prompt + backend.generate(prompt, 3)
    (lp, greedy), = backend.loglikelihoods([(ids, len(prompt))])
    other = [*ids[:-1], (ids[-1] + 1) % len(backend.tokenizer)]
    (lp_other, greedy_other), = backend.loglikelihoods([(other, len(prompt))])
    assert greedy and not greedy_other and lp_other < lp


@pytest.mark.parametrize("kind", ["onnx", "genai"])
def test_onnx_and_genai_match_hf(kind: str, genai_fp32: ModelHandle, task_dir: Path, hand: list[list[float]],
                                 hf_raw: dict[str, Any]) -> None:
    from honed.evaluate.lmeval_model import HonedLM

    backend: Backend = (OnnxBackend(ModelHandle(kind="onnx", path=str(Path(genai_fp32.path) / "model.onnx")),
                                    Accelerator()) if kind == "onnx" else GenaiBackend(genai_fp32, Accelerator()))
    check_greedy(backend)
    raw = run_lm(HonedLM(backend), TASKS, task_dir)
    assert sample_lls(raw, "mytask") == pytest.approx(flat(hand), abs=2e-3)
    assert raw["results"]["mytask"]["acc,none"] == pytest.approx(4 / 6)
    for metric in ("word_perplexity,none", "bits_per_byte,none"):
        assert raw["results"]["myppl"][metric] == pytest.approx(hf_raw["results"]["myppl"][metric], rel=1e-4)
    assert responses(raw, "mygen") == responses(hf_raw, "mygen")


class _Scripted(Backend):
    """A backend whose generation is fixed text, recording the prompt it was given."""

    kind = "scripted"

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer, self.text, self.prompts = tokenizer, text, []
        self.context_length = 32

    def generate(self, ids: list[int], max_new_tokens: int, stop: Any = ()) -> list[int]:
        self.prompts.append((ids, max_new_tokens, list(stop)))
        return self.tokenizer.encode(self.text, add_special_tokens=False)


def test_generate_until_cuts_at_the_first_stop_and_truncates_the_prompt(tiny_llama: Path) -> None:
    from lm_eval.api.instance import Instance
    from transformers import AutoTokenizer

    from honed.evaluate.lmeval_model import HonedLM

    backend = _Scripted(AutoTokenizer.from_pretrained(tiny_llama), "joy and fear\nsadness. surprise")
    lm = HonedLM(backend, max_gen_toks=10)
    context = "the quick brown fox jumps over the lazy dog " * 4

    def request(gen_kwargs: dict) -> Instance:
        return Instance("generate_until", {}, (context, gen_kwargs), 0)

    out = lm.generate_until([request({"until": ["\n", "."]}), request({"until": "sad", "max_gen_toks": 4}),
                             request({})])
    assert out == ["joy and fear", "joy and fear\n", "joy and fear\nsadness. surprise"]
    full = backend.tokenizer.encode(context)
    assert [p[1:] for p in backend.prompts] == [(10, ["\n", "."]), (4, ["sad"]), (10, [])]
    assert backend.prompts[0][0] == full[-(32 - 10):] and backend.prompts[1][0] == full[-(32 - 4):]


def test_evaluate_model_on_each_runtime(tiny_llama: Path, genai_fp32: ModelHandle, task_dir: Path,
                                        tmp_path: Path) -> None:
    """Through honed's evaluator: result keys '<task>-<metric>', the same accuracy on HF and on the ONNX
    file of the fp32 build (model_class ort runs a genai folder's model.onnx with onnxruntime); sample logs."""
    cfg = lm_config(task_dir, tasks=["mytask", "size_on_disk"], sample_log_num=2, sample_log_dir=str(tmp_path))
    hf = evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg)
    ort = evaluate_model(genai_fp32, lm_config(task_dir, model_class="ort"))
    assert set(hf) == {"mytask-acc", "size_on_disk-bytes"}
    assert hf["mytask-acc"] == ort["mytask-acc"] == pytest.approx(4 / 6)
    assert hf["size_on_disk-bytes"] == sum(f.stat().st_size for f in tiny_llama.rglob("*") if f.is_file())
    logged = [json.loads(line) for line in (tmp_path / "mytask.jsonl").read_text().splitlines()]
    assert [r["doc"]["q"] for r in logged] == QUESTIONS[:2] and len(logged[0]["filtered_resps"]) == len(CHOICES)


def test_workflow_writes_task_metrics_to_footprints_and_report(tiny_llama: Path, task_dir: Path,
                                                               tmp_path: Path) -> None:
    cfg = {
        "input_model": {"model_path": str(tiny_llama)},
        "evaluators": {"lm": {"type": "LMEvaluator", "tasks": ["mytask"], "include_path": str(task_dir),
                              "limit": 0.5, "sub_types": [{"name": "mytask-acc", "priority": 1,
                                                           "goal": {"type": "threshold", "value": 0.5}}]}},
        "engine": {"evaluator": "lm", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")},
    }
    first = run_workflow(validate(cfg))
    assert first.evaluation["output"]["mytask-acc"] == pytest.approx(1.0)  # limit 0.5: the first three rows
    assert first.evaluation["goals_met"] and first.evaluation["objectives"] == ["mytask-acc"]
    fp = json.loads((tmp_path / "out" / "footprints.json").read_text())
    values = fp["evaluation"]["output"]
    assert set(values) == {"mytask-acc"} and 0 <= values["mytask-acc"] <= 1
    assert "mytask-acc" in (tmp_path / "out" / "report.html").read_text()
    del cfg["evaluators"]["lm"]["limit"]  # a changed config is a new evaluation: all six rows
    second = run_workflow(validate(cfg))  # (no passes: the output is the input model, scored once)
    assert second.evaluation["cached"]["input"] is False
    assert second.evaluation["output"]["mytask-acc"] == pytest.approx(4 / 6)
    assert run_workflow(validate(cfg)).evaluation["cached"]["input"] is True


# ------------------------------------------------------------------ config, results, preflight


def test_flatten_keys() -> None:
    raw = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 6},
           "g": {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.5, "exact_match_stderr,x": "N/A"},
           "p": {"word_perplexity,none": 12.5, "flag,none": True}}
    assert lmeval.flatten(raw) == {"t-acc": 0.5, "g-exact_match,strict-match": 0.25,
                                   "g-exact_match,flexible-extract": 0.5, "p-word_perplexity": 12.5}


def test_olive_lm_evaluator_keys_validate(task_dir: Path) -> None:
    olive = {"type": "LMEvaluator", "tasks": ["arc_easy"], "batch_size": 16, "limit": 0.05, "max_length": 2048,
             "device": "cpu", "model_class": "hf", "bootstrap_iters": 0, "num_fewshot": 5,
             "execution_provider": "CPUExecutionProvider", "model_args": {"past_present_share_buffer": False}}
    cfg = EvaluatorConfig.model_validate(olive)
    assert cfg.is_lm and cfg.limit == 0.05 and cfg.max_length == 2048
    nested = EvaluatorConfig.model_validate({"type": "LMEvaluator", "type_args": {"tasks": ["arc_easy"], "limit": 8}})
    assert nested.tasks == ["arc_easy"] and nested.limit == 8
    assert EvaluatorConfig.model_validate({"type": "LMEvaluator", "tasks": ["t"], "sub_types": [
        {"name": "t-word_perplexity"}, {"name": "t-acc"}]}).directions() == {"t-word_perplexity": False, "t-acc": True}
    for written in (cfg, nested, EvaluatorConfig.model_validate({"type": "OnnxEvaluator", "metrics": [
            {"name": "s", "type": "size_on_disk"}]})):  # honed config migrate writes defaults out; they read back
        dumped = written.model_dump(mode="json", exclude_none=True)
        assert EvaluatorConfig.model_validate(dumped).model_dump(mode="json", exclude_none=True) == dumped
    assert set(EvaluatorConfig.model_validate({"metrics": [{"name": "s", "type": "size_on_disk"}]}).model_dump()) == {
        "metrics"}


@pytest.mark.parametrize(("config", "message"), [
    ({"type": "LMEvaluator"}, "needs tasks"),
    ({"metrics": [{"name": "s", "type": "size_on_disk"}], "tasks": ["x"]}, "only apply with type: LMEvaluator"),
    ({"type": "LMEvaluator", "tasks": ["x"], "fewshot_as_multiturn": True}, "needs apply_chat_template"),
    ({"type": "LMEvaluator", "tasks": ["x"], "sub_types": [{"name": "acc"}]}, "not a result key"),
    ({"type": "LMEvaluator", "tasks": ["x"], "model_class": "vllm"}, "model_class"),
    ({"type": "LMEvaluator", "tasks": ["x"], "execution_provider": "CUDAProvider"}, "CUDAExecutionProvider"),
    ({"type": "MTEBEvaluator", "tasks": ["x"]}, "MTEB"),
    ({"type": "SomeEvaluator", "metrics": []}, "unknown evaluator type"),
    ({"metrics": []}, "needs metrics"),
])
def test_bad_lm_configs(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluatorConfig.model_validate(config)


def test_sub_type_without_result_is_an_error(tiny_llama: Path, task_dir: Path) -> None:
    cfg = lm_config(task_dir, sub_types=[{"name": "mytask-acc_norm"}], limit=1)
    with pytest.raises(UserError, match=r"mytask-acc_norm.*results are mytask-acc"):
        evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg)


def lm_workflow(folder: Path, model: Path, include: Path) -> Path:
    return write_config(folder / "wf.json", {
        "input_model": {"model_path": str(model)},
        "evaluators": {"lm": {"type": "LMEvaluator", "tasks": ["rel"], "include_path": str(include)}},
        "engine": {"evaluator": "lm", "output_dir": str(folder / "out"), "cache_dir": str(folder / "cache")},
    })


def test_preflight_names_the_install_and_missing_task_data(tiny_llama: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "rows.jsonl").write_text('{"q": "a", "choices": ["x", "y"], "answer": 0}\n')
    (include / "rel.yaml").write_text(MC_YAML.replace("mytask", "rel").format(data="rows.jsonl"))
    wf = lm_workflow(tmp_path, tiny_llama, include)
    monkeypatch.chdir(tmp_path)  # rows.jsonl sits beside the YAML, not in the working directory
    assert cli("run", "--config", str(wf), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "evaluators.lm.include_path" in err and "data_files 'rows.jsonl' not found" in err
    assert str((include / "rows.jsonl").resolve()) in err.replace("\n", "")  # the fix names the file beside it
    monkeypatch.setattr(lmeval, "available", lambda: False)
    assert cli("run", "--config", str(wf), "--dry-run") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "evaluators.lm.type" in lines[0] and "pip install honed[lmeval]" in lines[0]
    with pytest.raises(UserError, match=r"pip install honed\[lmeval\]"):
        evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), lm_config(include))
