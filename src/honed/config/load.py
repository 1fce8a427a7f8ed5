"""Read a workflow file, translate Olive's generations, validate, and collect every problem.

The result is a ``Workflow``: the validated honed config plus each pass's validated config
object.  All problems found are reported together, each naming its key path.
"""

from __future__ import annotations

import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from honed.config.olive import translate
from honed.config.schema import WorkflowConfig
from honed.data.config import DataConfig, data_config_refs
from honed.errors import ConfigError, ConfigProblem, UserError
from honed.passes.base import Pass, PassConfig, all_passes, get_pass

log = logging.getLogger("honed")


@dataclass
class PassStep:
    """One validated pass of a workflow."""

    name: str
    pass_cls: type[Pass]
    config: PassConfig


@dataclass
class Workflow:
    """A validated workflow, ready for the engine."""

    config: WorkflowConfig
    steps: list[PassStep]
    source: Path | None = None
    generation: str = "honed"
    warnings: list[str] = field(default_factory=list)
    search_space: Any = None
    """A ``honed.search.space.SearchSpace`` when search_strategy is set and some parameter is searched;
    ``steps`` then hold the default (first) choice of every dimension."""

    @property
    def config_dir(self) -> Path | None:
        return self.source.parent if self.source else None

    @property
    def data_configs(self) -> dict[str, DataConfig]:
        return {d.name: d for d in self.config.data_configs}

    @property
    def input_model(self):
        return self.config.input_model

    @property
    def engine(self):
        return self.config.engine

    @property
    def passes(self) -> dict[str, PassStep]:
        return {s.name: s for s in self.steps}


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse JSON or YAML into a dict; syntax errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found; check the --config path") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"{path}: invalid YAML at {where}{problem}; fix the syntax") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a workflow must be a mapping of keys (input_model, passes, ...), got {type(raw).__name__}")
    return raw


# -- pydantic errors -> problems ------------------------------------------------------------------

def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _is_container(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_container(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, dict, tuple)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that ``loc`` (a pydantic error location, minus the last part) points into."""
    current: type[BaseModel] | None = model
    skip = False
    for part in loc:
        if skip:
            skip = False
            continue
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            continue
        ann = current.model_fields[part].annotation
        models = _models_in(ann)
        skip = _is_container(ann)
        current = models[0] if models else None
    return list(current.model_fields) if current else []


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union", "lax-or-strict", "json-or-python")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Union members show up in the location as their type names ("int", "list[str]"); drop them.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool", "none"})))


def problems_from(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[ConfigProblem]:
    """One ConfigProblem per pydantic error, with key path and a fix (a 'did you mean' for typos)."""
    seen: set[str] = set()
    out = []
    for e in err.errors():
        loc = _clean_loc(tuple(e["loc"]))
        key = ".".join(p for p in (prefix, _key(loc)) if p)
        kind = e["type"]
        if kind == "extra_forbidden":
            name = str(loc[-1])
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            fix = f"did you mean '{close[0]}'?" if close else ("known keys: " + ", ".join(known) if known else "remove it")
            problem = ConfigProblem(key, "unknown key", fix)
        elif kind == "missing":
            problem = ConfigProblem(key, "required key is missing", "add it")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
            problem = ConfigProblem(key, msg + shown)
        if str(problem) not in seen:
            seen.add(str(problem))
            out.append(problem)
    # A union of types (str | list) reports once per member; keep the first per key.
    by_key: dict[str, ConfigProblem] = {}
    for p in out:
        by_key.setdefault(p.key, p)
    return list(by_key.values())


# -- the whole file ---------------------------------------------------------------------------------

def validate(raw: dict[str, Any], source: Path | None = None) -> Workflow:
    """Translate and validate a workflow dict; raise one ConfigError holding every problem."""
    src = str(source) if source else ""
    translation = translate(raw, src)
    data = translation.config
    context = {"config_dir": str(source.parent) if source else None}
    problems: list[ConfigProblem] = []

    raw_passes = data.pop("passes", None)
    try:
        cfg = WorkflowConfig.model_validate({**data, "passes": {}}, context=context)
    except ValidationError as e:
        problems += problems_from(e, WorkflowConfig)
        cfg = None

    steps: list[PassStep] = []
    names = all_passes()
    if raw_passes is not None and not isinstance(raw_passes, dict):
        problems.append(ConfigProblem("passes", "must be a mapping of pass name to pass config"))
        raw_passes = {}
    space = None
    if data.get("search_strategy") is not None and raw_passes:
        from honed.search.space import extract_space

        raw_passes, space, search_problems = extract_space(raw_passes)
        problems += search_problems
    for name, entry in (raw_passes or {}).items():
        key = f"passes.{name}"
        if not isinstance(entry, dict):
            hint = "; a list of alternatives needs search_strategy set" if isinstance(entry, list) else ""
            problems.append(ConfigProblem(key, "must be a mapping with a 'type'" + hint))
            continue
        kind = entry.get("type")
        if not isinstance(kind, str):
            problems.append(ConfigProblem(f"{key}.type", "required key is missing", "name a pass type (see `honed passes`)"))
            continue
        cls = get_pass(kind)
        if cls is None:
            close = difflib.get_close_matches(kind, list(names), n=1, cutoff=0.5)
            fix = f"did you mean '{close[0]}'?" if close else "run `honed passes` to list them"
            problems.append(ConfigProblem(f"{key}.type", f"unknown pass type '{kind}'", fix))
            continue
        params = {k: v for k, v in entry.items() if k != "type"}
        try:
            pcfg = cls.config_class.model_validate(params, context=context)
        except ValidationError as e:
            problems += problems_from(e, cls.config_class, key)
            continue
        steps.append(PassStep(name, cls, pcfg))

    if cfg is not None:
        data_names = {d.name for d in cfg.data_configs}
        for step in steps:
            for key, ref in data_config_refs(step.config.model_dump(), f"passes.{step.name}"):
                if ref not in data_names:
                    close = difflib.get_close_matches(ref, list(data_names), n=1)
                    fix = f"did you mean '{close[0]}'?" if close else "add it under data_configs"
                    problems.append(ConfigProblem(key, f"no data config named '{ref}'", fix))
        for k in ("host", "target"):
            ref = getattr(cfg.engine, k)
            if ref is not None and ref not in cfg.systems:
                problems.append(ConfigProblem(f"engine.{k}", f"no system named '{ref}'",
                                              f"define it under systems (have: {', '.join(cfg.systems) or 'none'})"))
        if cfg.engine.evaluator is not None and cfg.engine.evaluator not in cfg.evaluators:
            problems.append(ConfigProblem("engine.evaluator", f"no evaluator named '{cfg.engine.evaluator}'",
                                          "define it under evaluators"))
        if isinstance(cfg.engine.evaluate_passes, list):
            known = [s.name for s in steps] if raw_passes is None else list(raw_passes)
            for name in cfg.engine.evaluate_passes:
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    fix = f"did you mean '{close[0]}'?" if close else f"passes are: {', '.join(known)}"
                    problems.append(ConfigProblem("engine.evaluate_passes", f"no pass named '{name}'", fix))
        for ev_name, ev in cfg.evaluators.items():
            for i, metric in enumerate(ev.metrics):
                if metric.data_config is not None and metric.data_config not in data_names:
                    problems.append(ConfigProblem(f"evaluators.{ev_name}.metrics[{i}].data_config",
                                                  f"no data config named '{metric.data_config}'",
                                                  "add it under data_configs"))
        if cfg.search_strategy is not None and space is not None and space.dimensions and cfg.engine.evaluator is None:
            problems.append(ConfigProblem("engine.evaluator", "a search needs an evaluator to rank its trials",
                                          "define one under evaluators and name it here"))
    if problems or cfg is None:
        raise ConfigError(problems, src)
    cfg.passes = {}
    search = space if space is not None and space.dimensions else None
    return Workflow(cfg, steps, source, translation.generation, translation.warnings, search)


def load_workflow(path: str | Path) -> Workflow:
    """Read, translate and validate a workflow file (JSON or YAML)."""
    path = Path(path).resolve()
    wf = validate(read_config_file(path), path)
    for w in wf.warnings:
        log.warning("%s: %s", path.name, w)
    return wf


def honed_dict(wf: Workflow) -> dict[str, Any]:
    """The workflow in honed's own schema with every default filled in (``honed config migrate``)."""
    out = wf.config.model_dump(mode="json", exclude={"passes"}, exclude_none=True)
    out["passes"] = {s.name: {"type": s.pass_cls.name, **s.config.model_dump(mode="json")} for s in wf.steps}
    order = ["input_model", "systems", "data_configs", "evaluators", "passes", "engine", "search_strategy"]
    return {k: out[k] for k in order if k in out}
