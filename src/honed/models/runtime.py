"""One runtime per model kind: what ``honed generate``/``honed chat``, the evaluators, lm-eval and the
ONNX parity checks run a model with.

* ``HFRuntime``: a transformers (or PEFT) model in torch (kinds ``hf``, ``peft``);
* ``OnnxRuntime``: an ONNX model run by onnxruntime through ``OnnxSession`` (kind ``onnx``);
* ``GenaiRuntime``: an onnxruntime-genai folder run by ``og.Generator`` (kind ``genai``).

Each answers the same questions with the same conventions: ``forward`` (logits of token ids),
``score``/``token_scores``/``loglikelihoods``/``score_many`` (log-probabilities, natural log, of given
continuation tokens), and greedy ``generate``/``stream_ids`` (one loop, ``Runtime.stream_ids``, over
each kind's ``_steps``) that stops at the model's end-of-sequence ids (``eos_token_ids``: one rule for
all kinds), after ``max_new_tokens`` or once the new text contains a stop string.  ``open_runtime``
picks the runtime for a ``ModelHandle``; ``load_generator`` for a folder or file on disk.

Genai log-likelihoods come from ``og.Generator``: append the prompt, read ``get_logits()`` (the
next-token distribution), append one token, read again; ``rewind_to`` goes back to the shared prompt
between continuations, so a shared prompt is computed once (onnxruntime-genai 0.18).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from honed.data.formatting import common_prefix_len
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.onnx_runtime import OnnxSession, load_genai, model_kind
from honed.util.accelerator import Accelerator
from honed.util.runtime_flavour import import_runtime

# ---------------------------------------------------------------- the end-of-sequence rule


def eos_token_ids(folders: Iterable[Path], tokenizer: Any) -> frozenset[int]:
    """The token ids that end a sequence: the union of ``model.eos_token_id`` in genai_config.json,
    ``eos_token_id`` in generation_config.json and in config.json (an int or a list each) of every folder,
    and the tokenizer's ``eos_token_id``.

    The union because each runtime's own default reads only one of them (transformers' ``generate``:
    generation_config.json, else config.json; onnxruntime-genai: genai_config.json; lm-eval and the old
    ONNX loop: the tokenizer) and chat models list their end-of-turn token in only some of them; a
    token any of them calls the end is one no runtime should decode past.
    """
    ids: set[int] = set()
    for folder in folders:
        for name in ("genai_config.json", "generation_config.json", "config.json"):
            f = Path(folder) / name
            if not f.is_file():
                continue
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            value = (data.get("model") or {}).get("eos_token_id") if name == "genai_config.json" \
                else data.get("eos_token_id")
            if isinstance(value, int) and not isinstance(value, bool):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    return frozenset(ids)


# ---------------------------------------------------------------- helpers


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Natural-log softmax over the last axis, in float64."""
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _token_scores(logits: np.ndarray, ids: list[int], start: int) -> list[tuple[float, bool]]:
    """Scores of ids[start:] from the logits (seq, vocab) of ids[:-1] (row i predicts ids[i + 1])."""
    rows = logits[start - 1:len(ids) - 1]
    logp = log_softmax(rows)
    return [(float(logp[j, ids[start + j]]), int(rows[j].argmax()) == ids[start + j]) for j in range(len(rows))]


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def config_context(config: dict[str, Any]) -> int | None:
    """The context length a transformers config states (the keys lm-eval's HFLM reads), if any."""
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def folder_context(folder: Path) -> int | None:
    """Context length from genai_config.json or config.json in an ONNX model's folder."""
    try:
        if (folder / "genai_config.json").is_file():
            value = json.loads((folder / "genai_config.json").read_text()).get("model", {}).get("context_length")
            return value if isinstance(value, int) and value > 0 else None
        if (folder / "config.json").is_file():
            return config_context(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _handle(model: ModelHandle | str | Path, kind: str) -> ModelHandle:
    return model if isinstance(model, ModelHandle) else ModelHandle(kind=kind, path=str(model))


@dataclass
class GenerationStats:
    """Timing of one generate call (seconds; token counts)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    tokens: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Decode rate: tokens after the first over the time they took."""
        if self.new_tokens > 1 and self.decode_s > 0:
            return (self.new_tokens - 1) / self.decode_s
        return 0.0


# ---------------------------------------------------------------- the interface


class Runtime:
    """A loaded model plus its tokenizer and end-of-sequence ids.

    Token ids are Python ints; logits are float32 numpy arrays of shape (batch, seq, vocab);
    log-probabilities are natural logs.
    """

    kind = ""
    tokenizer: Any
    eos: frozenset[int] = frozenset()
    """Ids that end generation (``eos_token_ids``)."""
    context_length: int | None = None
    """Most tokens the model takes in one sequence, when the model says (config.json / genai_config.json)."""
    folder: Path

    def _init_common(self, folders: list[Path]) -> None:
        self.eos = eos_token_ids(folders, self.tokenizer)
        self.stats = GenerationStats()

    # ---------------------------------------------------------------- logits and scores

    def _logits(self, batch: list[list[int]]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, batch: list[list[int]]) -> np.ndarray:
        """Logits, shape (len(batch), seq, vocab) float32, of a batch of equal-length id lists (no padding);
        row ``[b, i]`` is the distribution of the token after ``batch[b][:i + 1]``."""
        return np.asarray(self._logits(batch), dtype=np.float32)

    def prefill(self, batch: list[list[int]]) -> None:
        """One inference call over a batch of equal-length sequences (what latency times)."""
        self._logits(batch)

    def token_scores(self, ids: list[int], start: int) -> list[tuple[float, bool]]:
        """(log p(ids[i] | ids[:i]), ids[i] is the argmax) for i in start..len(ids)-1 (start >= 1); the
        model sees ids[:-1]."""
        return _token_scores(self._logits([ids[:-1]])[0], ids, start)

    def score(self, ids: list[int], start: int) -> list[float]:
        """log p(ids[i] | ids[:i]) (natural log) for i in start..len(ids)-1 (start >= 1): one per token."""
        return [lp for lp, _ in self.token_scores(ids, start)]

    def loglikelihoods(self, seqs: list[tuple[list[int], int]], batch_size: int = 16) -> list[tuple[float, bool]]:
        """For each ``(ids, start)``: the summed log-probability of ``ids[start:]`` and whether every one of
        those tokens is the greedy choice (lm-eval's ``(logprob, is_greedy)``); batched where the kind can."""
        out = []
        for ids, start in seqs:
            scores = self.token_scores(ids, start)
            out.append((sum(lp for lp, _ in scores), all(g for _, g in scores)))
        return out

    def score_many(self, seqs: list[tuple[list[int], int]]) -> list[float]:
        """Summed log-probabilities of ``ids[start:]`` for each ``(ids, start)``; batched where the kind can."""
        return [sum(self.score(ids, start)) for ids, start in seqs]

    # ---------------------------------------------------------------- generation

    def _steps(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:  # pragma: no cover - interface
        """Greedy next tokens after ``ids``, at most ``max_new_tokens``; no stopping rule of its own."""
        raise NotImplementedError

    def stream_ids(self, ids: list[int], max_new_tokens: int = 64, stop: Sequence[str] = (),
                   stop_at_eos: bool = True) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` greedy token ids after ``ids``.  Stops after yielding an id in
        ``self.eos`` (when ``stop_at_eos``) or the token that completes one of the ``stop`` strings in the
        decoded new text (the caller cuts the text).  Timing goes to ``self.stats``."""
        self.stats = GenerationStats(prompt_tokens=len(ids))
        start = time.perf_counter()
        first = None
        stops = [s for s in stop if s]
        for tok in self._steps(ids, max_new_tokens):
            now = time.perf_counter()
            if first is None:
                first = now
                self.stats.prefill_s = now - start
            self.stats.new_tokens += 1
            self.stats.decode_s = now - first
            self.stats.tokens.append(tok)
            yield tok
            if stop_at_eos and tok in self.eos:
                return
            if stops and any(s in self.tokenizer.decode(self.stats.tokens, skip_special_tokens=True) for s in stops):
                return

    def generate(self, ids: list[int], max_new_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        """Greedy continuation of ``ids`` (new token ids only, the end-of-sequence id included when reached),
        at most ``max_new_tokens``, stopping as ``stream_ids``."""
        return list(self.stream_ids(ids, max_new_tokens, stop))

    def generate_ids(self, ids: list[int], max_new_tokens: int = 64, stop_at_eos: bool = True) -> list[int]:
        """``generate`` without stop strings; ``stop_at_eos=False`` always returns ``max_new_tokens`` ids
        (fewer only where a genai folder's context ends)."""
        return list(self.stream_ids(ids, max_new_tokens, stop_at_eos=stop_at_eos))

    # ---------------------------------------------------------------- text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the tokenizer's default special tokens."""
        return list(self.tokenizer(text)["input_ids"])

    def format_prompt(self, prompt: str, template: str | None, history: list[dict[str, str]] | None = None) -> str:
        """``template``: None = prompt as is; 'chat' = the tokenizer's chat template; else a format
        string with ``{prompt}``."""
        if template is None:
            return prompt
        if template == "chat":
            if not getattr(self.tokenizer, "chat_template", None):
                raise UserError(f"{self.folder} has no chat template; use --template '...{{prompt}}...' instead")
            messages = [*(history or []), {"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if "{prompt}" not in template:
            raise UserError(f"--template '{template}' must contain {{prompt}} (or be 'chat')")
        return template.replace("{prompt}", prompt)

    def stream(self, text: str, max_new_tokens: int = 64) -> Iterator[str]:
        """Yield printable text pieces of the greedy continuation of ``text`` (the EOS token not shown)."""
        out: list[int] = []
        shown = ""
        for tok in self.stream_ids(self.encode(text), max_new_tokens):
            if tok in self.eos:
                break
            out.append(tok)
            full = self.tokenizer.decode(out, skip_special_tokens=True)
            if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence; wait for the rest
                continue
            yield full[len(shown):]
            shown = full

    # ---------------------------------------------------------------- classifiers

    def class_logits(self, texts: list[str] | list[tuple[str, str]]) -> np.ndarray:
        """Logits of a sequence classifier, shape (len(texts), classes); a (text, text_pair) tuple is tokenized
        as a pair (``tokenizer(texts, text_pairs)``: BERT's ``[CLS] a [SEP] b [SEP]`` with token_type_ids)."""
        raise UserError(f"a {self.kind} model is not a sequence classifier; score it as a causal LM")

    def classify(self, texts: list[str] | list[tuple[str, str]]) -> list[int]:
        """Class ids of a sequence classifier."""
        return [int(i) for i in self.class_logits(texts).argmax(-1)]

    @property
    def is_classifier(self) -> bool:
        return False

    def close(self) -> None:
        """Free the model."""


# ---------------------------------------------------------------- Hugging Face / PEFT


class HFRuntime(Runtime):
    """A transformers causal LM or classifier (``hf``) or a PEFT adapter over one (``peft``), in torch.

    ``dtype`` None keeps the checkpoint's dtype: on a CPU a bf16/fp16 model is held as stored and computes in
    ``honed.models.loaders.cpu_compute_dtype`` (fp32 per layer where the CPU has no native bf16: never a full fp32
    copy); ``device`` a torch device string; ``tokenizer=False`` skips loading the tokenizer (``forward`` only:
    no text, and EOS ids from the config files alone).
    """

    kind = "hf"

    def __init__(self, model: ModelHandle | str | Path, device: str = "cpu", dtype: str | None = None,
                 tokenizer: bool = True) -> None:
        from honed.models.loaders import hold_as_stored, load_model, load_tokenizer

        handle = _handle(model, "hf")
        self.handle = handle
        self.folder = Path(handle.path)
        self.tokenizer = load_tokenizer(handle) if tokenizer else None
        self.model = load_model(handle, dtype=dtype, device=device)
        self.held_dtype = self.compute_dtype = dtype
        """The linear weights' dtype and the dtype they compute in (names; None: as loaded on a GPU)."""
        if dtype is None and str(device).startswith("cpu"):
            self.held_dtype, self.compute_dtype = hold_as_stored(self.model)
        self.device = device
        self.config = getattr(self.model, "config", None)
        self.context_length = config_context(self.config.to_dict() if self.config is not None else {})
        folders = [self.folder] + ([Path(handle.base.path)] if handle.base is not None else [])
        self._init_common(folders)

    @property
    def is_classifier(self) -> bool:
        return type(self.model).__name__.endswith("ForSequenceClassification")

    def _logits(self, batch: list[list[int]]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor(batch, device=self.device))
        return out.logits.float().cpu().numpy()

    def forward_masked(self, ids: np.ndarray, mask: np.ndarray, position_ids: bool | None = None) -> np.ndarray:
        """Logits (batch, seq, vocab) float32 of padded ``ids`` (batch, seq) int64 with their attention ``mask``
        (same shape; 1 real, 0 padding).  ``position_ids`` True feeds HF's position ids from the mask
        (``OnnxSession.position_ids``), as an exported causal LM gets them; None: only for a causal LM.
        A model without logits (feature extraction) gives its last hidden state (batch, seq, hidden)."""
        import torch

        kwargs: dict[str, Any] = {"input_ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device),
                                  "attention_mask": torch.from_numpy(np.asarray(mask, dtype=np.int64)).to(self.device)}
        if position_ids is None:
            position_ids = type(self.model).__name__.endswith("ForCausalLM") or self.handle.kind == "peft"
        if position_ids:
            kwargs["position_ids"] = torch.from_numpy(OnnxSession.position_ids(np.asarray(mask))).to(self.device)
        with torch.inference_mode():
            out = self.model(**kwargs)
        ref = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        return ref.float().cpu().numpy()

    def loglikelihoods(self, seqs: list[tuple[list[int], int]], batch_size: int = 16) -> list[tuple[float, bool]]:
        """Right-padded batches of ``ids[:-1]``, longest first (like lengths share a batch); log-softmax only
        at the scored positions."""
        import torch

        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
        for c in range(0, len(order), batch_size):
            part = [seqs[i] for i in order[c:c + batch_size]]
            width = max(len(ids) - 1 for ids, _ in part)
            ids_t = torch.zeros((len(part), width), dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for i, (ids, _) in enumerate(part):
                ids_t[i, :len(ids) - 1] = torch.tensor(ids[:-1])
                mask[i, :len(ids) - 1] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids_t.to(self.device), attention_mask=mask.to(self.device)).logits
            for i, (ids, start) in enumerate(part):
                pos = torch.arange(start - 1, len(ids) - 1)
                rows = logits[i, pos].double()
                want = torch.tensor(ids[start:], device=rows.device)
                logp = torch.log_softmax(rows, dim=-1)[torch.arange(len(pos)), want]
                out[order[c + i]] = (float(logp.sum()), bool((rows.argmax(-1) == want).all()))
        return out

    def score_many(self, seqs: list[tuple[list[int], int]], chunk: int = 16) -> list[float]:
        """Right-padded batches; log-softmax only at the scored positions (a label is 1-3 tokens)."""
        import torch

        out: list[float] = []
        for c in range(0, len(seqs), chunk):
            part = seqs[c:c + chunk]
            width = max(len(ids) for ids, _ in part)
            ids_t = torch.zeros((len(part), width), dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for i, (ids, _) in enumerate(part):
                ids_t[i, :len(ids)] = torch.tensor(ids)
                mask[i, :len(ids)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids_t.to(self.device), attention_mask=mask.to(self.device)).logits
            for i, (ids, start) in enumerate(part):
                pos = torch.arange(start - 1, len(ids) - 1)
                logp = torch.log_softmax(logits[i, pos].double(), dim=-1)
                out.append(float(logp[torch.arange(len(pos)), torch.tensor(ids[start:])].sum()))
        return out

    def _steps(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:
        import inspect

        import torch
        from transformers import DynamicCache

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # transformers 5.2x names the argument ``cache``; earlier versions ``past_key_values``.
        key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        cache = DynamicCache(config=self.model.config)
        cur = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                out = base(input_ids=cur, use_cache=True, **{key: cache})
                tok = int(out.logits[0, -1].argmax())
                yield tok
                cur = torch.tensor([[tok]], device=self.device)

    def class_logits(self, texts: list[str] | list[tuple[str, str]]) -> np.ndarray:
        import torch

        from honed.data.formatting import encode_texts

        enc = encode_texts(self.tokenizer, texts, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
        return logits.float().cpu().numpy()

    def close(self) -> None:
        del self.model


# ---------------------------------------------------------------- ONNX


class OnnxRuntime(Runtime):
    """An ONNX causal LM (with or without past key/values inputs) or classifier, run by onnxruntime on the
    target's execution provider (``providers`` overrides it)."""

    kind = "onnx"

    def __init__(self, model: ModelHandle | str | Path, target: Accelerator | None = None,
                 providers: list[str] | None = None) -> None:
        from honed.models.loaders import load_tokenizer_dir, trusts_remote_code

        handle = _handle(model, "onnx")
        path = Path(handle.path)
        self.folder = path if path.is_dir() else path.parent
        providers = providers or [(target or Accelerator()).execution_provider]
        self.session = OnnxSession(path, providers=providers)
        if "logits" not in self.session.output_names:
            raise UserError(f"{path}: the ONNX model has no 'logits' output; honed runs causal LMs and classifiers")
        self.tokenizer = load_tokenizer_dir(self.folder, trust_remote_code=trusts_remote_code(handle))
        self.context_length = folder_context(self.folder)
        self._init_common([self.folder])

    @property
    def is_classifier(self) -> bool:
        return not self.session.is_causal_lm

    def _logits(self, batch: list[list[int]]) -> np.ndarray:
        a = np.array(batch, dtype=np.int64)
        outs = dict(zip(self.session.output_names, self.session.run(a, np.ones_like(a)), strict=True))
        return outs["logits"]

    def _steps(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:
        if self.is_classifier:
            raise UserError(f"{self.session.path} is a sequence classifier; it cannot generate")
        seq = np.array([ids], dtype=np.int64)
        cur, past = seq, None
        for _ in range(max_new_tokens):
            if self.session.past_names:
                logits, past = self.session.step(cur, np.ones_like(seq), past)
            else:  # no KV cache: the whole sequence again
                logits = self._logits(seq.tolist())
            tok = int(logits[0, -1].argmax())
            yield tok
            cur = np.array([[tok]], dtype=np.int64)
            seq = np.concatenate([seq, cur], axis=1)

    def class_logits(self, texts: list[str] | list[tuple[str, str]]) -> np.ndarray:
        from honed.data.formatting import encode_texts

        enc = encode_texts(self.tokenizer, texts, return_tensors="np", padding=True, truncation=True)
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in self.session.inputs}
        if "token_type_ids" in self.session.inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])  # a tokenizer without segments: all 0
        return np.asarray(self.session.session.run(["logits"], feeds)[0], dtype=np.float32)


# ---------------------------------------------------------------- onnxruntime-genai


class GenaiRuntime(Runtime):
    """An onnxruntime-genai folder (genai_config.json), run by ``og.Generator`` with greedy search."""

    kind = "genai"

    def __init__(self, model: ModelHandle | str | Path, target: Accelerator | None = None) -> None:
        og = import_runtime("onnxruntime_genai")

        from honed.models.loaders import load_tokenizer_dir, trusts_remote_code

        handle = _handle(model, "genai")
        self.folder = Path(handle.path)
        self.og = og
        self.model, self.context_length = load_genai(self.folder)
        self.tokenizer = load_tokenizer_dir(self.folder, trust_remote_code=trusts_remote_code(handle))
        self._gen: Any = None
        self._cur: list[int] = []
        self._init_common([self.folder])

    def _generator(self, max_length: int | None = None) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length or self.context_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def _logits(self, batch: list[list[int]]) -> np.ndarray:
        """``get_logits`` holds only the last position, so the tokens go in one at a time."""
        out = []
        for ids in batch:
            gen = self._generator(len(ids) + 1)
            rows = []
            for tok in ids:
                gen.append_tokens([tok])
                rows.append(np.asarray(gen.get_logits(), dtype=np.float32)[0, -1])
            out.append(np.stack(rows))
        return np.stack(out)

    def prefill(self, batch: list[list[int]]) -> None:
        """One prompt-processing call per row (what latency times)."""
        for ids in batch:
            gen = self._generator(len(ids) + 1)
            gen.append_tokens(ids)
            gen.get_logits()

    def token_scores(self, ids: list[int], start: int) -> list[tuple[float, bool]]:
        if len(ids) - 1 > self.context_length:  # the last token is scored, never fed
            raise UserError(f"a row of {len(ids)} tokens exceeds the model's context length {self.context_length}")
        prefix = ids[:start]
        keep = common_prefix_len(self._cur, prefix)
        if self._gen is None or keep < len(prefix) or keep < len(self._cur):
            keep = min(keep, len(prefix) - 1)  # re-append at least one token so get_logits is fresh
            if self._gen is None or keep <= 0:
                self._gen, self._cur = self._generator(), []
            else:
                self._gen.rewind_to(keep)
                self._cur = self._cur[:keep]
            self._gen.append_tokens(prefix[len(self._cur):])
            self._cur = list(prefix)
        out = []
        for i in range(start, len(ids)):
            logits = np.asarray(self._gen.get_logits())[0, -1]
            out.append((float(log_softmax(logits)[ids[i]]), int(logits.argmax()) == ids[i]))
            if i < len(ids) - 1:
                self._gen.append_tokens([ids[i]])
                self._cur.append(ids[i])
        return out

    def _steps(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:
        gen = self._generator(min(len(ids) + max_new_tokens, self.context_length))
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
            yield int(gen.get_next_tokens()[0])

    def close(self) -> None:
        self._gen = None
        del self.model


# ---------------------------------------------------------------- factories


def open_runtime(handle: ModelHandle, target: Accelerator | None = None, dtype: str | None = None) -> Runtime:
    """The runtime for a handle's kind (hf, peft, onnx, genai) on the target's torch device / execution
    provider; ``dtype`` (torch dtype name) only for hf/peft, None keeping the checkpoint's."""
    target = target or Accelerator()
    if handle.kind in ("hf", "peft"):
        return HFRuntime(handle, device=target.torch_device, dtype=dtype)
    if handle.kind == "onnx":
        return OnnxRuntime(handle, target)
    if handle.kind == "genai":
        return GenaiRuntime(handle, target)
    raise UserError(f"cannot run a model of kind '{handle.kind}'")


def load_generator(path: str | Path, providers: list[str] | None = None) -> Runtime:
    """The runtime for a genai folder, an ONNX model (folder or .onnx) or an HF folder on disk (``model_kind``),
    on the CPU unless ``providers`` says; an HF model in float32."""
    p = Path(path)
    kind = model_kind(p)
    if kind == "genai":
        return GenaiRuntime(p)
    if kind == "onnx":
        return OnnxRuntime(p, providers=providers or ["CPUExecutionProvider"])
    return HFRuntime(p, dtype="float32")
