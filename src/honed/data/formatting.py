"""Rows to text: templates over columns, joined columns, chat templates, a user's function.

Each row becomes a ``Formatted`` (prompt, answer): the text the model reads is
``prompt + answer``; completion-only loss trains on the answer only.  With no way to tell
the two apart the whole text is the answer.

Where the answer starts (``loss_rule`` names the rule that applied, for messages):

1. ``response_template`` set: after its last occurrence (TRL's ``DataCollatorForCompletionOnlyLM``
   rule), looked up in a text_template's literal text, else in each row's text.
2. ``text_template`` with an assistant marker (``ASSISTANT_MARKERS``: ``<|assistant|>``,
   ``<|im_start|>assistant``, ``[/INST]``, ``### Response:`` ...): at the first field after the
   last marker that a field follows; everything after it (more fields, literal suffix) is answer.
   ``"<|user|>\\n{q}<|end|>\\n<|assistant|>\\n{a}\\n(source: {s})<|end|>"`` trains ``{a}`` onward.
3. ``text_template`` without a marker: at its last field (the rule before markers were read).
   With more than two columns this is a guess, and the loss warning says so.
4. ``chat_template``: every assistant turn, from the end of the generation prompt to the end of the
   turn (TRL's ``assistant_only_loss``, found here by rendering the chat one turn at a time
   instead of needing ``{% generation %}`` tags in the template).
5. ``formatting_func`` returning ``(prompt, answer)``: the pair.

Templates use Python format syntax: ``{column}`` inserts a column, ``{{`` and ``}}`` are
literal braces, and ``{column!r}`` / ``{column:>10}`` work as in ``str.format``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    trained: tuple[tuple[int, int], ...] | None = None
    """Character spans [start, end) of ``text`` the loss covers when not just the answer: every
    assistant turn of a multi-turn chat (the last one is ``answer``)."""

    @property
    def text(self) -> str:
        return self.prompt + self.answer

    def loss_spans(self) -> tuple[tuple[int, int], ...]:
        """Character spans of ``text`` that completion-only loss trains on."""
        if self.trained is not None:
            return self.trained
        return ((len(self.prompt), len(self.prompt) + len(self.answer)),)


ASSISTANT_MARKERS: tuple[str, ...] = (
    r"<\|assistant\|>",                                  # Phi-3, Zephyr, TinyLlama-chat
    r"<\|im_start\|>assistant",                          # ChatML: Qwen, SmolLM2, Hermes
    r"<\|start_header_id\|>assistant<\|end_header_id\|>",  # Llama 3
    r"<start_of_turn>model",                              # Gemma
    r"\[/INST\]",                                         # Llama 2, Mistral
    r"<\|Assistant\|>|<｜Assistant｜>",                    # DeepSeek
    r"<\|CHATBOT_TOKEN\|>",                               # Cohere
    r"(?im)^#{1,6}[ \t]*(?:response|answer|assistant|output)\b[ \t]*:?",  # Alpaca '### Response:'
    r"(?im)^(?:assistant|answer|response|output|bot|gpt|a)[ \t]*:",      # Vicuna 'ASSISTANT:', 'A:'
    r"(?m)^assistant[ \t]*$",                              # ChatML / Llama 3 header rendered as text
)
"""Regular expressions for text that opens an assistant turn, matched against a text_template's
literal text (``^`` is the start of a line; a field is never part of a marker)."""
_MARKERS = [re.compile(m) for m in ASSISTANT_MARKERS]
_HOLE = "\0"  # stands for a field in a template's literal skeleton


@dataclass(frozen=True)
class Boundary:
    """Where a text_template's answer starts."""

    prompt: str
    """The prompt part: itself a template (braces still escaped); empty answer when it is the whole template."""
    answer_fields: tuple[str, ...]
    """Columns the answer shows, in order."""
    rule: str
    """How the start was found, as a phrase for messages."""
    ambiguous: str | None = None
    """Why the start is a guess, when it is."""


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


def _skeleton(template: str) -> tuple[list[tuple[str, str | None, str | None, str | None]], str, list[int]]:
    """(parsed parts, literal text with each field as NUL, skeleton position of each field)."""
    parts = _parse(template)
    skeleton = ""
    holes: list[int] = []
    for literal, name, _, _ in parts:
        skeleton += literal
        if name is not None:
            holes.append(len(skeleton))
            skeleton += _HOLE
    return parts, skeleton, holes


def _cut(parts: list[tuple[str, str | None, str | None, str | None]], cut: int) -> str:
    """The template up to skeleton position ``cut`` (inside a literal or at a field's start)."""
    prompt, pos = "", 0
    for literal, name, spec, conv in parts:
        if cut <= pos + len(literal):
            return prompt + _escape(literal[:cut - pos])
        prompt += _escape(literal)
        pos += len(literal)
        if name is not None:
            prompt += _field(name, conv, spec)
            pos += 1
    return prompt


def _column(name: str) -> str:
    return name.split(".")[0].split("[")[0]


def _find_cut(template: str, response_template: str | None) -> tuple[int | None, str, str | None]:
    """(skeleton position where the answer starts or None, the rule as a phrase, why it is a guess)."""
    _, skeleton, holes = _skeleton(template)
    names = [_column(p[1]) for p in _parse(template) if p[1] is not None]
    if response_template is not None:
        at = skeleton.rfind(response_template)
        if at < 0:
            raise DataError(f"response_template {response_template!r} does not occur in the literal text of "
                            f"text_template {template!r}; copy it from the template")
        return at + len(response_template), f"after response_template {response_template!r}", None
    best: tuple[int, int, str] | None = None  # (marker start, first field after it, marker text)
    for pattern in _MARKERS:
        for m in pattern.finditer(skeleton):
            following = [h for h in holes if h >= m.end()]
            if following and (best is None or m.start() > best[0]):
                best = (m.start(), following[0], m.group())
    if best is not None:
        return best[1], f"at the first field after the assistant marker {best[2].strip()!r}", None
    if not holes:
        return None, "nowhere (the template has no field)", None
    columns = list(dict.fromkeys(names))
    ambiguous = None
    if len(columns) > 2:
        ambiguous = (f"that is a guess: text_template has {len(columns)} columns ({', '.join(columns)}) and no "
                     "assistant marker")
    return holes[-1], f"at the template's last field {{{names[-1]}}} (no assistant marker)", ambiguous


def boundary(template: str, response_template: str | None = None) -> Boundary:
    """Where ``template``'s answer starts (see the module docstring for the order of the rules).

    DataError when ``response_template`` is not in the template's literal text.
    """
    parts, _, holes = _skeleton(template)
    cut, rule, ambiguous = _find_cut(template, response_template)
    if cut is None:
        return Boundary(template, (), rule)
    names = [_column(p[1]) for p in parts if p[1] is not None]
    answer = tuple(dict.fromkeys(n for h, n in zip(holes, names, strict=True) if h >= cut))
    return Boundary(_cut(parts, cut), answer, rule, ambiguous)


def answer_split(template: str, response_template: str | None = None) -> tuple[str, str | None, str]:
    """(template up to the answer's first field, that field's column, the rest of the template).

    ``"<|user|>\\n{q}<|end|>\\n<|assistant|>\\n{a}<|end|>"`` -> (``"<|user|>\\n{q}<|end|>\\n<|assistant|>\\n"``,
    ``"a"``, ``"<|end|>"``).  The answer starts as ``boundary`` says; with no field in it the result
    is (template, None, "").  All three parts are templates (braces still escaped).
    """
    parts, _, holes = _skeleton(template)
    cut, _, _ = _find_cut(template, response_template)
    first = next((k for k, h in enumerate(holes) if cut is not None and h >= cut), None)
    if first is None:
        return template, None, ""
    fields = [i for i, p in enumerate(parts) if p[1] is not None]
    i = fields[first]
    name = parts[i][1]
    assert name is not None
    rest = "".join(_escape(lit) + (_field(n, c, sp) if n is not None else "") for lit, n, sp, c in parts[i + 1:])
    return _cut(parts, holes[first]), _column(name), rest


def split_template(template: str) -> tuple[str, str | None]:
    """(prompt part, name of the answer field) when the template ends with that field, else (template, None).

    ``"### Text: {phrase}\\n### The tone is:\\n{tone}"`` -> (``"### Text: {phrase}\\n### The tone is:\\n"``, ``"tone"``).
    The prompt part is itself a template (braces still escaped).
    """
    prompt, name, rest = answer_split(template)
    if name is None or rest:
        return template, None
    return prompt, name


@dataclass(frozen=True)
class LossRule:
    """What the loss covers for a data config, in words for messages."""

    completion: bool
    """Completion-only loss is on (prompt tokens get no label)."""
    rule: str
    """What is trained, or where the answer starts."""
    explicit: bool = False
    """The user drew the line (response_template, a formatting_func pair, completion_only false)."""
    caveat: str | None = None
    """Why the line may not be what the user meant (a guessed boundary, a setting that cannot apply)."""


def loss_rule(cfg: DataConfig) -> LossRule:
    """Whether completion-only loss is on and where the answer starts: as set, else on when there is
    an answer to learn after a prompt that varies (see the module docstring)."""
    pp = cfg.pre_process_data_config
    rt = pp.response_template
    if pp.completion_only is False:
        return LossRule(False, "every token (completion_only: false)", explicit=True)
    if rt is not None and not pp.text_template:
        return LossRule(True, f"what follows the last response_template {rt!r} in each row", explicit=True)
    if pp.formatting_func:
        return LossRule(True, f"the answer of each (prompt, answer) pair {pp.formatting_func} returns "
                        "(a plain string trains on every token)", explicit=True)
    if pp.chat_template:
        return LossRule(True, "the assistant turns of each chat (a chat with none trains on every token)")
    if pp.text_template:
        b = boundary(pp.text_template, rt)
        splits = b.prompt not in ("", pp.text_template)  # text on both sides of the line
        auto = bool(b.answer_fields) and bool(template_fields(b.prompt))
        if splits and (pp.completion_only or rt is not None or auto):
            return LossRule(True, f"the answer, which starts {b.rule}", explicit=rt is not None, caveat=b.ambiguous)
        if pp.completion_only:
            return LossRule(True, "every token", caveat=f"completion_only is true but the answer would start "
                            f"{b.rule}, leaving nothing to mask; set response_template")
        return LossRule(False, "every token (no field precedes the answer, so there is no prompt to mask)")
    if pp.completion_only:
        return LossRule(True, "every token", caveat="completion_only is true but rows (text_cols / text) have no "
                        "prompt part; set response_template or use text_template")
    return LossRule(False, "every token (rows have no prompt part)")


def completion_default(cfg: DataConfig) -> bool:
    """Whether completion-only loss is on: as set, else on when there is an answer to learn."""
    return loss_rule(cfg).completion


def answer_column(cfg: DataConfig) -> str | None:
    """The column whose value the model learns to answer (the answer's first field), if any."""
    pp = cfg.pre_process_data_config
    if pp.text_template:
        prompt, name, _ = answer_split(pp.text_template, pp.response_template)
        return name if template_fields(prompt) else None
    if pp.chat_messages and pp.chat_messages[-1].role == "assistant":
        fields = template_fields(pp.chat_messages[-1].content)
        return fields[0] if fields else None
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
    if pp.input_cols:
        return list(pp.input_cols)
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
        fix = "input_cols" if cfg.pre_process_data_config.input_cols else "text_template / text_cols"
        raise DataError(f"data config '{cfg.name}': column(s) {missing} not in the data; columns are {columns}; "
                        f"fix {fix}")
    for c in needed:
        values = dataset[c]
        for i, v in enumerate(values):
            if v is None:
                at = where(i) if where else f"row {i}"
                raise DataError(f"{at}: column '{c}' is missing from this row (rows need {needed}); add it or "
                                "remove the row")


def _load_user_function(script: str, name: str) -> Callable[[dict[str, Any]], Any]:
    """Import ``name`` from the user's script; the user asked for it by naming both (honed.util.user_script
    imports each script once and logs it)."""
    from honed.util.user_script import user_function

    return user_function(script, name, "pre_process_data_config.formatting_func")


def _fill(template: str, row: dict[str, Any], index: int) -> str:
    try:
        return template.format_map(row)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"row {index}: text_template {template!r} cannot be filled ({type(e).__name__}: {e}); "
                        f"columns are {sorted(row)}") from e


def format_examples(cfg: DataConfig, dataset: Any, tokenizer: Any = None) -> list[Formatted]:
    """Every row of ``dataset`` as (prompt, answer) text, following cfg's formatting options.

    DataError when ``response_template`` occurs in no row's text.
    """
    pp = cfg.pre_process_data_config
    rows: Sequence[dict[str, Any]] = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    completion = completion_default(cfg)
    out: list[Formatted] = []
    if pp.formatting_func:
        assert pp.user_script is not None  # the config validator requires it
        func = _load_user_function(pp.user_script, pp.formatting_func)
        for i, row in enumerate(rows):
            value = func(row)
            if isinstance(value, str):
                out.append(Formatted("", value, i))
            elif isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, str) for v in value):
                out.append(Formatted(value[0], value[1], i) if completion else Formatted("", value[0] + value[1], i))
            else:
                raise DataError(f"row {i}: {pp.formatting_func} returned {type(value).__name__}; return a str "
                                "or a (prompt, answer) pair of str")
    elif pp.chat_template:
        out = _format_chat(cfg, rows, tokenizer, completion and pp.response_template is None)
    elif pp.text_template:
        b = boundary(pp.text_template, pp.response_template)
        if completion and b.prompt != pp.text_template:
            return [Formatted(p := _fill(b.prompt, r, i), _fill(pp.text_template, r, i)[len(p):], i)
                    for i, r in enumerate(rows)]
        return [Formatted("", _fill(pp.text_template, r, i), i) for i, r in enumerate(rows)]
    else:
        if pp.input_cols and len(pp.input_cols) == 2:
            raise DataError(f"data config '{cfg.name}': input_cols {pp.input_cols} is a text pair, which only a "
                            "sequence classifier reads (tokenizer(text, text_pair)); for a causal LM write "
                            f"text_template, e.g. '{{{pp.input_cols[0]}}}\\n{{{pp.input_cols[1]}}}'")
        cols = pp.text_cols or pp.input_cols or ["text"]
        out = [Formatted("", "\n".join(str(r[c]) for c in cols), i) for i, r in enumerate(rows)]
    if completion and pp.response_template is not None:
        out = [_after_marker(f, pp.response_template) for f in out]
        if out and all(not f.answer for f in out):
            raise DataError(f"data config '{cfg.name}': response_template {pp.response_template!r} occurs in no "
                            f"row's text (first row: {out[0].text[:200]!r}); copy it from the formatted text")
    return out


def _after_marker(f: Formatted, marker: str) -> Formatted:
    """The row split after the last ``marker`` (TRL's rule); a row without it trains on nothing."""
    text = f.text
    at = text.rfind(marker)
    if at < 0:
        return Formatted(text, "", f.index, trained=())
    return Formatted(text[:at + len(marker)], text[at + len(marker):], f.index)


def _format_chat(cfg: DataConfig, rows: Sequence[dict[str, Any]], tokenizer: Any, completion: bool) -> list[Formatted]:
    """Chats rendered with the chat template; under completion-only loss every assistant turn is trained.

    Turn k spans from the end of ``render(messages[:k], add_generation_prompt=True)`` to the end of
    ``render(messages[:k + 1])``; a template that renders earlier turns differently once later ones
    follow gets the shared prefix (the turn is then cut short, never widened).
    """
    pp = cfg.pre_process_data_config
    if tokenizer is None:
        raise DataError(f"data config '{cfg.name}': chat_template needs a tokenizer")
    template = pp.chat_template if isinstance(pp.chat_template, str) else None
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data config '{cfg.name}': the tokenizer has no chat template; set chat_template to a "
                        "Jinja template string or use text_template")

    def render(messages: list[dict[str, Any]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation)

    def reach(prefix: str, full: str) -> int:
        return len(prefix) if full.startswith(prefix) else common_prefix_len(prefix, full)

    out = []
    for i, row in enumerate(rows):
        if pp.chat_messages:
            messages = [{"role": m.role, "content": _fill(m.content, row, i)} for m in pp.chat_messages]
        else:
            messages = row[pp.messages_column]
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
                raise DataError(f"row {i}: column '{pp.messages_column}' must be a list of {{role, content}} "
                                "objects")
        full = render(messages)
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        if not completion or not turns:
            out.append(Formatted("", full, i))
            continue
        spans = []
        for k in turns:  # an opening assistant turn has no prompt to render: it starts at 0
            start = reach(render(messages[:k], True), full) if k else 0
            end = len(full) if k == len(messages) - 1 else reach(render(messages[:k + 1]), full)
            spans.append((start, max(start, end)))
        last = spans[-1][0]
        trained = None if spans == [(last, len(full))] else tuple(spans)
        out.append(Formatted(full[:last], full[last:], i, trained))
    return out


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (characters, token ids) ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def text_pairs(cfg: DataConfig, dataset: Any) -> list[tuple[str, str]] | None:
    """Each row's (text, text_pair) when input_cols names two columns, else None.

    Olive's huggingface_pre_process tokenizes such rows as ``tokenizer(row[c1], row[c2])``: a BERT tokenizer
    makes ``[CLS] a [SEP] b [SEP]`` with token_type_ids 0 then 1.  Joining the two into one text would feed
    the classifier other tokens and segment ids, so the pair is kept apart for ``encode_texts``.
    """
    cols = cfg.pre_process_data_config.input_cols
    if not cols or len(cols) != 2:
        return None
    a, b = cols
    return [(str(r[a]), str(r[b])) for r in (dataset.to_list() if hasattr(dataset, "to_list") else dataset)]


def encode_texts(tokenizer: Any, texts: Sequence[str] | Sequence[tuple[str, str]], **kwargs: Any) -> Any:
    """``tokenizer(texts, **kwargs)``, or ``tokenizer(firsts, seconds, **kwargs)`` for (text, text_pair) tuples
    (transformers' text / text_pair arguments; empty ``texts`` are passed through as they are)."""
    if texts and isinstance(texts[0], tuple):
        return tokenizer([t[0] for t in texts], [t[1] for t in texts], **kwargs)
    return tokenizer(list(texts), **kwargs)


def format_rows(cfg: DataConfig, dataset: Any, tokenizer: Any = None) -> list[str]:
    """Each row's full text (prompt + answer), as the model will read it."""
    return [f.text for f in format_examples(cfg, dataset, tokenizer)]
