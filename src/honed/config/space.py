"""Search spaces read from a workflow's passes (used when ``search_strategy`` is set).

A pass parameter becomes a search dimension when its value is a list the parameter itself
does not accept (``precision: [int4, int8]``; ``target_modules: [[q_proj], [q_proj, v_proj]]``)
or the string ``SEARCHABLE_VALUES`` (the pass's declared ``search_space`` for it).  A list of
pass configs under one pass name is a categorical choice between them; their own parameters
may be searched too.  Every value is validated up front, so a bad one fails at load time.
"""

from __future__ import annotations

import copy
import itertools
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from honed.errors import ConfigProblem
from honed.passes.base import Pass, get_pass

SEARCHABLE = "SEARCHABLE_VALUES"


@dataclass
class Dimension:
    """One searched choice: ``key`` is 'passes.<name>.<param>', 'passes.<name>[<i>].<param>' for a
    parameter of one alternative, or 'passes.<name>' for the choice between alternatives."""

    key: str
    pass_name: str
    values: list[Any]
    alternative: int | None = None
    param: str | None = None


@dataclass
class SearchSpace:
    """Dimensions plus the raw pass entries they substitute into."""

    raw_passes: dict[str, Any]
    dimensions: list[Dimension] = field(default_factory=list)

    @property
    def size(self) -> int:
        n = 1
        for d in self.dimensions:
            n *= len(d.values)
        return n

    def points(self) -> Iterator[dict[str, Any]]:
        """Every combination, first dimension slowest (the sequential sampler's order)."""
        keys = [d.key for d in self.dimensions]
        for combo in itertools.product(*(d.values for d in self.dimensions)):
            yield dict(zip(keys, combo, strict=True))

    def default_point(self) -> dict[str, Any]:
        return {d.key: d.values[0] for d in self.dimensions}

    def concrete(self, point: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The raw pass entries (one config per pass) for a point."""
        out: dict[str, dict[str, Any]] = {}
        for name, entry in self.raw_passes.items():
            if isinstance(entry, list):
                choice = point.get(f"passes.{name}", 0)
                entry, alt = entry[choice], choice
            else:
                alt = None
            entry = copy.deepcopy(entry)
            for d in self.dimensions:
                if d.pass_name == name and d.param is not None and d.alternative == alt:
                    entry[d.param] = point[d.key]
            out[name] = entry
        return out

    def active(self, point: dict[str, Any]) -> dict[str, Any]:
        """The point without the parameters of alternatives it did not choose (for de-duplication)."""
        out = {}
        for d in self.dimensions:
            if d.alternative is not None and point.get(f"passes.{d.pass_name}", 0) != d.alternative:
                continue
            out[d.key] = point[d.key]
        return out


def _accepts(pass_cls: type[Pass], param: str, value: Any) -> bool:
    """Whether the pass's parameter accepts ``value`` as one literal value (not a list of choices)."""
    fld = pass_cls.config_class.model_fields.get(param)
    if fld is None:
        return True  # unknown key: let normal validation report it
    try:
        TypeAdapter(fld.annotation).validate_python(value)
    except ValidationError:
        return False
    return True


def _entry_dimensions(name: str, entry: dict[str, Any], key: str, alternative: int | None,
                      problems: list[ConfigProblem]) -> list[Dimension]:
    kind = entry.get("type")
    cls = get_pass(kind) if isinstance(kind, str) else None
    if cls is None:
        return []  # normal validation reports the type
    dims = []
    for param, value in entry.items():
        if param == "type":
            continue
        if value == SEARCHABLE:
            values = list(getattr(cls, "search_space", {}).get(param, [])) or _choices(cls, param)
            if not values:
                declared = ", ".join(getattr(cls, "search_space", {})) or "none"
                problems.append(ConfigProblem(f"{key}.{param}", f"{kind} declares no search values for '{param}'",
                                              f"give a list of values instead (searchable by default: {declared})"))
                continue
        elif isinstance(value, list) and not _accepts(cls, param, value):
            values = value
        else:
            continue
        if not values:
            problems.append(ConfigProblem(f"{key}.{param}", "an empty list of values to search", "give at least one"))
            continue
        for i, v in enumerate(values):
            try:
                cls.config_class.model_validate({**{k: x for k, x in entry.items() if k != "type"}, param: v})
            except ValidationError as e:
                bad = [err for err in e.errors() if err["loc"] and err["loc"][0] == param]
                if bad:
                    problems.append(ConfigProblem(f"{key}.{param}[{i}]", f"{v!r}: {bad[0]['msg']}"))
        dims.append(Dimension(f"{key}.{param}", name, list(values), alternative, param))
    return dims


def extract_space(raw_passes: dict[str, Any]) -> tuple[dict[str, Any], SearchSpace, list[ConfigProblem]]:
    """(raw passes at the default point, the space, problems found) for a searched workflow."""
    problems: list[ConfigProblem] = []
    space = SearchSpace(raw_passes=copy.deepcopy(raw_passes))
    for name, entry in raw_passes.items():
        key = f"passes.{name}"
        if isinstance(entry, list):
            if not entry or not all(isinstance(e, dict) for e in entry):
                problems.append(ConfigProblem(key, "a list of alternatives must hold pass configs (mappings with "
                                              "a 'type')"))
                continue
            if len(entry) > 1:
                space.dimensions.append(Dimension(key, name, list(range(len(entry)))))
            for i, alt in enumerate(entry):
                space.dimensions += _entry_dimensions(name, alt, f"{key}[{i}]", i, problems)
        elif isinstance(entry, dict):
            space.dimensions += _entry_dimensions(name, entry, key, None, problems)
    defaults = space.concrete(space.default_point()) if not problems else {
        n: (e[0] if isinstance(e, list) and e else e) for n, e in raw_passes.items()}
    return defaults, space, problems


def _choices(cls: Any, param: str) -> list[Any]:
    """Every value a boolean or Literal parameter can take (Olive searches those by default too)."""
    field = cls.config_class.model_fields.get(param)
    if field is None:
        return []
    ann = field.annotation
    if ann is bool:  # StrictBool fields annotate as bool too
        return [False, True]
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return []
