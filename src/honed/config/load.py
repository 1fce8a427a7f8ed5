"""Read a workflow file, translate Olive's generations, validate, and collect every problem.

The result is a ``Workflow``: the validated honed config plus each pass's validated config
object.  All problems found are reported together, each naming its key path.
"""

from __future__ import annotations

import codecs
import dataclasses
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
from honed.config.schema import SYSTEM_TYPES, WorkflowConfig
from honed.data.config import DataConfig, data_config_refs
from honed.errors import ConfigError, ConfigProblem, UserError
from honed.passes.base import Pass, PassConfig, all_passes, get_pass
from honed.systems.base import get_system

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
    """A ``honed.config.space.SearchSpace`` when search_strategy is set and some parameter is searched;
    ``steps`` then hold the default (first) choice of every dimension."""
    flows: list[tuple[str, Workflow]] = field(default_factory=list)
    """With ``pass_flows``: one workflow per flow (its passes in flow order), named by its pass names joined
    with '-'; the engine runs each as its own branch into ``output_dir/<name>/``."""
    host_label: str | None = None
    """Where the host system came from when not from the file (``--ray-address``), for messages."""

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


MAX_CONFIG_BYTES = 32 << 20
"""Largest workflow file read (32 MiB); real ones are a few KB."""
MAX_DEPTH = 100
"""Deepest nesting of lists/mappings accepted; real workflows nest fewer than 10 levels."""
MAX_VALUES = 200_000
"""Most values (counting every use of a YAML alias again) a workflow may expand to."""
MAX_ALIASES = 10_000
"""Most YAML alias uses (``*name``) in one file."""

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses alias bombs while composing, before anything expands them.

    Aliases share one node, so a "billion laughs" file composes and constructs fast; what explodes is
    every later walk over it (translating, validating, hashing).  This loader caps alias uses;
    ``read_config_file`` then caps the expanded size of the result.  (PyYAML >= 6 already drops
    repeated merge keys, so ``<<: [*a, *a]`` chains do not grow.)
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_uses = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            if self.alias_uses > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} alias uses (*name); write the values out", mark)
        return super().compose_node(parent, index)


def _bounded(raw: Any) -> str | None:
    """Why ``raw`` is too deep or expands to too many values (aliases counted at every use), or None."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return (f"expands to more than {MAX_VALUES} values (YAML aliases count at every use, and an alias "
                    "inside its own anchor never ends); write the values out instead of nesting aliases")
        if depth > MAX_DEPTH:
            return f"nests lists/mappings more than {MAX_DEPTH} levels deep; a workflow needs fewer than 10"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value if not isinstance(k, str))
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((v, depth + 1) for v in value)
    return None


def _decode(path: Path, data: bytes) -> str:
    """The text of a config file: UTF-8 (a BOM is skipped), or UTF-16/32 when a BOM says so."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8-sig")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    if "\0" in text:
        raise UserError(f"{path}: holds NUL bytes (UTF-16 without a byte order mark?); save the file as UTF-8")
    return text


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse JSON or YAML into a dict; syntax errors name the line.

    Hostile files fail with one line too: over-deep nesting, YAML alias bombs, huge files, NUL bytes.
    """
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{path}: {size >> 20} MiB is too large for a workflow file (limit "
                            f"{MAX_CONFIG_BYTES >> 20} MiB); is --config the right file?")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found; check the --config path") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give the workflow file (JSON or YAML) inside it") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config file ({e.strerror or e}); check the path and its "
                        "permissions") from None
    text = _decode(path, data)
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            raw = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: builds no Python objects
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"{path}: invalid YAML at {where}{problem}; fix the syntax") from None
        except RecursionError:
            raise UserError(f"{path}: nests lists/mappings too deeply to read; a workflow needs fewer than "
                            "10 levels") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; fix the syntax") from None
        except RecursionError:
            raise UserError(f"{path}: nests lists/mappings too deeply to read; a workflow needs fewer than "
                            "10 levels") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a workflow must be a mapping of keys (input_model, passes, ...), got {type(raw).__name__}")
    problem = _bounded(raw)
    if problem:
        raise UserError(f"{path}: {problem}")
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


def _system_tag(loc: tuple[Any, ...]) -> str | None:
    """The system type pydantic puts in an error location under ``systems.<name>`` (the union's tag)."""
    if len(loc) > 2 and loc[0] == "systems" and loc[2] in SYSTEM_TYPES:
        return str(loc[2])
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Union members show up in the location as their type names ("int", "list[str]"); drop them.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool", "none"})))


_MESSAGES = {
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "finite_number": "must be a finite number (not NaN or infinity)",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "list_type": "must be a list",
    "string_type": "must be a string",
}
"""Pydantic error types whose message is reworded for a config author (they never write Python types)."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def problems_from(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[ConfigProblem]:
    """One ConfigProblem per pydantic error, with key path and a fix (a 'did you mean' for typos)."""
    seen: set[str] = set()
    out = []
    for e in err.errors():
        raw_loc = tuple(e["loc"])
        system = _system_tag(raw_loc) if not prefix else None
        loc = _clean_loc(tuple(p for i, p in enumerate(raw_loc) if not (system and i == 2)))
        key = ".".join(p for p in (prefix, _key(loc)) if p)
        kind = e["type"]
        if kind == "system_type":
            given = e.get("input", {}).get("type") if isinstance(e.get("input"), dict) else None
            out.append(ConfigProblem(f"{key}.type", f"unknown system type{f' {given!r}' if given else ''}",
                                     f"use one of {', '.join(SYSTEM_TYPES)} (see `honed systems`)"))
            continue
        if kind == "extra_forbidden":
            name = str(loc[-1])
            system_cls = get_system(system) if system else None
            known = _fields_at(system_cls.config_class, loc[2:-1]) if system_cls else _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            fix = f"did you mean '{close[0]}'?" if close else ("known keys: " + ", ".join(known) if known else "remove it")
            problem = ConfigProblem(key, "unknown key", fix)
        elif kind == "missing":
            problem = ConfigProblem(key, "required key is missing", "add it")
        else:
            msg = _MESSAGES.get(kind) or e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            shown = "" if isinstance(given, dict | list) or given is None else f" (got {_short(given)})"
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
    translated_passes = raw_passes
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
        from honed.config.space import extract_space

        raw_passes, space, search_problems = extract_space(raw_passes)
        problems += search_problems
    reported = {p.key for p in problems}  # a key the search already named is not reported twice
    for name, entry in (raw_passes or {}).items():
        key = f"passes.{name}"
        if not isinstance(entry, dict):
            hint = "; a list of alternatives needs search_strategy set" if isinstance(entry, list) else ""
            problems.append(ConfigProblem(key, "must be a mapping with a 'type'" + hint))
            continue
        kind = entry.get("type")
        if not isinstance(kind, str):
            what = "required key is missing" if kind is None else f"must be a pass type name, got {type(kind).__name__}"
            problems.append(ConfigProblem(f"{key}.type", what, "name a pass type (see `honed passes`)"))
            continue
        cls = get_pass(kind)
        if cls is None:
            close = difflib.get_close_matches(kind, list(names), n=1, cutoff=0.6)
            fix = f"did you mean '{close[0]}'?" if close else "pass types are: " + ", ".join(names)
            problems.append(ConfigProblem(f"{key}.type", f"unknown pass type '{kind}'", fix))
            continue
        params = {k: v for k, v in entry.items() if k != "type"}
        try:
            pcfg = cls.config_class.model_validate(params, context=context)
        except ValidationError as e:
            problems += [p for p in problems_from(e, cls.config_class, key) if p.key not in reported]
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
        for i, flow in enumerate(cfg.pass_flows or []):
            for name in flow:
                if not isinstance(raw_passes, dict) or name not in raw_passes:
                    known = list(raw_passes or {})
                    close = difflib.get_close_matches(name, known, n=1)
                    fix = f"did you mean '{close[0]}'?" if close else f"passes are: {', '.join(known) or 'none'}"
                    problems.append(ConfigProblem(f"pass_flows[{i}]", f"no pass named '{name}'", fix))
            if len(set(flow)) < len(flow):
                problems.append(ConfigProblem(f"pass_flows[{i}]", "names a pass twice",
                                              "define a second pass under another name"))
        if cfg.search_strategy is not None and space is not None and space.dimensions and cfg.engine.evaluator is None:
            problems.append(ConfigProblem("engine.evaluator", "a search needs an evaluator to rank its trials",
                                          "define one under evaluators and name it here"))
    if problems or cfg is None:
        raise ConfigError(problems, src)
    cfg.passes = {}
    search = space if space is not None and space.dimensions else None
    flows = []
    in_flows = {n for flow in cfg.pass_flows or [] for n in flow}
    for name in raw_passes if cfg.pass_flows and isinstance(raw_passes, dict) else []:
        if name not in in_flows:
            translation.warnings.append(f"passes.{name}: ignored (it is in no pass flow, so it does not run)")
    for flow in cfg.pass_flows or []:
        # Each flow is validated as its own workflow: the same file with only the flow's passes, in flow order.
        sub = {**data, "pass_flows": None, "passes": {n: translated_passes[n] for n in flow}}
        flows.append(("-".join(flow), validate(sub, source)))
    return Workflow(cfg, steps, source, translation.generation, translation.warnings, search, flows)


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


def on_ray(wf: Workflow, address: str) -> Workflow:
    """``wf`` with its passes run by a Ray system at ``address`` (``honed run --ray-address``), unedited otherwise:
    a Ray host system keeps its resources and runtime_env (only its address changes); any other host becomes a
    Ray system with the host's accelerators, and the target stays what it was (the host's when unset)."""
    from honed.systems.ray_system import RayConfig

    cfg = wf.config.model_copy(deep=True)
    host = cfg.systems.get(cfg.engine.host) if cfg.engine.host else None
    if isinstance(host, RayConfig):  # the file's Ray system, with only its address replaced
        cfg.systems[cfg.engine.host] = host.model_copy(update={"address": address})
        flows = [(n, on_ray(f, address)) for n, f in wf.flows]
        return dataclasses.replace(wf, config=cfg, flows=flows, host_label="--ray-address")
    name = "ray"
    while name in cfg.systems:
        name += "_"
    cfg.systems[name] = RayConfig(address=address, **({"accelerators": host.accelerators} if host else {}))
    cfg.engine.target = cfg.engine.target or cfg.engine.host
    cfg.engine.host = name
    flows = [(n, on_ray(f, address)) for n, f in wf.flows]
    return dataclasses.replace(wf, config=cfg, flows=flows, host_label="--ray-address")


def with_shared_cache(wf: Workflow, url: str) -> Workflow:
    """``wf`` with ``engine.shared_cache`` set to ``url`` (``honed run --shared-cache``), in every flow too."""
    cfg = wf.config.model_copy(deep=True)
    cfg.engine.shared_cache = url
    flows = [(n, with_shared_cache(f, url)) for n, f in wf.flows]
    return dataclasses.replace(wf, config=cfg, flows=flows)
