"""``honed evaluate``: score one model (HF, PEFT adapter, ONNX or genai folder) and print the metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from honed.config.load import problems_from, read_config_file, validate
from honed.data.config import DataConfig
from honed.engine.progress import RunDisplay
from honed.errors import ConfigError, UserError
from honed.evaluate.config import EvaluatorConfig
from honed.evaluate.evaluator import evaluate_model
from honed.evaluate.metrics import all_metrics, unit_of
from honed.models.handle import ModelHandle
from honed.util.accelerator import EP_BY_DEVICE, Accelerator, execution_provider_problem

console = Console(highlight=False)

EPILOG = """examples:
  honed evaluate --model models/ --data rows.jsonl --text-template $'### Text: {phrase}\\n### The tone is:\\n{tone}' \\
      --label-col tone --metrics accuracy,latency --output metrics.json
  honed evaluate --model models/ --config workflow.json      (its engine.evaluator and data_configs)
"""


def metric_sub_types() -> dict[str, tuple[str, ...]]:
    """Metric types --metrics offers (every registered one whose sub types honed names) -> the sub types each
    reports, from the metric registry."""
    return {n: d.cli or d.defaults() for n, d in all_metrics().items() if not d.open_sub_types}


def _with_units(metric_type: str, subs: tuple[str, ...]) -> str:
    """'avg, p50 (ms)': sub types, each run of the same unit followed by it."""
    parts: list[tuple[list[str], str | None]] = []
    for s in subs:
        unit = unit_of(metric_type, s)
        if parts and parts[-1][1] == unit:
            parts[-1][0].append(s)
        else:
            parts.append(([s], unit))
    return ", ".join(", ".join(names) + (f" ({unit})" if unit else "") for names, unit in parts)


def register(sub: argparse._SubParsersAction) -> None:
    offered = metric_sub_types()
    p = sub.add_parser(
        "evaluate", help=f"Measure a model: {', '.join(offered)}.",
        description="Score one model folder with a workflow's evaluator (--config) or with flags for the common "
        "case. The text template decides prompt and label: the prompt is everything before the label field.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "-m", required=True, help="Model folder (HF, PEFT adapter, genai) or .onnx file.")
    p.add_argument("--config", "-c", help="Workflow (or evaluators + data_configs) file to take the evaluator from.")
    p.add_argument("--evaluator", help="Which evaluator of --config (default: engine.evaluator or the only one).")
    p.add_argument("--data", help="Data file (JSONL, CSV, parquet) for accuracy / perplexity.")
    p.add_argument("--text-template", help="Python format string over columns; the label field comes last.")
    p.add_argument("--label-col", help="Column holding the label (default: the template's last field).")
    p.add_argument("--labels", help="Comma-separated candidate labels (default: the label column's values).")
    p.add_argument("--metrics", default="accuracy,latency",
                   help="Comma-separated metric types, each with the sub types it reports: "
                   + "; ".join(f"{n}: {_with_units(n, subs)}" for n, subs in offered.items())
                   + " (default: accuracy,latency).")
    p.add_argument("--max-samples", type=int, help="Score at most this many rows.")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="Where to run the model.")
    p.add_argument("--execution-provider", help="onnxruntime provider (default: the device's).")
    p.add_argument("--output", "-o", help="Write the metrics as JSON here.")
    p.set_defaults(func=_evaluate)


def model_handle(path: str) -> ModelHandle:
    """A handle for a model folder on disk: genai, ONNX, PEFT adapter or HF."""
    from honed.models.onnx_runtime import model_kind

    p = Path(path).resolve()
    kind = model_kind(p)
    if kind == "hf" and (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not Path(base).exists():
            raise UserError(f"{p}: adapter's base model '{base}' is not a local folder; merge the adapter first")
        return ModelHandle(kind="peft", path=str(p), base=ModelHandle(kind="hf", path=str(base)))
    return ModelHandle(kind=kind, path=str(p))  # type: ignore[arg-type]


def _from_config(args: argparse.Namespace) -> tuple[EvaluatorConfig, dict[str, DataConfig]]:
    path = Path(args.config).resolve()
    raw = read_config_file(path)
    raw.setdefault("input_model", {"model_path": str(Path(args.model).resolve())})
    wf = validate(raw, path)
    evaluators = wf.config.evaluators
    name = args.evaluator or wf.engine.evaluator or (next(iter(evaluators)) if len(evaluators) == 1 else None)
    if name is None or name not in evaluators:
        have = ", ".join(evaluators) or "none"
        raise UserError(f"{path}: say which evaluator with --evaluator (have: {have})")
    return evaluators[name], wf.data_configs


def _from_flags(args: argparse.Namespace) -> tuple[EvaluatorConfig, dict[str, DataConfig]]:
    offered = metric_sub_types()
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in offered]
    if unknown:
        raise UserError(f"--metrics: unknown metric(s) {', '.join(unknown)}; use {', '.join(offered)}")
    data_configs = {}
    if args.data:
        pre: dict[str, Any] = {}
        if args.text_template:
            pre["text_template"] = args.text_template
        try:
            dc = DataConfig.model_validate({"name": "data", "load_dataset_config": {"data_files": args.data},
                                            "pre_process_data_config": pre})
        except ValidationError as e:
            raise ConfigError(problems_from(e, DataConfig, "--data"), "") from e
        data_configs["data"] = dc
    elif any(all_metrics()[m].needs_data for m in names):
        scored = [n for n, d in all_metrics().items() if d.needs_data and n in offered]
        raise UserError(f"--data is required for {' and '.join(scored)}; give a JSONL/CSV file")
    user: dict[str, Any] = {}
    if args.label_col:
        user["label_col"] = args.label_col
    if args.labels:
        user["labels"] = [x.strip() for x in args.labels.split(",")]
    if args.max_samples:
        user["max_samples"] = args.max_samples
    metrics = []
    for m in names:
        uc = dict(user) if m == "accuracy" else {k: v for k, v in user.items() if k == "max_samples"}
        metrics.append({"name": m, "type": m, "sub_types": [{"name": s} for s in offered[m]],
                        "user_config": uc, "data_config": "data" if args.data else None})
    try:
        return EvaluatorConfig.model_validate({"metrics": metrics}), data_configs
    except ValidationError as e:
        raise ConfigError(problems_from(e, EvaluatorConfig, "--metrics"), "") from e


def result_units(cfg: EvaluatorConfig) -> dict[str, str]:
    """'<metric>-<sub type>' -> its unit, for every configured sub type the registry gives a unit."""
    units = {f"{m.name}-{s.name}": unit_of(m.type, s.name) for m in cfg.metrics for s in m.sub_types}
    return {k: u for k, u in units.items() if u}


def _evaluate(args: argparse.Namespace) -> int:
    cfg, data_configs = _from_config(args) if args.config else _from_flags(args)
    handle = model_handle(args.model)
    ep = args.execution_provider or EP_BY_DEVICE[args.device]
    problem = execution_provider_problem(ep)
    if problem:
        raise UserError(f"--execution-provider: {problem}")
    target = Accelerator(device=args.device, execution_provider=ep)
    results = evaluate_model(handle, cfg, data_configs, target, progress=RunDisplay().bar)
    units = result_units(cfg)
    table = Table(title=f"honed evaluate {handle.path} ({handle.kind})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for k, v in results.items():
        table.add_row(k, f"{v:.4g}", units.get(k, ""))
    console.print(table)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": handle.path, "kind": handle.kind, "metrics": results,
                                   "units": {k: units[k] for k in results if k in units}}, indent=2))
        console.print(f"metrics: {out}")
    return 0
