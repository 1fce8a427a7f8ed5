"""Olive's ``LMEvaluator``: lm-evaluation-harness tasks scored through honed's backends.

``evaluators.<name>`` with ``type: LMEvaluator`` names lm-eval tasks (``tasks``) and Olive's knobs
(``limit``, ``batch_size``, ``max_length``, ``num_fewshot``, ``device``, ``model_class`` ...); honed adds
``include_path``, folders of task YAML files (lm-eval's ``TaskManager(include_path=...)``), so a task
whose YAML says ``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}`` runs from local files,
offline.  The model is answered by ``lmeval_model.HonedLM`` over the HF, ONNX or genai backend, and
each number lm-eval reports becomes a result ``<task>-<metric>`` (e.g. ``arc_easy-acc``), as Olive
flattens them, beside the evaluator's other metrics in footprints and the report.

lm-eval (``pip install honed[lmeval]``) is imported only when tasks run; ``preflight_problems`` finds a
missing install and missing local task data before any pass runs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from honed.errors import ConfigProblem, UserError
from honed.evaluate.backends import Backend, open_backend
from honed.evaluate.config import EvaluatorConfig
from honed.models.handle import ModelHandle
from honed.util.accelerator import EP_BY_DEVICE, Accelerator
from honed.util.fs import atomic_write_text

log = logging.getLogger("honed")

INSTALL_HINT = "install it with `pip install honed[lmeval]`"
MISSING = f"LMEvaluator needs lm-eval (lm-evaluation-harness), which is not installed; {INSTALL_HINT}"
SIZE_TASK = "size_on_disk"
"""A pseudo task of Olive's LMEvaluator: the model's bytes on disk, reported as size_on_disk-bytes."""
KINDS_OF_CLASS = {"hf": ("hf", "peft"), "ort": ("onnx",), "ortgenai": ("genai",)}
MAX_YAML_FILES = 20_000
"""Most YAML files looked at under an include_path; a bigger tree is not a task folder."""
NOT_METRICS = {"alias", "sample_len", "samples"}
"""Keys of an lm-eval task result that are bookkeeping, not scores."""

Results = dict[str, float]
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def available() -> bool:
    """True when lm-eval is installed (without importing it: that takes seconds)."""
    return importlib.util.find_spec("lm_eval") is not None


# ---------------------------------------------------------------- task files


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML without running it: ``!function`` and other tags become None."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def include_paths(cfg: EvaluatorConfig) -> list[Path]:
    paths = cfg.include_path if isinstance(cfg.include_path, list) else [cfg.include_path] if cfg.include_path else []
    return [Path(p) for p in paths]


def _yaml_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder] if folder.suffix in (".yaml", ".yml") else []
    out: list[Path] = []
    for f in folder.rglob("*"):
        if f.suffix in (".yaml", ".yml") and f.is_file():
            out.append(f)
            if len(out) >= MAX_YAML_FILES:
                break
    return sorted(out)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def task_data_files(cfg: EvaluatorConfig) -> list[tuple[Path, str, Path | None]]:
    """(YAML file, data_files entry, the file it resolves to or None) for every local data file the
    include_path YAMLs name; relative entries resolve against ``dataset_kwargs.data_dir`` or the
    working directory, as ``datasets.load_dataset`` does.  URLs and globs are left to lm-eval."""
    out = []
    for folder in include_paths(cfg):
        for f in _yaml_files(folder):
            try:
                doc = yaml.load(f.read_text(encoding="utf-8"), Loader=_TaskLoader)  # a SafeLoader subclass
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise UserError(f"{f}: not a readable task YAML ({e})") from e
            kwargs = doc.get("dataset_kwargs") if isinstance(doc, dict) else None
            if not isinstance(kwargs, dict) or kwargs.get("data_files") is None:
                continue
            base = Path(kwargs["data_dir"]) if isinstance(kwargs.get("data_dir"), str) else Path.cwd()
            for entry in _strings(kwargs["data_files"]):
                if "://" in entry or any(c in entry for c in "*?["):
                    continue
                p = Path(entry).expanduser()
                p = p if p.is_absolute() else base / p
                out.append((f, entry, p if p.exists() else None))
    return out


def _missing_data(cfg: EvaluatorConfig) -> list[tuple[Path, str]]:
    return [(f, entry) for f, entry, found in task_data_files(cfg) if found is None]


def _missing_message(yaml_file: Path, entry: str) -> tuple[str, str]:
    beside = yaml_file.parent / entry
    hint = f" (there is one beside the YAML: write '{beside.resolve()}')" if beside.exists() else ""
    return (f"{yaml_file}: data_files '{entry}' not found; lm-eval reads relative data_files from the working "
            f"directory {Path.cwd()}{hint}", "give an absolute path or one relative to the working directory")


def preflight_problems(key: str, cfg: EvaluatorConfig) -> list[ConfigProblem]:
    """What is knowable before a run about an LMEvaluator at config key ``key`` (cheap: no lm-eval import)."""
    if not cfg.is_lm:
        return []
    if not available():
        return [ConfigProblem(f"{key}.type", "LMEvaluator needs lm-eval (lm-evaluation-harness), which is not "
                              "installed", INSTALL_HINT)]
    try:
        missing = _missing_data(cfg)
    except UserError as e:
        return [ConfigProblem(f"{key}.include_path", str(e))]
    return [ConfigProblem(f"{key}.include_path", *_missing_message(f, entry)) for f, entry in missing]


def fingerprint(cfg: EvaluatorConfig) -> dict[str, Any]:
    """What an LMEvaluator's results depend on beyond its config: lm-eval's version (its task and metric
    code) and the content of the local data files the task YAMLs name (include_path itself enters the
    evaluation key by content through the config)."""
    from importlib.metadata import PackageNotFoundError, version

    from honed.util.hashing import hash_path

    try:
        lm_version = version("lm_eval")
    except PackageNotFoundError:
        lm_version = None
    files = {str(p): hash_path(p) for _, _, p in task_data_files(cfg) if p is not None}
    return {"lm_eval": lm_version, "data": files}


# ---------------------------------------------------------------- running


def _runtime(handle: ModelHandle, cfg: EvaluatorConfig, target: Accelerator) -> tuple[ModelHandle, Accelerator]:
    """The handle and accelerator the tasks run on: model_class, device and execution_provider over the
    workflow's target and the model's kind."""
    accel = target
    if cfg.device or cfg.execution_provider:
        device = {"cuda": "gpu"}.get(cfg.device or "", cfg.device or target.device)
        ep = cfg.execution_provider or (EP_BY_DEVICE[device] if device != target.device else target.execution_provider)
        accel = Accelerator(device=device, execution_provider=ep)
    mc = cfg.model_class
    if mc is None or handle.kind in KINDS_OF_CLASS[mc]:
        return handle, accel
    onnx = Path(handle.path) / "model.onnx"
    if mc == "ort" and handle.kind == "genai" and onnx.is_file():
        return handle.model_copy(update={"kind": "onnx", "path": str(onnx)}), accel
    _warn_once(f"LMEvaluator model_class '{mc}' does not fit a {handle.kind} model ({handle.path}); it is scored "
               f"with the {handle.kind} runtime")
    return handle, accel


def _not_applied(cfg: EvaluatorConfig) -> None:
    if cfg.provider_options:
        _warn_once("LMEvaluator provider_options are not applied; set provider options in the model's inference "
                   "settings (ORT tuning) instead")
    ignored = sorted(k for k in cfg.model_args if k not in ("batch_size", "max_length"))
    if ignored:
        _warn_once(f"LMEvaluator model_args {', '.join(ignored)} are not applied (honed's runtimes take no lm-eval "
                   "model arguments)")


def _task_manager(cfg: EvaluatorConfig, tasks: list[str]) -> tuple[Any, bool]:
    """lm-eval's TaskManager and whether every task comes from include_path (then lm-eval's own few
    thousand task files are not indexed, which takes seconds, and no task needs the network)."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_paths(cfg)]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local, True
    tm = TaskManager(include_path=paths or None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], tm.all_tasks, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"LMEvaluator: unknown lm-eval task(s) {', '.join(unknown)}; {hint}name a task of lm-eval "
                        "(`lm_eval --tasks list`) or of a YAML under include_path")
    return tm, False


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every request batch at INFO; keep its warnings only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def flatten(results: dict[str, dict[str, Any]]) -> Results:
    """lm-eval's ``results`` ({task: {"acc,none": 0.5, "acc_stderr,none": ..., "alias": ...}}) as
    {"task-acc": 0.5}: standard errors and text dropped; the filter name kept ('task-metric,filter') only
    when a metric has several."""
    out: Results = {}
    for task in sorted(results):
        numbers = {k: v for k, v in results[task].items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k not in NOT_METRICS}
        split = [[*k.split(",", 1), "none"][:2] for k in numbers]
        filters: dict[str, int] = {}
        for metric, _ in split:
            filters[metric] = filters.get(metric, 0) + 1
        for (metric, filt), value in zip(split, numbers.values(), strict=True):
            if metric.endswith("_stderr"):
                continue
            key = f"{task}-{metric}" if filters[metric] == 1 else f"{task}-{metric},{filt}"
            out[key] = float(value)
    return out


def _write_samples(cfg: EvaluatorConfig, samples: dict[str, list[dict[str, Any]]]) -> None:
    folder = Path(cfg.sample_log_dir) if cfg.sample_log_dir else Path.cwd() / "sample_logs"
    folder.mkdir(parents=True, exist_ok=True)
    for task, rows in samples.items():
        lines = [json.dumps({k: rows[i].get(k) for k in ("doc_id", "doc", "target", "arguments", "filtered_resps")}
                            | {m: rows[i].get(m) for m in rows[i] if isinstance(rows[i].get(m), int | float)},
                            default=str, ensure_ascii=False)
                 for i in range(min(cfg.sample_log_num, len(rows)))]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
        atomic_write_text(folder / f"{safe}.jsonl", "\n".join(lines) + "\n")
        log.info("LMEvaluator: %d samples of %s in %s", len(lines), task, folder / f"{safe}.jsonl")


def evaluate_tasks(handle: ModelHandle, cfg: EvaluatorConfig, target: Accelerator,
                   shared: Callable[[], Backend] | None = None) -> Results:
    """Run the LMEvaluator ``cfg`` on ``handle``: {'<task>-<metric>': value}, plus size_on_disk-bytes when
    asked.  ``shared`` returns the evaluation's already opened backend, used when the tasks run on the same
    model and accelerator; otherwise a backend is opened here and closed after."""
    if not cfg.is_lm or not cfg.tasks:
        return {}
    out: Results = {}
    tasks = [t for t in cfg.tasks if t != SIZE_TASK]
    if SIZE_TASK in cfg.tasks:
        files = handle.files() + (handle.base.files() if handle.base else [])
        out[f"{SIZE_TASK}-bytes"] = float(sum(f.stat().st_size for f in files))
    if tasks:
        if not available():
            raise UserError(MISSING)
        missing = _missing_data(cfg)
        if missing:
            message, fix = _missing_message(*missing[0])
            raise UserError(f"{message}; {fix}")
        _not_applied(cfg)
        out.update(_run(handle, cfg, target, tasks, shared))
    absent = [s.name for s in cfg.sub_types if s.name not in out]
    if absent:
        raise UserError(f"LMEvaluator sub_types name results the tasks did not give: {', '.join(absent)}; the results "
                        f"are {', '.join(sorted(out))}")
    return out


def _run(handle: ModelHandle, cfg: EvaluatorConfig, target: Accelerator, tasks: list[str],
         shared: Callable[[], Backend] | None) -> Results:
    import datasets
    from lm_eval import simple_evaluate

    from honed.evaluate.lmeval_model import HonedLM
    from honed.util.offline import hub_reachable, local_only

    tm, local = _task_manager(cfg, tasks)
    run_handle, accel = _runtime(handle, cfg, target)
    own = shared is None or run_handle != handle or accel != target
    backend = open_backend(run_handle, accel) if own else shared()  # type: ignore[misc]
    batch_size = int(cfg.model_args.get("batch_size", cfg.batch_size))
    max_length = cfg.model_args.get("max_length", cfg.max_length)
    optional: dict[str, Any] = {}
    if cfg.apply_chat_template:
        optional.update(apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=cfg.fewshot_as_multiturn)
    if cfg.system_instruction:
        optional["system_instruction"] = cfg.system_instruction
    offline = local or not hub_reachable()
    try:
        lm = HonedLM(backend, batch_size=batch_size, max_length=max_length, max_gen_toks=cfg.max_gen_toks)
        with local_only() if offline else contextlib.nullcontext(), _quiet_lm_eval():
            raw = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                                  bootstrap_iters=cfg.bootstrap_iters, batch_size=batch_size,
                                  log_samples=cfg.sample_log_num > 0, **optional)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        where = "offline: the hub is not reachable" if offline and not local else "from local files"
        raise UserError(f"LMEvaluator tasks {', '.join(tasks)}: their data could not be loaded {where} ({e}); put "
                        "the rows in local files and name them in a task YAML under include_path") from e
    finally:
        if own:
            backend.close()
    if raw is None:
        return {}
    if cfg.sample_log_num > 0 and raw.get("samples"):
        _write_samples(cfg, raw["samples"])
    results = flatten(raw.get("results") or {})
    nan = sorted(k for k, v in results.items() if math.isnan(v))
    if nan:
        log.warning("LMEvaluator: no value for %s (too few rows?)", ", ".join(nan))
    return results
