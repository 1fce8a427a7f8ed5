"""Olive's data-side schema in honed: col_filters, user_script components, dummy containers, misuse errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from honed.data import DataConfig, build_datasets, load_rows
from honed.data.batches import dummy_past, timing_batch
from honed.errors import DataError, UserError
from honed.evaluate.config import EvaluatorConfig
from honed.evaluate.evaluator import evaluate_model
from honed.models.handle import ModelHandle
from honed.util.user_script import load_script
from tests.helpers import cli, write_config

ROWS = [
    {"q": "where is the river", "a": "north", "lang": "en", "n": 1, "ok": True},
    {"q": "wo ist der fluss", "a": "norden", "lang": "de", "n": 1, "ok": True},
    {"q": "when does it rain", "a": "april", "lang": "en", "n": 2, "ok": False},
    {"q": "wann regnet es", "a": "april", "lang": "de", "n": 2, "ok": False},
    {"q": "who rows the boat", "a": "anna", "lang": "en", "n": 3, "ok": True},
]

SCRIPT = '''
from olive.data.registry import Registry
import helper  # from script_dir

@Registry.register_dataset()
def tiny_rows(data_dir, lang="en"):
    helper.CALLS.append(("load", data_dir))
    return [{"q": f"question {i}", "a": f"answer {i}", "lang": "en" if i % 2 == 0 else "de"} for i in range(6)]

@Registry.register_pre_process("Shout")
def shout_rows(dataset, model_name=None, suffix="!"):
    helper.CALLS.append(("pre", model_name))
    return dataset.map(lambda r: {"q": r["q"].upper() + suffix})

@Registry.register_pre_process()
def to_ids(dataset, tokenizer):
    helper.CALLS.append(("ids", type(tokenizer).__name__))
    # left-padded, with the prompt masked out of the loss
    return [{"input_ids": [0, 0, 5, 6, 7 + i], "attention_mask": [0, 0, 1, 1, 1], "labels": [-100, -100, -100, 6, 7 + i]}
            for i in range(len(dataset))]

@Registry.register_dataloader()
def first_two(dataset, batch_size=1):
    import torch
    helper.CALLS.append(("loader", None if dataset is None else len(dataset)))
    yield {"input_ids": torch.tensor([[3, 4, 5], [6, 7, 8]])[:batch_size]}, 0  # (inputs, label) as Olive's

def plain_loader(data_dir, batch_size):  # Olive's older dataloader_func: no dataset argument
    helper.CALLS.append(("plain", data_dir))
    yield {"input_ids": [[9] * 4] * batch_size}
'''


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture
def tok(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture
def rows_file(tmp_path: Path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return str(path)


@pytest.fixture
def script(tmp_path: Path) -> tuple[str, str]:
    """(user_script, script_dir) in a fresh folder per test, so each test imports its own copy."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helper.py").write_text("CALLS = []\n")
    path = tmp_path / "components.py"
    path.write_text(SCRIPT + f"\n# {tmp_path.name}\n")
    sys.modules.pop("helper", None)
    return str(path), str(lib)


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """What the user's load function is told to read (a folder of its own, as in Olive examples)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("rows come from code\n")
    return str(tmp_path / "data")


def translator_keeps_components() -> bool:
    """Whether config/olive.py passes user_script and component types through (the lead's side of this)."""
    from honed.config.olive import translate

    out = translate({"input_model": {"model_path": "m"}, "engine": {}, "data_configs": [{
        "name": "d", "user_script": "s.py", "load_dataset_config": {"type": "f"}}]}).config["data_configs"][0]
    return out.get("user_script") == "s.py" and out.get("load_dataset_config", {}).get("type") == "f"


needs_translator = pytest.mark.skipif(not translator_keeps_components(),
                                      reason="config/olive.py still drops user_script / component types")


def calls(user_script: str, script_dir: str) -> list:
    load_script(user_script, script_dir)  # cached: the module the data layer imported
    return sys.modules["helper"].CALLS


# -- col_filters ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("filters", "max_samples", "kept"), [
    ({"lang": "en"}, None, [0, 2, 4]),
    ({"lang": "de", "n": 2}, None, [3]),
    ({"ok": True}, None, [0, 1, 4]),
    ({"n": 2}, None, [2, 3]),
    ({"lang": "en"}, 2, [0, 2]),  # filtered before max_samples: the first two *English* rows
])
def test_col_filters_keep_exactly_the_matching_rows(rows_file: str, tok: Any, filters: dict, max_samples: int | None,
                                                     kept: list[int]) -> None:
    pre = {"text_template": "{q} -> {a}", "completion_only": False, "dedupe": False}
    if max_samples:
        pre["max_samples"] = max_samples
    cfg = DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": rows_file, "col_filters": filters},
                                     "pre_process_data_config": pre})
    if not max_samples:  # max_samples applies after formatting; the rows are all that match
        assert load_rows(cfg).to_list() == [ROWS[i] for i in kept]
    splits = build_datasets(cfg, tok)
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in splits.train["input_ids"]]
    assert texts == [f"{ROWS[i]['q']} -> {ROWS[i]['a']}" for i in kept]


def test_col_filters_misuse_is_one_line(rows_file: str, tmp_path: Path, tiny_llama: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    cfg = DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": rows_file,
                                                                          "col_filters": {"language": "en"}}})
    with pytest.raises(DataError) as e:
        load_rows(cfg)
    assert "load_dataset_config.col_filters.language" in str(e.value) and "\n" not in str(e.value)
    none = cfg.model_copy(update={"load_dataset_config": cfg.load_dataset_config.model_copy(
        update={"col_filters": {"lang": "fr"}})})
    with pytest.raises(DataError, match="keeps none of 5 rows"):
        load_rows(none)
    # the dry run names the full key path before anything loads
    wf = write_config(tmp_path / "wf.json", {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [{"name": "d", "load_dataset_config": {"data_files": rows_file, "col_filters": {"language": "en"}},
                          "pre_process_data_config": {"text_template": "{q}"}}],
        "passes": {"append": {"type": "TestAppendData", "data_config": "d", "tag": "a"}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    assert cli("run", "--config", str(wf), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "data_configs[0].load_dataset_config.col_filters.language: no column 'language'" in " ".join(err.split())


# -- user_script components ----------------------------------------------------------------------------

def test_user_load_and_pre_process_are_called(script: tuple[str, str], data_dir: str, tok: Any, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    user_script, script_dir = script
    cfg = DataConfig.model_validate({
        "name": "d", "user_script": user_script, "script_dir": script_dir,
        "load_dataset_config": {"type": "tiny_rows", "data_dir": data_dir, "col_filters": {"lang": "en"}},
        "pre_process_data_config": {"type": "SHOUT", "suffix": "?", "text_template": "{q} {a}", "completion_only": False},
    })
    assert cfg.load_dataset_config.params == {"data_dir": data_dir}  # Olive's flat spelling gathered
    with caplog.at_level(logging.INFO, logger="honed"):
        rows = load_rows(cfg).to_list()
        splits = build_datasets(cfg, tok, cache_dir=tmp_path / "cache")
        build_datasets(cfg, tok, cache_dir=tmp_path / "cache")  # a cache hit: the script is not run again
    assert [r["q"] for r in rows] == ["QUESTION 0?", "QUESTION 2?", "QUESTION 4?"]
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in splits.train["input_ids"]]
    assert texts == ["QUESTION 0? answer 0", "QUESTION 2? answer 2", "QUESTION 4? answer 4"]
    log = [r.getMessage() for r in caplog.records if "running user_script" in r.getMessage()]
    assert len(log) == 1 and user_script in log[0]
    # Olive fills in model_name when the function takes it: honed does when it has a tokenizer (the build)
    assert calls(user_script, script_dir) == [("load", data_dir), ("pre", None),
                                              ("load", data_dir), ("pre", tok.name_or_path)]
    assert "olive" not in sys.modules and script_dir not in sys.path  # the stand-in and the path are gone again


def test_tokenized_rows_from_a_user_function_are_used_as_given(script: tuple[str, str], data_dir: str, tok: Any,
                                                                tmp_path: Path) -> None:
    user_script, script_dir = script
    cfg = DataConfig.model_validate({
        "name": "d", "user_script": user_script, "script_dir": script_dir,
        "load_dataset_config": {"type": "tiny_rows", "data_dir": data_dir},
        "pre_process_data_config": {"type": "to_ids", "max_seq_len": 8},
    })
    splits = build_datasets(cfg, tok)
    assert splits.train["input_ids"] == [[5, 6, 7 + i] for i in range(6)]  # padding gone, no EOS or BOS added
    assert splits.train["labels"] == [[-100, 6, 7 + i] for i in range(6)]
    assert calls(user_script, script_dir) == [("load", data_dir), ("ids", type(tok).__name__)]
    # a dump with every default filled in (honed config migrate) validates and builds the same
    again = DataConfig.model_validate(cfg.model_dump(mode="json"))
    assert build_datasets(again, tok).train["input_ids"] == splits.train["input_ids"]


@needs_translator
def test_workflow_with_user_components_dry_runs_and_tokenizes(script: tuple[str, str], data_dir: str, tiny_llama: Path,
                                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    user_script, script_dir = script
    wf = write_config(tmp_path / "wf.yaml", {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [{
            "name": "train", "type": "HuggingfaceContainer", "user_script": user_script, "script_dir": script_dir,
            "load_dataset_config": {"type": "tiny_rows", "data_dir": data_dir, "col_filters": {"lang": "de"}},
            "pre_process_data_config": {"type": "shout", "text_template": "{q} => {a}", "max_seq_len": 64},
        }],
        "passes": {"append": {"type": "TestAppendData", "data_config": "train", "tag": "a"}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    assert cli("run", "--config", str(wf), "--dry-run") == 0
    capsys.readouterr()
    assert cli("data", "preview", "--config", str(wf), "--data", "train", "--json") == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["rows"] == 3 and summary["tokens"]["total"] > 0
    assert [s["prompt"] + s["answer"] for s in summary["samples"]] == [
        f"QUESTION {i}! => answer {i}" for i in (1, 3, 5)]
    assert " ".join(err.split()).count("running user_script") == 1


# -- dummy data ----------------------------------------------------------------------------------------

DUMMY = {"name": "dummy", "type": "DummyDataContainer",
         "load_dataset_config": {"input_shapes": [[2, 6], [2, 6]], "input_names": ["input_ids", "attention_mask"],
                                 "input_types": ["int64", "int64"], "max_samples": 4}}
PROMPT = {"name": "prompt", "type": "transformerspromptdummydatacontainer", "dataloader_config": {"batch_size": 3},
          "load_dataset_config": {"model_name": "ignored/model", "use_fp16": True}}


TOKEN = {"name": "token", "type": "TransformersTokenDummyDataContainer", "load_dataset_config": {"use_fp16": True}}


@pytest.mark.parametrize(("data", "shape"), [
    (DUMMY, (2, 6, 0, 1)),                    # Olive's DummyDataset: ones, batch in the shape
    (PROMPT, (3, 8, 0, None)),                # seq_len 8 (the container default), batch from dataloader_config
    ({**PROMPT, "load_dataset_config": {"seq_len": 5}}, (3, 5, 0, None)),
    (TOKEN, (1, 1, 8, None)),                 # one new token after 8 cached (the container's defaults)
    ({**TOKEN, "load_dataset_config": {"past_seq_len": 0}}, (1, 1, 0, None)),
    ({"name": "t", "type": "TransformersDummyDataContainer"}, (1, 128, 128, None)),
])
def test_dummy_batches(tok: Any, data: dict, shape: tuple) -> None:
    cfg = DataConfig.model_validate(data)
    batch = timing_batch(cfg, tok, 1)
    past = dummy_past(cfg, tok, len(batch or []))
    rows, seq, cached, value = shape
    assert batch is not None and len(batch) == rows and {len(r) for r in batch} == {seq}
    assert (past is None) if not cached else (len(past) == rows and {len(r) for r in past} == {cached})
    assert all(0 <= t < tok.vocab_size for r in batch + (past or []) for t in r)
    if value is not None:
        assert {t for r in batch for t in r} == {value}


def test_decode_step_after_a_kv_cache_matches_a_full_forward(tiny_llama: Path) -> None:
    """What TransformersTokenDummyDataContainer times: the new token's logits equal those of a full forward
    over past + new, and every call starts from the same past_seq_len-token cache."""
    import torch

    from honed.evaluate.backends import HFBackend
    from honed.evaluate.past_timing import with_past

    backend = HFBackend(ModelHandle(kind="hf", path=str(tiny_llama)))
    model = backend.model
    seen: list[tuple[int, Any]] = []

    class Spy(torch.nn.Module):
        def forward(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None, cache: Any = None,
                    use_cache: bool = False) -> Any:
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                        use_cache=use_cache)
            if position_ids is not None:  # the timed step (the cache fill passes none)
                seen.append((cache.get_seq_length() - input_ids.shape[1], out.logits))
            return out

    backend.model = Spy()
    past, new = [[5, 9, 14, 3, 7, 21, 2, 11], [8, 8, 1, 30, 4, 6, 12, 19]], [[17], [23]]
    batch = with_past(backend, past, new)
    batch.call()
    batch.call()
    assert batch == new and [n for n, _ in seen] == [8, 8, 8]  # one untimed check, then the two calls
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([p + q for p, q in zip(past, new, strict=True)])).logits[:, -1:]
    for _, logits in seen:
        assert torch.allclose(logits.float(), full.float(), atol=1e-4)


def test_dummy_data_for_a_latency_metric_on_a_tiny_model(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from honed.data import batches
    from honed.evaluate.backends import HFBackend

    monkeypatch.setattr(batches, "_warned", set())  # warned once per process; this test wants to see it
    seen: list[list[list[int]]] = []
    forward = HFBackend.forward
    monkeypatch.setattr(HFBackend, "forward", lambda self, batch: (seen.append(batch), forward(self, batch))[1])
    cfg = EvaluatorConfig.model_validate({"metrics": [
        {"name": "lat", "type": "latency", "data_config": "dummy", "user_config": {"warmup_num": 1, "repeat_test_num": 2}},
        {"name": "tp", "type": "throughput", "data_config": "prompt", "user_config": {"warmup_num": 0, "repeat_test_num": 2}},
        {"name": "tok", "type": "latency", "data_config": "token", "user_config": {"warmup_num": 0, "repeat_test_num": 2}},
    ]})
    data = {n: DataConfig.model_validate(d) for n, d in (("dummy", DUMMY), ("prompt", PROMPT), ("token", TOKEN))}
    with caplog.at_level(logging.WARNING, logger="honed"):
        r = evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg, data)
    assert r["lat-avg"] > 0 and r["tp-avg"] > 0 and r["tok-avg"] > 0
    assert seen[0] == [[1] * 6] * 2 and len(seen) == 3 + 2  # the token metric times decode steps, not forward()
    assert [len(b) for b in seen[3:]] == [3, 3] and {len(x) for x in seen[3]} == {8}
    assert any("model_name, use_fp16 not used" in m for m in caplog.messages)


def test_user_dataloader_feeds_latency(script: tuple[str, str], data_dir: str, tiny_llama: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from honed.evaluate.backends import HFBackend

    user_script, script_dir = script
    seen: list = []
    forward = HFBackend.forward
    data = {
        "loader": DataConfig.model_validate({
            "name": "loader", "user_script": user_script, "script_dir": script_dir,
            "load_dataset_config": {"type": "tiny_rows", "data_dir": data_dir},
            "dataloader_config": {"type": "first_two", "batch_size": 2}}),
        "norows": DataConfig.model_validate({  # Olive's simple_dataset: the loader gets dataset None
            "name": "norows", "type": "DataContainer", "user_script": user_script, "script_dir": script_dir,
            "load_dataset_config": {"type": "simple_dataset"}, "dataloader_config": {"type": "first_two"}}),
        "older": DataConfig.model_validate({  # Olive's metric dataloader_func, moved into a data config
            "name": "older", "user_script": user_script, "script_dir": script_dir, "dataloader_func": "plain_loader",
            "dataloader_config": {"data_dir": data_dir, "batch_size": 3}}),
    }
    cfg = EvaluatorConfig.model_validate({"metrics": [
        {"name": f"lat_{n}", "type": "latency", "data_config": n, "user_config": {"warmup_num": 0, "repeat_test_num": 1}}
        for n in data]})
    monkeypatch.setattr(HFBackend, "forward", lambda self, batch: (seen.append(batch), forward(self, batch))[1])
    r = evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)), cfg, data)
    assert seen == [[[3, 4, 5], [6, 7, 8]], [[3, 4, 5]], [[9] * 4] * 3] and r["lat_loader-avg"] > 0
    assert calls(user_script, script_dir) == [("load", data_dir), ("loader", 6), ("loader", None), ("plain", data_dir)]


# -- misuse: one line each -----------------------------------------------------------------------------

def _config_error(data: dict) -> str:
    with pytest.raises(ValidationError) as e:
        DataConfig.model_validate({"name": "d", **data})
    return e.value.errors()[0]["msg"]


@pytest.mark.parametrize(("data", "needle"), [
    ({"type": "TransformersDummyDataContainer", "load_dataset_config": {"seq_len": 1 << 20, "past_seq_len": 1}},
     "seq_len 1048576 + past_seq_len 1 is over 2**20 tokens"),
    ({"type": "TransformersDummyDataContainer", "load_dataset_config": {"input_shapes": [[1, 8]]}},
     "input_shapes is for DummyDataContainer"),
    ({"type": "DummyDataContainer"}, "needs load_dataset_config.input_shapes"),
    ({"type": "DummyDataContainer", "load_dataset_config": {"input_shapes": [[1, 3, 224, 224]],
                                                             "input_names": ["pixel_values"]}}, "not pixel_values"),
    ({"type": "DummyDataContainer", "load_dataset_config": {"input_shapes": [[1, 8]], "input_types": ["float32"]}},
     "input_ids is 'float32'"),
    ({"type": "DummyDataContainer", "load_dataset_config": {"input_shapes": [[1, 8]], "data_name": "imdb"}},
     "load_dataset_config.data_name does not apply to DummyDataContainer"),
    ({"type": "ImageDataContainer"}, "not a data container honed has"),
    ({"load_dataset_config": {"type": "my_loader"}}, "load_dataset_config.type 'my_loader' is not one of honed's"),
    ({"load_dataset_config": {"type": "raw_dataset"}}, "raw binary input files"),
    ({"load_dataset_config": {"seq_len": 8}}, "load_dataset_config.seq_len is for the dummy containers"),
    ({"load_dataset_config": {"type": "dummy_dataset"}}, "set type: DummyDataContainer"),
    ({"load_dataset_config": {"data_name": "x", "colfilters": {"a": 1}}}, "Extra inputs are not permitted"),
])
def test_config_misuse_is_one_line(data: dict, needle: str) -> None:
    msg = _config_error(data)
    assert needle in msg and "\n" not in msg


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("source", "load_type", "needle"), [
    ("from olive.data.component.dataset import BaseDataset\n", "f", "imports olive.data.component, which needs Olive"),
    ("raise RuntimeError('no GPU here')\n", "f", "raised RuntimeError while being imported: no GPU here"),
    ("def f(:\n", "f", "line 1: syntax error"),
    ("def g(**kw):\n    return [{'text': 'a'}]\n", "f", "neither registers nor defines it; it offers g"),
    ("def f(path):\n    return [{'text': 'a'}]\n", "f", "cannot be called with ['data_dir']"),
    ("def f(data_dir):\n    return {}['x']\n", "f", "raised KeyError: 'x'"),
    ("def f(data_dir):\n    return 3\n", "f", "returned int"),
    ("def f(data_dir):\n    return []\n", "f", "returned no rows"),
])
def test_user_script_failures_are_one_line(tmp_path: Path, source: str, load_type: str, needle: str) -> None:
    cfg = DataConfig.model_validate({"name": "d", "user_script": _write(tmp_path / "s.py", source),
                                     "load_dataset_config": {"type": load_type, "data_dir": str(tmp_path)}})
    with pytest.raises(DataError) as e:
        load_rows(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert "olive" not in sys.modules


@needs_translator
def test_uses_honed_cannot_serve_are_one_line(script: tuple[str, str], rows_file: str, tok: Any, tiny_llama: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    user_script, script_dir = script
    with pytest.raises(DataError, match="made-up inputs for latency/throughput"):
        build_datasets(DataConfig.model_validate(DUMMY), tok)
    loader = DataConfig.model_validate({"name": "d", "user_script": user_script, "script_dir": script_dir,
                                        "load_dataset_config": {"data_files": rows_file},
                                        "dataloader_config": {"type": "first_two"}})
    with pytest.raises(DataError, match=r"dataloader_config\.type 'first_two' would batch data that honed batches"):
        build_datasets(loader, tok)
    with pytest.raises(ValidationError, match=r"user_config\.dataloader_func is Olive's older metric dataloader"):
        EvaluatorConfig.model_validate({"metrics": [{"name": "lat", "type": "latency",
                                                     "user_config": {"dataloader_func": "make_loader"}}]})
    wf = write_config(tmp_path / "wf.json", {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [
            DUMMY,
            {"name": "post", "user_script": user_script, "script_dir": script_dir,
             "load_dataset_config": {"data_files": rows_file}, "pre_process_data_config": {"text_template": "{q} {a}"},
             "post_process_data_config": {"type": "my_post"}},
        ],
        "evaluators": {"ev": {"metrics": [
            {"name": "acc", "type": "accuracy", "data_config": "dummy"},
            {"name": "acc2", "type": "accuracy", "data_config": "post"},
            {"name": "lat", "type": "latency", "data_config": "dummy"},
        ]}},
        "passes": {"append": {"type": "TestAppendData", "data_config": "dummy", "tag": "a"}},
        "engine": {"evaluator": "ev", "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    assert cli("run", "--config", str(wf), "--dry-run") == 2
    err = [" ".join(line.split()) for line in capsys.readouterr().err.split("error:")[1:]]
    assert len(err) == 4, err
    assert "passes.append.data_config: data config 'dummy' is DummyDataContainer" in err[0]
    assert "evaluators.ev.metrics[0].data_config: data config 'dummy' is DummyDataContainer" in err[1]
    assert "evaluators.ev.metrics[1].data_config: data config 'post': post_process_data_config.type 'my_post'" in err[2]
    # ... and, read from the script without running it, my_post is not even there
    assert "data_configs[1].post_process_data_config.type: components.py does not define or register 'my_post'" \
        in err[3]
    with pytest.raises(UserError, match=r"metric 'acc'.*no rows for an accuracy metric"):
        evaluate_model(ModelHandle(kind="hf", path=str(tiny_llama)),
                       EvaluatorConfig.model_validate({"metrics": [{"name": "acc", "type": "accuracy",
                                                                    "data_config": "dummy"}]}),
                       {"dummy": DataConfig.model_validate(DUMMY)})
