"""Workflow dicts (honed's schema) for the one-line commands.

Each function returns a plain dict that ``honed run`` accepts as a file and
``honed.config.load.validate`` accepts in memory; the CLI shortcuts only parse flags and call
these, so the Python API and the commands build the same workflow.  Option dicts
(``pass_options``, ``training_args``, ``data_options``) use the pass and data config field
names unchanged; anything left out takes the pass's own default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from honed.errors import UserError
from honed.workflows.inputs import CAUSAL_LM, input_model, is_onnx

FineTuneMethod = Literal["lora", "qlora", "dora"]
Precision = Literal["int4", "int8", "fp16", "fp32"]
Algorithm = Literal["rtn", "hqq", "dynamic", "static", "gptq", "awq"]
Device = Literal["cpu", "gpu"]

FINETUNE_PASSES = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA"}
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".tsv")


def default_cache_dir(output_dir: str | Path) -> str:
    """``<OUT>/../.honed-cache``: beside the output, so several outputs share one cache."""
    return str(Path(output_dir).expanduser().resolve().parent / ".honed-cache")


def _engine(output_dir: str | Path, cache_dir: str | Path | None, target: str | None = None) -> dict[str, Any]:
    engine: dict[str, Any] = {
        "output_dir": str(Path(output_dir).expanduser().resolve()),
        "cache_dir": str(Path(cache_dir).expanduser().resolve()) if cache_dir else default_cache_dir(output_dir),
    }
    if target:
        engine["target"] = target
    return engine


def _gpu_target() -> dict[str, Any]:
    return {"gpu": {"type": "LocalSystem", "accelerators": [{"device": "gpu",
                                                              "execution_provider": "CUDAExecutionProvider"}]}}


def _workflow(section: dict[str, Any], passes: dict[str, Any], output_dir: str | Path,
              cache_dir: str | Path | None, *, device: str = "cpu",
              data_configs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The workflow dict every shortcut returns; a gpu device adds a CUDA system as the target."""
    out: dict[str, Any] = {"input_model": section}
    if device == "gpu":
        out["systems"] = _gpu_target()
    if data_configs:
        out["data_configs"] = data_configs
    out["passes"] = passes
    out["engine"] = _engine(output_dir, cache_dir, "gpu" if device == "gpu" else None)
    return out


def data_config(name: str, data: str, *, data_options: dict[str, Any] | None = None,
                load_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A data config over a local file (json/jsonl/csv/parquet/txt) or, if no such file exists, a hub dataset."""
    load = dict(load_options or {})
    p = Path(data).expanduser()
    if p.exists():
        if p.is_file() and p.suffix.lower() not in DATA_SUFFIXES:
            raise UserError(f"--data {data}: unsupported file type '{p.suffix}'; give a "
                            + "/".join(s.lstrip(".") for s in DATA_SUFFIXES) + " file")
        load["data_files"] = str(p.resolve())
    elif p.suffix.lower() in DATA_SUFFIXES or data.startswith((".", "/", "~")):
        raise UserError(f"--data {data}: file not found; check the path")
    elif "://" in data:
        load["data_files"] = data
    else:
        load["data_name"] = data  # a hub dataset id
    out: dict[str, Any] = {"name": name, "load_dataset_config": load}
    if data_options:
        out["pre_process_data_config"] = dict(data_options)
    return out


def finetune(
    model: str, data: str, *, output_dir: str | Path, method: FineTuneMethod = "lora",
    text_template: str | None = None, pass_options: dict[str, Any] | None = None,
    training_args: dict[str, Any] | None = None, data_options: dict[str, Any] | None = None,
    load_options: dict[str, Any] | None = None, merge: bool = False, adapter_path: str | None = None,
    task: str | None = None, cache_dir: str | Path | None = None, load_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` on a data file with LoRA, QLoRA or DoRA; ``merge`` folds the adapter in.

    ``text_template`` (or ``data_options['text_cols']``) says how a row becomes text; the loss
    covers the answer (completion-only; see ``honed.data.formatting``) by default.
    """
    if method not in FINETUNE_PASSES:
        raise UserError(f"--method {method}: choose one of {', '.join(FINETUNE_PASSES)}")
    options = dict(data_options or {})
    if text_template is not None:
        options["text_template"] = text_template
    if not options.get("text_template") and not options.get("text_cols") and not options.get("chat_template"):
        raise UserError("finetune needs --text-template (e.g. '### Text: {phrase}\\n### Tone: {tone}') "
                        "or --text-cols to say how a row becomes text")
    section = input_model(model, adapter_path=adapter_path, task=task, load_kwargs=load_kwargs)
    if section.get("type") == "OnnxModel":
        raise UserError(f"-m {model}: an ONNX model cannot be fine-tuned; give the Hugging Face model")
    train = {"type": FINETUNE_PASSES[method], "train_data_config": "train", **(pass_options or {})}
    if training_args:
        train["training_args"] = dict(training_args)
    passes: dict[str, Any] = {method: train}
    if merge:
        passes["merge"] = {"type": "MergeAdapterWeights"}
    return _workflow(section, passes, output_dir, cache_dir,
                     data_configs=[data_config("train", data, data_options=options, load_options=load_options)])


def optimize(
    model: str, *, output_dir: str | Path, device: Device = "cpu", precision: Precision = "int4",
    adapter_path: str | None = None, task: str | None = None, cache_dir: str | Path | None = None,
    load_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, quantize and optimize ``model`` for a device (Olive's ``auto-opt``).

    A causal LM goes through ModelBuilder at ``precision`` (an onnxruntime-genai folder); an
    encoder or classifier through OnnxConversion + OrtTransformersOptimization and then
    int8: OnnxDynamicQuantization, fp16: OnnxFloatToFloat16, int4: OnnxBlockWiseRtnQuantization.
    """
    if device not in ("cpu", "gpu"):
        raise UserError(f"--device {device}: choose cpu or gpu")
    if precision not in ("int4", "int8", "fp16", "fp32"):
        raise UserError(f"--precision {precision}: choose int4, int8, fp16 or fp32")
    section = input_model(model, adapter_path=adapter_path, task=task, load_kwargs=load_kwargs)
    passes: dict[str, Any] = {}
    onnx_input = section.get("type") == "OnnxModel"
    if section["task"] == CAUSAL_LM and not onnx_input:
        passes["builder"] = {"type": "ModelBuilder", "precision": precision}
    else:
        if not onnx_input:
            passes["conversion"] = {"type": "OnnxConversion"}
        passes["optimization"] = {"type": "OrtTransformersOptimization"}
        if precision == "int8":
            passes["quantization"] = {"type": "OnnxDynamicQuantization"}
        elif precision == "int4":
            passes["quantization"] = {"type": "OnnxBlockWiseRtnQuantization", "bits": 4}
        elif precision == "fp16":
            passes["fp16"] = {"type": "OnnxFloatToFloat16", "keep_io_types": True}
    return _workflow(section, passes, output_dir, cache_dir, device=device)


QUANTIZERS: dict[tuple[str, str], dict[str, Any]] = {
    ("rtn", "int4"): {"type": "OnnxBlockWiseRtnQuantization", "bits": 4},
    ("rtn", "int8"): {"type": "OnnxBlockWiseRtnQuantization", "bits": 8},
    ("hqq", "int4"): {"type": "OnnxHqqQuantization"},
    ("dynamic", "int8"): {"type": "OnnxDynamicQuantization"},
    ("static", "int8"): {"type": "OnnxStaticQuantization", "data_config": "calibration"},
    ("gptq", "int4"): {"type": "Gptq", "bits": 4, "data_config": "calibration"},
    ("gptq", "int8"): {"type": "Gptq", "bits": 8, "data_config": "calibration"},
    ("awq", "int4"): {"type": "Awq", "w_bit": 4, "data_config": "calibration"},
}
"""(algorithm, precision) -> the pass that does it. GPTQ works on the Hugging Face model and ModelBuilder then
builds the onnxruntime-genai folder from its codes; the others quantize an ONNX model."""
CALIBRATED = ("static", "gptq", "awq")
HF_QUANTIZERS = ("gptq", "awq")
"""Algorithms that quantize the Hugging Face model, which ModelBuilder then builds."""
"""Algorithms that read calibration rows (--data)."""


def quantize(
    model: str, *, output_dir: str | Path, algorithm: Algorithm = "rtn", precision: Literal["int4", "int8"] = "int4",
    pass_options: dict[str, Any] | None = None, conversion_options: dict[str, Any] | None = None,
    data: str | None = None, data_options: dict[str, Any] | None = None, adapter_path: str | None = None,
    task: str | None = None, cache_dir: str | Path | None = None, load_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantize an ONNX model, or a Hugging Face model converted to ONNX first (OnnxConversion); with ``gptq``,
    quantize a Hugging Face causal LM with GPTQ and build an onnxruntime-genai folder from it (ModelBuilder).

    ``static`` and ``gptq`` calibrate on ``data`` (a local file, formatted by ``data_options['text_template']``).
    Raises UserError for a pair that does not exist, a calibrated algorithm without data, or gptq on ONNX.
    """
    quantizer = QUANTIZERS.get((algorithm, precision))
    if quantizer is None:
        have = ", ".join(f"{a} {p}" for a, p in QUANTIZERS)
        raise UserError(f"--algorithm {algorithm} --precision {precision} is not supported; choose one of: {have}")
    if algorithm in CALIBRATED and not data:
        raise UserError(f"--algorithm {algorithm} calibrates on data: give --data FILE (and --text-template)")
    if data and algorithm not in CALIBRATED:
        raise UserError(f"--data is used only by --algorithm static, gptq or awq; {algorithm} needs no calibration data")
    section = input_model(model, adapter_path=adapter_path, task=task, load_kwargs=load_kwargs)
    passes: dict[str, Any] = {}
    calibration = [data_config("calibration", data, data_options=data_options)] if data else None
    if algorithm in HF_QUANTIZERS:
        if section.get("type") == "OnnxModel":
            raise UserError(f"-m {model} is an ONNX model; --algorithm {algorithm} quantizes the Hugging Face model "
                            "(give that), or use rtn/hqq on ONNX")
        if conversion_options:
            raise UserError(f"--algorithm {algorithm} builds with ModelBuilder, not OnnxConversion: drop "
                            f"{', '.join(conversion_options)}")
        passes["quantization"] = {**quantizer, **(pass_options or {})}
        passes["builder"] = {"type": "ModelBuilder", "precision": precision}
        return _workflow(section, passes, output_dir, cache_dir, data_configs=calibration)
    if section.get("type") != "OnnxModel":
        passes["conversion"] = {"type": "OnnxConversion", **(conversion_options or {})}
    elif conversion_options:
        raise UserError(f"-m {model} is already ONNX; conversion options ({', '.join(conversion_options)}) do not apply")
    passes["quantization"] = {**quantizer, **(pass_options or {})}
    return _workflow(section, passes, output_dir, cache_dir, data_configs=calibration)


def capture_onnx_graph(
    model: str, *, output_dir: str | Path, use_model_builder: bool = False,
    pass_options: dict[str, Any] | None = None, adapter_path: str | None = None, task: str | None = None,
    device: Device = "cpu", cache_dir: str | Path | None = None, load_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ONNX: OnnxConversion (torch exporter), or with ``use_model_builder``
    the onnxruntime-genai ModelBuilder (causal LMs; ``pass_options['precision']``, default fp32)."""
    section = input_model(model, adapter_path=adapter_path, task=task, load_kwargs=load_kwargs)
    if section.get("type") == "OnnxModel":
        raise UserError(f"-m {model} is already an ONNX model; give the Hugging Face model to capture")
    passes: dict[str, Any] = {}
    if use_model_builder:
        if section["task"] != CAUSAL_LM:
            raise UserError(f"-m {model}: --use-model-builder builds causal LMs only and this model's task is "
                            f"{section['task']}; drop --use-model-builder to export it with OnnxConversion")
        passes["builder"] = {"type": "ModelBuilder", **(pass_options or {})}
    else:
        passes["conversion"] = {"type": "OnnxConversion", **(pass_options or {})}
    return _workflow(section, passes, output_dir, cache_dir, device=device)


__all__ = ["capture_onnx_graph", "data_config", "default_cache_dir", "finetune", "is_onnx", "optimize", "quantize"]
