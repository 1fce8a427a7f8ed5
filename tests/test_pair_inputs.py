"""Olive's ``input_cols`` text pairs (huggingface_pre_process: ``tokenizer(row[c1], row[c2])``) reach a sequence
classifier as pairs: accuracy, latency/throughput batches and calibration feeds against transformers /
onnxruntime by hand, on rows where joining the two columns with a newline predicts other classes."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from honed.data.config import DataConfig
from honed.errors import DataError
from honed.evaluate import backends
from honed.evaluate.config import EvaluatorConfig
from honed.evaluate.evaluator import evaluate_model
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator
from tests.helpers import cli

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat", "sleeps", "sun", "numbers", "one",
         "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SCALE = 30.0
"""Every matrix of the tiny BERT times this: at the fixture's init (std 0.02) every input gets the same class, so
nothing would tell a pair from joined text; scaled, about half of the candidate rows change class."""
MARGIN = 0.05
"""Least gap between the top two logits of a kept row, so float noise (batching, onnxruntime) cannot flip it."""


@pytest.fixture(scope="module")
def pair_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_bert with BERT's pair post-processor ([CLS] a [SEP] b [SEP], type ids 0 then 1) and scaled weights."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("pair") / "bert"
    shutil.copytree(tiny_bert, out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(str(out / "tokenizer.json"))
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]  # as BertTokenizer's
    cfg_file.write_text(json.dumps(cfg))
    model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(SCALE)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _tok(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _torch_logits(path: Path, inputs: list[Any]) -> np.ndarray:
    """One row at a time (Olive's batch_size 1): logits of tokenizer(a, b) or tokenizer(text)."""
    from transformers import AutoModelForSequenceClassification

    tok, model = _tok(path), AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return np.stack([model(**tok(*(x if isinstance(x, tuple) else (x,)), return_tensors="pt")).logits[0].numpy()
                         for x in inputs])


def _margin(logits: np.ndarray) -> np.ndarray:
    top = np.sort(logits, axis=-1)
    return top[:, -1] - top[:, -2]


@pytest.fixture(scope="module")
def rows(pair_bert: Path) -> list[dict[str, Any]]:
    """Rows whose pair and newline-joined predictions differ (label: the pair's class), then rows where they
    agree (label: another class), every prediction clear of a near tie."""
    rng = random.Random(0)
    cands = [(" ".join(rng.choices(WORDS, k=rng.randint(2, 6))), " ".join(rng.choices(WORDS, k=rng.randint(2, 6))))
             for _ in range(60)]
    pair = _torch_logits(pair_bert, cands)
    joined = _torch_logits(pair_bert, [f"{a}\n{b}" for a, b in cands])
    clear = (_margin(pair) > MARGIN) & (_margin(joined) > MARGIN)
    p, j = pair.argmax(-1), joined.argmax(-1)
    differ = [i for i in range(len(cands)) if clear[i] and p[i] != j[i]][:8]
    agree = [i for i in range(len(cands)) if clear[i] and p[i] == j[i]][:4]
    assert len(differ) == 8 and len(agree) == 4, "the scaled model no longer separates pairs from joined text"
    return ([{"sentence1": cands[i][0], "sentence2": cands[i][1], "label": int(p[i])} for i in differ]
            + [{"sentence1": cands[i][0], "sentence2": cands[i][1], "label": int((p[i] + 1) % 4)} for i in agree])


@pytest.fixture(scope="module")
def data(rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    path = tmp_path_factory.mktemp("pairdata") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DataConfig.model_validate({
        "name": "d", "load_dataset_config": {"data_name": "json", "data_files": str(path), "split": "train"},
        "pre_process_data_config": {"input_cols": ["sentence1", "sentence2"]},  # label_cols: Olive's default label
        "dataloader_config": {"batch_size": 1},
    })


def _accuracy_by_hand(logits: np.ndarray, rows: list[dict[str, Any]]) -> float:
    return float(np.mean([int(k) == r["label"] for k, r in zip(logits.argmax(-1), rows, strict=True)]))


ACC = EvaluatorConfig.model_validate({"metrics": [{"name": "acc", "type": "accuracy", "data_config": "d",
                                                   "sub_types": [{"name": "accuracy_score"}]}]})


def test_hf_accuracy_reads_the_pair(pair_bert: Path, rows: list[dict[str, Any]], data: DataConfig,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import BertForSequenceClassification

    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    expected = _accuracy_by_hand(_torch_logits(pair_bert, pairs), rows)
    joined = _accuracy_by_hand(_torch_logits(pair_bert, [f"{a}\n{b}" for a, b in pairs]), rows)
    assert expected == pytest.approx(8 / 12) and joined == 0.0  # the rows tell the two apart

    fed: list[dict[str, list[int]]] = []
    forward = BertForSequenceClassification.forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        fed.append({k: kwargs[k][0].tolist() for k in ("input_ids", "token_type_ids") if k in kwargs})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", spy)
    r = evaluate_model(ModelHandle(kind="hf", path=str(pair_bert), task="text-classification"), ACC, {"d": data})
    assert r["acc-accuracy_score"] == pytest.approx(expected, abs=1e-12)
    tok = _tok(pair_bert)
    assert fed == [{k: tok(a, b)[k] for k in ("input_ids", "token_type_ids")} for a, b in pairs]
    sep = tok.convert_tokens_to_ids("[SEP]")
    first = len(tok(pairs[0][0])["input_ids"]) - 1  # [CLS] a [SEP]: the first [SEP] ends sentence1
    assert fed[0]["input_ids"][first] == sep and fed[0]["input_ids"][-1] == sep and 1 in fed[0]["token_type_ids"]


@pytest.fixture(scope="module")
def onnx_pair(pair_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    tmp = tmp_path_factory.mktemp("pair_onnx")
    cls = get_pass("OnnxConversion")
    ctx = PassContext(pass_name="conv", host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=tmp / "work", cache_dir=tmp / "cache")
    (tmp / "out").mkdir()
    return cls().run(ModelHandle(kind="hf", path=str(pair_bert)), cls.config_class(), tmp / "out", ctx)


def _ort_logits(handle: ModelHandle, path: Path, inputs: list[Any]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(Path(handle.path) / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    assert "token_type_ids" in names
    tok = _tok(path)
    out = []
    for x in inputs:
        enc = tok(*(x if isinstance(x, tuple) else (x,)), return_tensors="np")
        out.append(sess.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0][0])
    return np.stack(out)


def test_onnx_accuracy_feeds_token_type_ids(pair_bert: Path, onnx_pair: ModelHandle, rows: list[dict[str, Any]],
                                            data: DataConfig) -> None:
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    expected = _accuracy_by_hand(_ort_logits(onnx_pair, pair_bert, pairs), rows)
    assert expected == pytest.approx(8 / 12)
    r = evaluate_model(onnx_pair, ACC, {"d": data})
    assert r["acc-accuracy_score"] == pytest.approx(expected, abs=1e-12)


def test_onnx_class_logits_fill_type_ids_a_tokenizer_lacks(pair_bert: Path, onnx_pair: ModelHandle,
                                                           rows: list[dict[str, Any]]) -> None:
    """A tokenizer that returns no token_type_ids still feeds a model that takes them (all segment 0)."""
    backend = backends.open_backend(onnx_pair)
    backend.tokenizer.model_input_names = ["input_ids", "attention_mask"]
    text = rows[0]["sentence1"]
    got = backend.class_logits([text])
    np.testing.assert_allclose(got, _ort_logits(onnx_pair, pair_bert, [text]), atol=1e-5)


@pytest.mark.parametrize("kind", ["latency", "throughput"])
def test_timed_batch_is_pair_tokenized(kind: str, pair_bert: Path, rows: list[dict[str, Any]], data: DataConfig,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[list[int]]] = []
    monkeypatch.setattr(backends.HFBackend, "forward", lambda self, batch: seen.append(batch))
    cfg = EvaluatorConfig.model_validate({"metrics": [{
        "name": "t", "type": kind, "data_config": "d", "sub_types": [{"name": "avg"}],
        "user_config": {"warmup_num": 0, "repeat_test_num": 2, "batch_size": 4}}]})
    evaluate_model(ModelHandle(kind="hf", path=str(pair_bert), task="text-classification"), cfg, {"d": data})
    # dataloader_config.batch_size 1 wins over user_config.batch_size 4, as in Olive
    want = _tok(pair_bert)(rows[0]["sentence1"], rows[0]["sentence2"])["input_ids"]
    assert seen == [[want], [want]]


def test_calibration_feeds_carry_the_pair(pair_bert: Path, onnx_pair: ModelHandle, rows: list[dict[str, Any]],
                                          data: DataConfig) -> None:
    from honed.passes._onnx_common import calibration_feeds

    feeds = calibration_feeds(Path(onnx_pair.path) / "model.onnx", onnx_pair, data, 3)
    tok = _tok(pair_bert)
    assert len(feeds) == 3
    for feed, r in zip(feeds, rows, strict=False):
        enc = tok(r["sentence1"], r["sentence2"])
        assert feed["input_ids"][0].tolist() == enc["input_ids"]
        assert feed["token_type_ids"][0].tolist() == enc["token_type_ids"]


def test_one_input_col_is_the_text_of_a_causal_lm(tiny_llama: Path, data: DataConfig) -> None:
    from honed.data.formatting import format_rows
    from honed.data.sources import load_rows

    one = data.model_copy(update={"pre_process_data_config": data.pre_process_data_config.model_copy(
        update={"input_cols": ["sentence2"]})})
    ds = load_rows(one)
    assert format_rows(one, ds) == ds["sentence2"]
    ppl = EvaluatorConfig.model_validate({"metrics": [{"name": "p", "type": "perplexity", "data_config": "d"}]})
    with pytest.raises(DataError) as e:  # two columns are a pair, which a causal LM does not read
        evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), ppl, {"d": data})
    msg = str(e.value)
    assert "\n" not in msg and "text_template" in msg and "'{sentence1}\\n{sentence2}'" in msg
    assert evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), ppl, {"d": one})["p-perplexity"] > 1


BAD = [
    ({"input_cols": ["a", "b", "c"]}, "input_cols names 3 columns"),
    ({"input_cols": ["a"], "text_template": "{a}"}, "input_cols and text_template both say"),
    ({"input_cols": ["a"], "text_cols": ["a"]}, "input_cols and text_cols both say"),
    ({"input_cols": ["a"], "chat_template": True}, "input_cols and chat_template both say"),
    ({"input_cols": []}, "input_cols"),
    ({"input_cols": ["a"], "label_cols": ["x", "y"]}, "label_cols names 2 columns"),
    ({"input_cols": ["a"], "label_cols": ["x"], "label_col": "y"}, "name different columns"),
]


def _workflow(folder: Path, model: Path, pre: dict[str, Any]) -> str:
    (folder / "rows.jsonl").write_text('{"a": "x y", "b": "z", "c": "w", "label": 0}\n')
    wf = {"input_model": {"model_path": str(model), "task": "text-classification"},
          "data_configs": [{"name": "d", "load_dataset_config": {"data_files": "rows.jsonl"},
                            "pre_process_data_config": pre}],
          "evaluators": {"e": {"metrics": [{"name": "acc", "type": "accuracy", "data_config": "d"}]}},
          "passes": {"conv": {"type": "OnnxConversion"}},
          "engine": {"evaluator": "e", "cache_dir": "cache", "output_dir": "out"}}
    (folder / "wf.json").write_text(json.dumps(wf))
    return "wf.json"


def test_pair_config_dry_runs(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wf = _workflow(tmp_path, tiny_bert, {"input_cols": ["a", "b"], "label_cols": ["label"], "max_samples": 4})
    assert cli("run", "--config", wf, "--dry-run") == 0, capsys.readouterr().err
    wf = _workflow(tmp_path, tiny_bert, {"input_cols": ["a", "missing"]})  # columns checked as text_cols are
    assert cli("run", "--config", wf, "--dry-run") == 2
    assert "input_cols" in capsys.readouterr().err


@pytest.mark.parametrize(("pre", "words"), BAD, ids=[w for _, w in BAD])
def test_config_errors_are_one_line(pre: dict[str, Any], words: str, tiny_bert: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wf = _workflow(tmp_path, tiny_bert, pre)
    capsys.readouterr()
    assert cli("run", "--config", wf, "--dry-run") == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error:") and "pre_process_data_config" in errors[0], err
    assert words in errors[0], err
    if words.startswith("input_cols and"):
        assert "choose one" in errors[0]
