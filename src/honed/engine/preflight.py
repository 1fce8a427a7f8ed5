"""Everything knowable about a workflow before its first pass runs, checked at once.

``run_workflow`` calls ``preflight`` before it opens the cache, and so does a dry run: a missing
optional dependency, a pass order that hands a pass a model kind it cannot take, a model path that
is a file but not a model, ``load_kwargs`` that ``from_pretrained`` would choke on, and local data
that is missing, empty or lacks a column the template names all fail here, in one go, naming their
key paths, instead of an hour into a run.

It stays cheap (the dry run calls it): it reads the first row or header of one local data file,
a model's ``config.json``, and never downloads, tokenizes or loads a model.  Hub datasets, hub
models and URLs are checked when they are fetched.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from honed.config.load import Workflow
from honed.config.schema import FROM_PRETRAINED_KEYS
from honed.data.components import reads_files
from honed.data.config import DataConfig, data_config_refs, use_problem
from honed.data.formatting import required_columns
from honed.data.sources import LOADERS, data_files, is_hub, loader_name
from honed.errors import ConfigError, ConfigProblem, DataError
from honed.models.resolve import KIND_BY_TYPE, PKG_SCHEME
from honed.systems.python_env import PythonEnvironmentConfig
from honed.util.paths import is_url, resolve_local
from honed.util.runtime_flavour import FLAVOURS, missing_message

log = logging.getLogger("honed")

MAX_SCAN = 20_000
"""Most entries the preflight looks at under a data folder; a bigger tree is not a data folder."""
MAX_JSON_ARRAY_BYTES = 16 << 20
"""A .json file holding one array is parsed whole to see its first row only up to this size."""
MODEL_SUFFIXES = {"HfModel": (".gguf",), "OnnxModel": (".onnx",), "GenAIModel": ()}
"""File suffixes a model_path may end in, by input model type (folders are always possible)."""


def preflight(wf: Workflow, out_dir: Path, cache_root: Path) -> None:
    """Raise one ConfigError listing every problem found before any pass runs (none: return).

    ``out_dir`` and ``cache_root`` are the resolved folders of the run (the output folder is checked
    where it is written).
    """
    problems: list[ConfigProblem] = []
    problems += _requirements(wf)
    problems += _model_chain(wf)
    problems += _input_model(wf)
    problems += _data(wf)
    problems += _lm_evaluator(wf)
    problems += _managed_envs(wf)
    problems += _user_functions(wf)
    if problems:
        raise ConfigError(problems, str(wf.source) if wf.source else "")


def _managed_envs(wf: Workflow) -> list[ConfigProblem]:
    """A managed PythonEnvironment whose requirements file is missing (it is read for the cache key)."""
    out = []
    for name, cfg in wf.config.systems.items():
        if not isinstance(cfg, PythonEnvironmentConfig):
            continue
        req = cfg.requirements_file
        found = resolve_local(req, wf.config_dir) if cfg.managed_env and req else None
        if req and cfg.managed_env and (found is None or not found.is_file()):
            out.append(ConfigProblem(f"systems.{name}.requirements_file", f"file not found: '{req}'",
                                     "give the pip requirements file (relative: the working directory or "
                                     "beside the config)"))
    return out


def _lm_evaluator(wf: Workflow) -> list[ConfigProblem]:
    """An LMEvaluator without lm-eval installed, or whose task YAMLs name missing local data."""
    from honed.evaluate.lmeval import preflight_problems

    ev = wf.config.evaluators.get(wf.engine.evaluator) if wf.engine.evaluator else None
    return preflight_problems(f"evaluators.{wf.engine.evaluator}", ev) if ev else []


# -- passes -------------------------------------------------------------------------------------------

def _requirements(wf: Workflow) -> list[ConfigProblem]:
    out = []
    for step in wf.steps:
        missing = step.pass_cls.missing_requirements()
        runtimes = [m for m in missing if m in FLAVOURS]  # one build per host: the extra that fits it, by name
        others = [m for m in missing if m not in FLAVOURS]
        if runtimes:
            out.append(ConfigProblem(f"passes.{step.name}", f"{step.pass_cls.name} needs {', '.join(runtimes)}",
                                     missing_message(runtimes[0]).split(": ", 1)[1]))
        if others:
            out.append(ConfigProblem(f"passes.{step.name}", f"{step.pass_cls.name} needs {', '.join(others)}",
                                     f"install it with `pip install {' '.join(others)}`"))
    return out


def _input_kind(wf: Workflow) -> str:
    im = wf.input_model
    return "peft" if im.adapter_path else KIND_BY_TYPE[im.type]


def _model_chain(wf: Workflow) -> list[ConfigProblem]:
    """A pass that cannot take what the pass before it outputs (from each pass's accepts/produces)."""
    out = []
    kinds = {_input_kind(wf)}
    source = f"the input model ({wf.input_model.type})"
    for step in wf.steps:
        cls = step.pass_cls
        accepted = cls.accepted_kinds(step.config)
        if kinds and not kinds & set(accepted):
            got = "/".join(sorted(kinds))
            out.append(ConfigProblem(
                f"passes.{step.name}",
                f"{cls.name} takes {'/'.join(accepted)} models but receives the {got} model of {source}",
                "reorder or remove passes",
            ))
        kinds = set(cls.produces)  # empty: not declared, later kinds unknown
        source = f"passes.{step.name} ({cls.name})"
    return out


# -- input model --------------------------------------------------------------------------------------

def _input_model(wf: Workflow) -> list[ConfigProblem]:
    im = wf.input_model
    out = []
    local = None if im.model_path.startswith(PKG_SCHEME) else resolve_local(im.model_path, wf.config_dir)
    if local is not None and _is_root(local):
        out.append(ConfigProblem("input_model.model_path", f"'{im.model_path}' is the filesystem root",
                                 "point it at a model folder or file"))
        local = None
    if local is not None and local.is_file():
        allowed = MODEL_SUFFIXES[im.type]
        if local.suffix.lower() not in allowed:
            want = " or ".join(allowed) + " file or a " if allowed else ""
            out.append(ConfigProblem("input_model.model_path", f"{local} is a file but not a model",
                                     f"point it at a {want}model folder"))
        elif local.suffix.lower() == ".gguf" and _head(local, 4) != b"GGUF":
            out.append(ConfigProblem("input_model.model_path", f"{local} is not a GGUF file (no GGUF header)",
                                     "give a .gguf model file or a model folder"))
    if im.adapter_path and not im.adapter_path.startswith(PKG_SCHEME):
        adapter = resolve_local(im.adapter_path, wf.config_dir)
        if adapter is not None and (_is_root(adapter) or not (adapter / "adapter_config.json").is_file()):
            out.append(ConfigProblem("input_model.adapter_path", f"{adapter} has no adapter_config.json",
                                     "give the folder a PEFT adapter was saved to"))
    out += _load_kwargs(wf, local)
    return out


def _is_root(path: Path) -> bool:
    """A filesystem root: as a model or data folder, hashing it would read every file on the machine."""
    return path.is_dir() and path.resolve() == Path(path.resolve().anchor)


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _load_kwargs(wf: Workflow, local: Path | None) -> list[ConfigProblem]:
    """load_kwargs keys from_pretrained would pass on to the model's constructor (TypeError there)."""
    unknown = sorted(k for k in wf.input_model.load_kwargs if k not in FROM_PRETRAINED_KEYS)
    if not unknown or wf.input_model.type != "HfModel":
        return []
    config_json = local / "config.json" if local is not None and local.is_dir() else None
    if config_json is None or not config_json.is_file():
        log.warning("input_model.load_kwargs: %s %s not from_pretrained arguments; honed passes them on, and "
                    "transformers fails if the model's config has no such attribute", ", ".join(unknown),
                    "is" if len(unknown) == 1 else "are")
        return []
    try:
        config = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []  # not a readable model: loading reports it
    if not isinstance(config, dict):
        return []
    attributes = _config_attributes(config)
    return [ConfigProblem(f"input_model.load_kwargs.{k}",
                          "neither a from_pretrained argument nor an attribute of the model's config.json "
                          "(transformers would fail loading the model)",
                          "remove it, or fix its spelling") for k in unknown if k not in attributes]


def _config_attributes(config: dict[str, Any]) -> set[str]:
    """Names ``from_pretrained`` accepts as config overrides for a model with this config.json."""
    import transformers

    names = set(config)
    classes: list[type] = [transformers.PretrainedConfig]
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in transformers.CONFIG_MAPPING:
        classes.append(transformers.CONFIG_MAPPING[model_type])
    for cls in classes:
        names |= set(dir(cls)) | set(getattr(cls, "attribute_map", {}))
        with contextlib.suppress(TypeError, ValueError):  # a config class that needs arguments: its file's keys do
            names |= set(cls().to_dict())
    return names


# -- data -----------------------------------------------------------------------------------------------

def _used_data(wf: Workflow) -> dict[str, str]:
    """Data config name -> the first key path that uses it (passes, then the engine's evaluator)."""
    used: dict[str, str] = {}
    for step in wf.steps:
        for key, name in data_config_refs(step.config.model_dump(), f"passes.{step.name}"):
            used.setdefault(name, key)
    ev = wf.config.evaluators.get(wf.engine.evaluator) if wf.engine.evaluator else None
    for i, metric in enumerate(ev.metrics if ev else []):
        if metric.data_config:
            used.setdefault(metric.data_config, f"evaluators.{wf.engine.evaluator}.metrics[{i}].data_config")
    return used


def _data(wf: Workflow) -> list[ConfigProblem]:
    used = _used_data(wf)
    out = []
    for i, cfg in enumerate(wf.config.data_configs):
        if cfg.name in used:
            out += _data_config(f"data_configs[{i}]", cfg)
    return out + _data_uses(wf)


def _data_uses(wf: Workflow) -> list[ConfigProblem]:
    """Data a use cannot take (honed.data.config.use_problem): dummy data for a pass or an accuracy metric, a
    user dataloader where honed batches, a user post-processing function for accuracy."""
    by_name = {d.name: d for d in wf.config.data_configs}
    uses = [(key, name, getattr(step.pass_cls, "data_use", "pass")) for step in wf.steps  # timing passes: latency
            for key, name in data_config_refs(step.config.model_dump(), f"passes.{step.name}")]
    ev = wf.config.evaluators.get(wf.engine.evaluator) if wf.engine.evaluator else None
    uses += [(f"evaluators.{wf.engine.evaluator}.metrics[{i}].data_config", m.data_config, m.type)
             for i, m in enumerate(ev.metrics if ev else []) if m.data_config]
    out = []
    for key, name, use in uses:
        problem = use_problem(by_name[name], use) if name in by_name else None
        if problem:
            out.append(ConfigProblem(key, problem))
    return out


def _data_config(key: str, cfg: DataConfig) -> list[ConfigProblem]:
    if is_hub(cfg) or not reads_files(cfg):
        return []  # hub data is checked when fetched; dummy data and a user_script's loader read no file here
    entries = data_files(cfg)
    if not entries:
        return [ConfigProblem(f"{key}.load_dataset_config", f"data config '{cfg.name}' names no data",
                              "set data_files (a file, folder, glob or URL) or data_name (a hub dataset id)")]
    files_key = f"{key}.load_dataset_config.data_files"
    files: list[Path] = []
    for entry in entries:
        if is_url(entry):
            return []  # remote rows are checked when fetched
        found, problem = _local_files(entry)
        if problem:
            return [ConfigProblem(files_key, problem)]
        files += found
    for f in files:
        if f.stat().st_size == 0:
            return [ConfigProblem(files_key, f"{f} is empty", "put rows in it or remove it from data_files")]
    try:
        builder = loader_name(cfg, [str(f) for f in files])
    except DataError as e:
        return [ConfigProblem(files_key, str(e))]
    first = files[0]
    columns, problem = _peek_columns(first, builder)
    if problem:
        return [ConfigProblem(files_key, problem)]
    if columns is None:
        return []  # a format the preflight does not peek into (parquet without pyarrow, arrow)
    missing = [c for c in cfg.load_dataset_config.col_filters or {} if c not in columns]
    if missing:
        return [ConfigProblem(f"{key}.load_dataset_config.col_filters.{missing[0]}", f"no column '{missing[0]}' in "
                              f"{first}", f"its columns are {columns}; fix col_filters")]
    if cfg.user_component("pre_process_data"):
        return []  # the user's function makes the columns the formatting reads
    return _columns(key, cfg, first, columns)


def _local_files(entry: str) -> tuple[list[Path], str | None]:
    """Data files a local path, folder or glob names (bounded), or why there are none."""
    p = Path(entry.removeprefix("file://"))
    if p.is_dir():
        if _is_root(p):
            return [], f"'{entry}' is the filesystem root; point data_files at a data file or folder"
        found: list[Path] = []
        seen = 0
        for root, dirs, names in os.walk(p):
            dirs.sort()
            seen += len(dirs) + len(names)
            if seen > MAX_SCAN:
                return [], (f"folder {p} holds more than {MAX_SCAN} files and folders; point data_files at "
                            "the data files, or a glob such as 'folder/*.jsonl'")
            found += [Path(root) / n for n in names if Path(n).suffix.lower() in LOADERS]
        if not found:
            return [], (f"folder {p} has no data files ({', '.join(sorted(LOADERS))}); put files in it or point "
                        "data_files at a file")
        return sorted(found), None
    if p.is_file():
        return [p], None
    import glob

    found = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
    if not found:
        return [], f"no file matches '{entry}'; fix the path or glob"
    return found, None


def _peek_columns(path: Path, builder: str) -> tuple[list[str] | None, str | None]:
    """(column names of the first row, None), (None, why the file has no usable rows), or (None, None)."""
    if builder == "text":
        return ["text"], None
    if builder == "json":
        return _json_columns(path)
    if builder == "csv":
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            rows = csv.reader(fh, delimiter=delimiter)
            header = next(rows, None)
            if not header:
                return None, f"{path} is empty; put a header line and rows in it"
            if next(rows, None) is None:
                return None, f"{path} holds a header but no rows; put rows in it"
        return header, None
    if builder == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError):
            return None, None  # loading names what is wrong with the file
        if meta.num_rows == 0:
            return None, f"{path} holds no rows; put rows in it"
        return list(meta.schema.names), None
    return None, None


def _json_columns(path: Path) -> tuple[list[str] | None, str | None]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()
        if head.startswith("["):
            if path.stat().st_size > MAX_JSON_ARRAY_BYTES:
                return None, None
            fh.seek(0)
            try:
                rows = json.loads(fh.read())
            except json.JSONDecodeError as e:
                return None, f"{path}, line {e.lineno}: malformed JSON ({e.msg}); fix that line"
            if not rows:
                return None, f"{path} holds an empty list; put rows in it"
            if not isinstance(rows[0], dict):
                return None, f"{path}: rows must be JSON objects, the first is {type(rows[0]).__name__}"
            return list(rows[0]), None
        fh.seek(0)
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return None, (f"{path}, line {number}: malformed JSON ({e.msg}, column {e.colno}); fix that line "
                              "(each line must be one JSON object)")
            if not isinstance(row, dict):
                return None, f"{path}, line {number}: expected a JSON object, got {type(row).__name__}"
            return list(row), None
    return None, f"{path} holds no rows (only blank lines); put rows in it"


def _columns(key: str, cfg: DataConfig, path: Path, columns: list[str]) -> list[ConfigProblem]:
    """The columns the formatting names against the first row's (honed.data.formatting.check_columns does the
    same for every row when the pass loads the data)."""
    pp = cfg.pre_process_data_config
    try:
        needed = required_columns(cfg)
    except DataError as e:
        return [ConfigProblem(f"{key}.pre_process_data_config.text_template", str(e))]
    # Data with no formatting at all is left to the pass: not every pass turns rows into text.
    missing = [c for c in needed if c not in columns]
    if not missing:
        return []
    field = ("chat_messages" if pp.chat_template and pp.chat_messages else "messages_column" if pp.chat_template
             else "text_template" if pp.text_template else "input_cols" if pp.input_cols else "text_cols")
    return [ConfigProblem(f"{key}.pre_process_data_config.{field}",
                          f"column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not in {path}",
                          f"its columns are {columns}; fix {field} or the data")]


# -- user scripts ---------------------------------------------------------------------------------------

def script_names(path: Path) -> set[str] | None:
    """Names a Python file defines at its top level (functions, classes, assignments, imports) plus the names
    it registers with Olive's ``@Registry.register_*("name")``: read with ``ast``, never run.  None when it
    cannot be known (a star import, a syntax error: the run reports those)."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call):
                    names |= {a.value for a in [*dec.args, *(k.value for k in dec.keywords)]
                              if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                return None
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _user_functions(wf: Workflow) -> list[ConfigProblem]:
    """A function a workflow names in its user_script (data components, dataloader_func, a custom metric's
    evaluate_func) that the script does not define: found by reading the script, before any pass runs."""
    from honed.data.config import COMPONENT_KEYS

    wanted: list[tuple[str, Path, str]] = []  # (key path, script, function)
    for i, d in enumerate(wf.config.data_configs):
        if not d.user_script:
            continue
        script = Path(d.user_script)
        for kind, section in COMPONENT_KEYS.items():
            name = d.user_component(kind)
            if name:
                key = "dataloader_func" if kind == "dataloader" and d.dataloader_func else f"{section}.type"
                wanted.append((f"data_configs[{i}].{key}", script, name))
        pp = d.pre_process_data_config
        if pp.formatting_func and pp.user_script:
            wanted.append((f"data_configs[{i}].pre_process_data_config.formatting_func", Path(pp.user_script),
                           pp.formatting_func))
    for ev_name, ev in wf.config.evaluators.items():
        for j, m in enumerate(getattr(ev, "metrics", None) or []):
            uc = m.user_config
            if m.type == "custom" and uc.user_script and uc.evaluate_func:
                wanted.append((f"evaluators.{ev_name}.metrics[{j}].user_config.evaluate_func",
                               Path(uc.user_script), uc.evaluate_func))
    out = []
    defined: dict[Path, set[str] | None] = {}  # each script read once
    for key, script, func in wanted:
        if script not in defined:
            defined[script] = script_names(script) if script.is_file() else None
        names = defined[script]
        if names is not None and func.lower() not in {n.lower() for n in names}:  # Olive's registry ignores case
            known = sorted(n for n in names if not n.startswith("_"))
            out.append(ConfigProblem(key, f"{script.name} does not define or register '{func}'",
                                     "define it there or fix the name" + (f" (it has: {', '.join(known[:12])})"
                                                                          if known else "")))
    return out
