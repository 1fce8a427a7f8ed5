"""What the one-line commands share: flags generated from pass config fields, the common
model/output flags, and writing, printing or running the workflow they build.

A flag maps 1:1 onto a config field and takes its help text from that field's pydantic
description, so each parameter is described once (in the pass).  Values are checked against
the field's type and constraints while parsing, so an error names the flag, not a key path.
"""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console

from honed.errors import UserError

console = Console(highlight=False)


@dataclass(frozen=True)
class FieldFlag:
    """A command-line flag that sets one field of a config model.

    ``group`` names the option dict the value goes into (``pass_options``, ``training_args``,
    ``data_options``, ...), ``field`` the key inside it.
    """

    flag: str
    model: type[BaseModel]
    field: str
    group: str
    escapes: bool = False
    """Read ``\\n``/``\\t`` in the value as newline/tab (templates typed in a shell)."""

    @property
    def dest(self) -> str:
        return f"{self.group}__{self.field}"

    @property
    def info(self) -> Any:
        return self.model.model_fields[self.field]


def _literal_args(annotation: Any) -> list[Any] | None:
    """Choices of a Literal (optionally | None), else None."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _literal_args(args[0])
    return None


def _literal_members(annotation: Any) -> list[Any]:
    """Every Literal value anywhere in the annotation (``list[str] | Literal['all-linear']``)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [v for a in typing.get_args(annotation) for v in _literal_members(a)]
    return []


def _is_bool(annotation: Any) -> bool:
    """``bool``, ``StrictBool`` or either ``| None`` (an on/off flag)."""
    members = {typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
               for a in typing.get_args(annotation)}
    return annotation is bool or members == {bool, type(None)}


def _takes_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_takes_list(a) for a in typing.get_args(annotation))


def field_help(info: Any) -> str:
    """The field's description plus its default, escaped for argparse."""
    text = (info.description or "").rstrip()
    default = info.default
    if default is not PydanticUndefined and info.default_factory is None and default is not None:
        shown = default if not isinstance(default, bool) else str(default).lower()
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def add_field_flags(parser: argparse.ArgumentParser | Any, flags: list[FieldFlag]) -> None:
    """One argparse option per flag, typed and described by its config field."""
    for f in flags:
        ann = f.info.annotation
        kwargs: dict[str, Any] = {"dest": f.dest, "default": None, "help": field_help(f.info)}
        if _is_bool(ann):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            choices = _literal_args(ann)
            if choices is not None:
                kwargs["choices"] = [str(c) for c in choices]
            else:
                kwargs["metavar"] = f.field.upper()
            if _takes_list(ann):
                kwargs["help"] += " Comma-separated on the command line."
        parser.add_argument(f.flag, **kwargs)


def convert(f: FieldFlag, raw: Any) -> Any:
    """A flag's string -> the JSON value of its field, checked against type and constraints."""
    info = f.info
    adapter = TypeAdapter(Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation)
    candidates: list[Any] = [raw]
    if isinstance(raw, str):
        if _takes_list(info.annotation) and raw not in [str(c) for c in _literal_members(info.annotation)]:
            candidates = [[part.strip() for part in raw.split(",") if part.strip()]]
        elif info.annotation is not str:
            try:
                candidates = [json.loads(raw), raw]
            except ValueError:
                candidates = [raw]
    errors: list[ValidationError] = []
    for value in candidates:
        try:
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as e:
            errors.append(e)
    msg = errors[0].errors()[0]["msg"].removeprefix("Value error, ")
    raise UserError(f"{f.flag} {raw}: {msg}")


def collect(args: argparse.Namespace, flags: list[FieldFlag]) -> dict[str, dict[str, Any]]:
    """The values the user gave, grouped: {group: {field: value}}; flags left out are absent."""
    out: dict[str, dict[str, Any]] = {}
    for f in flags:
        raw = getattr(args, f.dest, None)
        if raw is not None:
            if f.escapes:
                raw = unescape(raw)
            out.setdefault(f.group, {})[f.field] = convert(f, raw)
    return out


def unescape(text: str) -> str:
    r"""``\n`` and ``\t`` typed in a shell (inside single quotes) -> newline and tab, as users mean them."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def check_applies(values: dict[str, Any], flags: list[FieldFlag], model: type[BaseModel], group: str,
                  why: str) -> None:
    """Refuse a flag whose field the chosen pass does not have (e.g. --quant-type without qlora)."""
    by_field = {f.field: f.flag for f in flags if f.group == group}
    for name in values:
        if name not in model.model_fields:
            raise UserError(f"{by_field.get(name, name)} does not apply {why}")


def add_common(p: argparse.ArgumentParser, *, adapter: bool = True) -> None:
    """Flags every shortcut has: the model, output, cache, and what to do with the workflow."""
    p.add_argument("-m", "--model", required=True,
                   help="Hugging Face folder, hub id (org/name), .gguf file, pkg://package/file, ONNX model, or "
                   "an adapter folder (its base read from adapter_config.json).")
    if adapter:
        p.add_argument("--adapter-path", help="A PEFT adapter folder to apply over --model.")
    p.add_argument("--task", help="What the model does (text-generation, text-classification, "
                   "feature-extraction); default: read from its config.json.")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="Let transformers run code that ships with the model (off by default).")
    p.add_argument("-o", "--output-dir", required=True, help="Folder for the final model and footprints.json.")
    p.add_argument("--cache-dir", help="Cache of pass outputs (default: <OUTPUT_DIR>/../.honed-cache).")
    p.add_argument("--save-config", metavar="FILE",
                   help="Write the workflow this command runs (JSON, or YAML for .yaml/.yml); "
                   "`honed run --config FILE` reruns it.")
    p.add_argument("--dry-run", action="store_true", help="Print the workflow and run nothing.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="How much to log; 'debug' also shows tracebacks.")


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Builder keyword arguments from the common flags."""
    out: dict[str, Any] = {"output_dir": args.output_dir, "cache_dir": args.cache_dir, "task": args.task}
    if getattr(args, "adapter_path", None):
        out["adapter_path"] = args.adapter_path
    if args.trust_remote_code:
        out["load_kwargs"] = {"trust_remote_code": True}
    return out


def dump(config: dict[str, Any], path: Path | None = None) -> str:
    """JSON, or YAML when ``path`` ends in .yaml/.yml."""
    if path is not None and path.suffix.lower() in (".yaml", ".yml"):
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return json.dumps(config, indent=2) + "\n"


def finish(args: argparse.Namespace, config: dict[str, Any]) -> int:
    """Validate the built workflow, then save it, print it (--dry-run) or run it."""
    from honed.config.load import validate

    save = Path(args.save_config).expanduser().resolve() if args.save_config else None
    validate(config, save)  # bad combinations fail here, before anything is written
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(dump(config, save), encoding="utf-8")
        console.print(f"config: {save}  (rerun with `honed run --config {save}`)", soft_wrap=True)
    if args.dry_run:
        print(dump(config, save), end="")
        return 0
    from honed.cli.cmd_run import print_summary
    from honed.engine.progress import RunDisplay
    from honed.workflows import run

    result = run(config, source=save, display=RunDisplay())
    print_summary(result)
    return 0
