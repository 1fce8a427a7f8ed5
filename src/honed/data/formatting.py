"""Rows to text: templates over columns, joined columns, chat templates, a user's function.

Each row becomes a ``Formatted`` (prompt, answer): the text the model reads is
``prompt + answer``; completion-only loss trains on the answer only.  With no way to tell
the two apart the whole text is the answer.

Templates use Python format syntax: ``{column}`` inserts a column, ``{{`` and ``}}`` are
literal braces, and ``{column!r}`` / ``{column:>10}`` work as in ``str.format``.
"""

from __future__ import annotations

import importlib.util
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.data.config import DataConfig
from honed.errors import DataError

_FMT = string.Formatter()


@dataclass(frozen=True)
class Formatted:
    """One row as text: ``prompt`` (masked by completion-only loss) then ``answer``."""

    prompt: str
    answer: str
    index: int = -1
    """Position of the row in the loaded data (for error messages naming its line)."""

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def _field(name: str, conv: str | None, spec: str | None) -> str:
    return "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_FMT.parse(template))
    except ValueError as e:
        raise DataError(f"text_template {template!r} is not a valid format string ({e}); write literal braces "
                        "as '{{' and '}}'") from e


def template_fields(template: str) -> list[str]:
    """Column names a template uses, in order (``{a.b}`` and ``{a[0]}`` use column ``a``)."""
    out: list[str] = []
    for _, name, _, _ in _parse(template):
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise DataError(f"text_template {template!r} has a positional field '{{{name}}}'; name a column "
                            "instead, e.g. '{phrase}'")
        base = name.split(".")[0].split("[")[0]
        if base not in out:
            out.append(base)
    return out


def answer_split(template: str) -> tuple[str, str | None, str]:
    """(prompt template, last field, literal suffix) when only literal text follows the last field.

    ``"<|user|>\\n{q}<|end|>\\n<|assistant|>\\n{a}<|end|>"`` -> (``"<|user|>\\n{q}<|end|>\\n<|assistant|>\\n"``,
    ``"a"``, ``"<|end|>"``).  The answer is then the last field plus the suffix.
    """
    parts = _parse(template)
    last = max((i for i, p in enumerate(parts) if p[1] is not None), default=None)
    if last is None:
        return template, None, ""
    prompt = ""
    for literal, name, spec, conv in parts[:last]:
        prompt += _escape(literal) + (_field(name, conv, spec) if name is not None else "")
    literal, name, spec, conv = parts[last]
    prompt += _escape(literal)
    suffix = "".join(p[0] for p in parts[last + 1:])
    assert name is not None
    return prompt, name.split(".")[0].split("[")[0], suffix


def split_template(template: str) -> tuple[str, str | None]:
    """(prompt part, name of the last field) when the template ends with a field, else (template, None).

    ``"### Text: {phrase}\\n### The tone is:\\n{tone}"`` -> (``"### Text: {phrase}\\n### The tone is:\\n"``, ``"tone"``).
    The prompt part is itself a template (braces still escaped).
    """
    prompt, name, suffix = answer_split(template)
    if name is None or suffix:
        return template, None
    return prompt, name


def completion_default(cfg: DataConfig) -> bool:
    """Whether completion-only loss is on: as set, else on when there is an answer to learn."""
    pp = cfg.pre_process_data_config
    if pp.completion_only is not None:
        return pp.completion_only
    if pp.formatting_func or pp.chat_template:
        return True
    if pp.text_template:
        prompt, name, _ = answer_split(pp.text_template)
        return name is not None and bool(template_fields(prompt))
    return False


def answer_column(cfg: DataConfig) -> str | None:
    """The column whose value the model learns to answer (the template's last field), if any."""
    pp = cfg.pre_process_data_config
    if pp.text_template:
        prompt, name, _ = answer_split(pp.text_template)
        return name if template_fields(prompt) else None
    if pp.chat_messages and pp.chat_messages[-1].role == "assistant":
        fields = template_fields(pp.chat_messages[-1].content)
        return fields[-1] if fields else None
    return None


def required_columns(cfg: DataConfig) -> list[str]:
    """Columns every row must have for the configured formatting."""
    pp = cfg.pre_process_data_config
    if pp.formatting_func:
        return []
    if pp.chat_template:
        if pp.chat_messages:
            return list(dict.fromkeys(c for m in pp.chat_messages for c in template_fields(m.content)))
        return [pp.messages_column]
    if pp.text_template:
        return template_fields(pp.text_template)
    if pp.text_cols:
        return list(pp.text_cols)
    return []


def check_columns(cfg: DataConfig, dataset: Any, where: Callable[[int], str] | None = None) -> None:
    """DataError when a needed column is absent, or empty (null) in some row: name the row and the fix."""
    columns = list(dataset.column_names)
    needed = required_columns(cfg)
    if not needed and not cfg.pre_process_data_config.formatting_func:
        if "text" in columns:
            return
        raise DataError(f"data config '{cfg.name}': say how rows become text: set text_template (e.g. "
                        f"'{{{columns[0]}}}'), text_cols or chat_template; columns are {columns}")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"data config '{cfg.name}': column(s) {missing} not in the data; columns are {columns}; "
                        "fix text_template / text_cols")
    for c in needed:
        values = dataset[c]
        for i, v in enumerate(values):
            if v is None:
                at = where(i) if where else f"row {i}"
                raise DataError(f"{at}: column '{c}' is missing from this row (rows need {needed}); add it or "
                                "remove the row")


def _load_user_function(script: str, name: str) -> Callable[[dict[str, Any]], Any]:
    """Import ``name`` from the user's script; the user asked for it by naming both."""
    path = Path(script)
    spec = importlib.util.spec_from_file_location(f"honed_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise DataError(f"user_script {path} cannot be imported; it must be a .py file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    func = getattr(module, name, None)
    if not callable(func):
        raise DataError(f"user_script {path} defines no function '{name}'; fix formatting_func")
    return func


def _fill(template: str, row: dict[str, Any], index: int) -> str:
    try:
        return template.format_map(row)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"row {index}: text_template {template!r} cannot be filled ({type(e).__name__}: {e}); "
                        f"columns are {sorted(row)}") from e


def format_examples(cfg: DataConfig, dataset: Any, tokenizer: Any = None) -> list[Formatted]:
    """Every row of ``dataset`` as (prompt, answer) text, following cfg's formatting options."""
    pp = cfg.pre_process_data_config
    rows: Sequence[dict[str, Any]] = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    completion = completion_default(cfg)
    if pp.formatting_func:
        assert pp.user_script is not None  # the config validator requires it
        func = _load_user_function(pp.user_script, pp.formatting_func)
        out = []
        for i, row in enumerate(rows):
            value = func(row)
            if isinstance(value, str):
                out.append(Formatted("", value, i))
            elif isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, str) for v in value):
                out.append(Formatted(value[0], value[1], i) if completion else Formatted("", value[0] + value[1], i))
            else:
                raise DataError(f"row {i}: {pp.formatting_func} returned {type(value).__name__}; return a str "
                                "or a (prompt, answer) pair of str")
        return out
    if pp.chat_template:
        return _format_chat(cfg, rows, tokenizer, completion)
    if pp.text_template:
        prompt_t, name, _ = answer_split(pp.text_template)
        if completion and name is not None:
            return [Formatted(p := _fill(prompt_t, r, i), _fill(pp.text_template, r, i)[len(p):], i)
                    for i, r in enumerate(rows)]
        return [Formatted("", _fill(pp.text_template, r, i), i) for i, r in enumerate(rows)]
    cols = pp.text_cols or ["text"]
    return [Formatted("", "\n".join(str(r[c]) for c in cols), i) for i, r in enumerate(rows)]


def _format_chat(cfg: DataConfig, rows: Sequence[dict[str, Any]], tokenizer: Any, completion: bool) -> list[Formatted]:
    pp = cfg.pre_process_data_config
    if tokenizer is None:
        raise DataError(f"data config '{cfg.name}': chat_template needs a tokenizer")
    template = pp.chat_template if isinstance(pp.chat_template, str) else None
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data config '{cfg.name}': the tokenizer has no chat template; set chat_template to a "
                        "Jinja template string or use text_template")
    out = []
    for i, row in enumerate(rows):
        if pp.chat_messages:
            messages = [{"role": m.role, "content": _fill(m.content, row, i)} for m in pp.chat_messages]
        else:
            messages = row[pp.messages_column]
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
                raise DataError(f"row {i}: column '{pp.messages_column}' must be a list of {{role, content}} "
                                "objects")
        full = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        if completion and len(messages) > 1 and messages[-1]["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:-1], chat_template=template, tokenize=False,
                                                   add_generation_prompt=True)
            n = len(prompt) if full.startswith(prompt) else common_prefix_len(prompt, full)
            out.append(Formatted(full[:n], full[n:], i))
        else:
            out.append(Formatted("", full, i))
    return out


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (characters, token ids) ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def format_rows(cfg: DataConfig, dataset: Any, tokenizer: Any = None) -> list[str]:
    """Each row's full text (prompt + answer), as the model will read it."""
    return [f.text for f in format_examples(cfg, dataset, tokenizer)]
