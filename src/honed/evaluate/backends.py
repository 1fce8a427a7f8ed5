"""One interface over the model kinds an evaluator scores: HF/PEFT (torch), ONNX (onnxruntime
with the target's execution provider) and onnxruntime-genai folders.

Every backend answers the same questions: the log-probability of given tokens after a prefix
(and whether greedy decoding would have produced them, for lm-eval's ``is_greedy``), one timed
forward call (latency), greedy generation (optionally up to stop strings) and, for sequence
classifiers, the class logits.  Label log-likelihoods for genai
folders come from ``og.Generator``: append the prompt, read ``get_logits()`` (the next-token
distribution), append one label token, read again; ``rewind_to`` goes back to the shared prompt
between labels, so the prompt is computed once per row (onnxruntime-genai 0.18).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from honed.data.formatting import common_prefix_len, encode_texts
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.onnx_runtime import load_genai
from honed.util.accelerator import Accelerator


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _stopped(tokenizer: Any, new: list[int], stop: Sequence[str]) -> bool:
    """True when the decoded new tokens contain one of the stop strings."""
    if not stop:
        return False
    text = tokenizer.decode(new, skip_special_tokens=True)
    return any(s in text for s in stop)


class Backend:
    """A loaded model plus its tokenizer."""

    kind = ""
    tokenizer: Any
    context_length: int | None = None
    """Most tokens the model takes in one sequence, when the model says (config.json / genai_config.json)."""

    def score(self, ids: list[int], start: int) -> list[float]:
        """log p(ids[i] | ids[:i]) for i in start..len(ids)-1 (start >= 1)."""
        return [lp for lp, _ in self.token_scores(ids, start)]

    def token_scores(self, ids: list[int], start: int) -> list[tuple[float, bool]]:
        """(log p(ids[i] | ids[:i]), ids[i] is the argmax) for i in start..len(ids)-1; the model sees ids[:-1]."""
        raise NotImplementedError

    def loglikelihoods(self, seqs: list[tuple[list[int], int]], batch_size: int = 16) -> list[tuple[float, bool]]:
        """For each ``(ids, start)``: the summed log-probability of ``ids[start:]`` and whether every one of
        those tokens is the greedy choice (lm-eval's ``(logprob, is_greedy)``); backends batch it when they can."""
        out = []
        for ids, start in seqs:
            scores = self.token_scores(ids, start)
            out.append((sum(lp for lp, _ in scores), all(g for _, g in scores)))
        return out

    def score_many(self, seqs: list[tuple[list[int], int]]) -> list[float]:
        """Summed log-probabilities of ``ids[start:]`` for each ``(ids, start)``; backends batch it when they can."""
        return [sum(self.score(ids, start)) for ids, start in seqs]

    def forward(self, batch: list[list[int]]) -> None:
        """One inference call on a batch of equal-length sequences (what latency times)."""
        raise NotImplementedError

    def generate(self, ids: list[int], max_new_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        """Greedy continuation, stopping at EOS or once the new text contains a ``stop`` string (the
        tokens up to and including the one completing it are returned; the caller cuts the text)."""
        raise NotImplementedError

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


class HFBackend(Backend):
    kind = "hf"

    def __init__(self, handle: ModelHandle, device: str = "cpu") -> None:
        from honed.models.loaders import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(handle)
        self.model = load_model(handle, device=device)
        self.device = device
        self.config = getattr(self.model, "config", None)
        self.context_length = _config_context(self.config.to_dict() if self.config is not None else {})

    @property
    def is_classifier(self) -> bool:
        return type(self.model).__name__.endswith("ForSequenceClassification")

    def _logits(self, ids: list[list[int]]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor(ids, device=self.device))
        return out.logits.float().cpu().numpy()

    def score(self, ids: list[int], start: int) -> list[float]:
        logp = _log_softmax(self._logits([ids])[0])
        return [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]

    def token_scores(self, ids: list[int], start: int) -> list[tuple[float, bool]]:
        return _token_scores(self._logits([ids[:-1]])[0], ids, start)

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

    def forward(self, batch: list[list[int]]) -> None:
        self._logits(batch)

    def generate(self, ids: list[int], max_new_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        import torch

        extra: dict[str, Any] = {"stop_strings": list(stop), "tokenizer": self.tokenizer} if stop else {}
        with torch.inference_mode():
            out = self.model.generate(input_ids=torch.tensor([ids], device=self.device), do_sample=False,
                                      max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id
                                      or self.tokenizer.eos_token_id, **extra)
        return [int(t) for t in out[0, len(ids):]]

    def class_logits(self, texts: list[str] | list[tuple[str, str]]) -> np.ndarray:
        import torch

        enc = encode_texts(self.tokenizer, texts, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
        return logits.float().cpu().numpy()

    def close(self) -> None:
        del self.model


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(self, handle: ModelHandle, target: Accelerator) -> None:
        from honed.models.loaders import load_tokenizer_dir, trusts_remote_code
        from honed.models.onnx_runtime import OnnxSession

        path = Path(handle.path)
        folder = path if path.is_dir() else path.parent
        self.session = OnnxSession(path, providers=[target.execution_provider])
        self.tokenizer = load_tokenizer_dir(folder, trust_remote_code=trusts_remote_code(handle))
        self.context_length = _folder_context(folder)
        if "logits" not in self.session.output_names:
            raise UserError(f"{path}: the ONNX model has no 'logits' output; honed scores causal LMs and classifiers")

    @property
    def is_classifier(self) -> bool:
        return not self.session.is_causal_lm

    def _logits(self, batch: list[list[int]]) -> np.ndarray:
        a = np.array(batch, dtype=np.int64)
        outs = dict(zip(self.session.output_names, self.session.run(a, np.ones_like(a)), strict=True))
        return outs["logits"]

    def score(self, ids: list[int], start: int) -> list[float]:
        logp = _log_softmax(self._logits([ids])[0])
        return [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]

    def token_scores(self, ids: list[int], start: int) -> list[tuple[float, bool]]:
        return _token_scores(self._logits([ids[:-1]])[0], ids, start)

    def forward(self, batch: list[list[int]]) -> None:
        self._logits(batch)

    def generate(self, ids: list[int], max_new_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        eos = self.tokenizer.eos_token_id
        seq = np.array([ids], dtype=np.int64)
        cur, past, out = seq, None, []
        for _ in range(max_new_tokens):
            if self.session.past_names:
                logits, past = self.session.step(cur, np.ones_like(seq), past)
            else:
                logits = self._logits(seq.tolist())
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            if tok == eos or _stopped(self.tokenizer, out, stop):
                break
            cur = np.array([[tok]], dtype=np.int64)
            seq = np.concatenate([seq, cur], axis=1)
        return out

    def class_logits(self, texts: list[str] | list[tuple[str, str]]) -> np.ndarray:
        enc = encode_texts(self.tokenizer, texts, return_tensors="np", padding=True, truncation=True)
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in self.session.inputs}
        if "token_type_ids" in self.session.inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])  # a tokenizer without segments: all 0
        return np.asarray(self.session.session.run(["logits"], feeds)[0], dtype=np.float32)


class GenaiBackend(Backend):
    kind = "genai"

    def __init__(self, handle: ModelHandle, target: Accelerator) -> None:
        import onnxruntime_genai as og

        from honed.models.loaders import load_tokenizer_dir, trusts_remote_code

        folder = Path(handle.path)
        self.og = og
        self.model, self.context_length = load_genai(folder)
        self.tokenizer = load_tokenizer_dir(folder, trust_remote_code=trusts_remote_code(handle))
        self._gen: Any = None
        self._cur: list[int] = []

    def _generator(self, max_length: int | None = None) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length or self.context_length, do_sample=False)
        return self.og.Generator(self.model, params)

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
            out.append((float(_log_softmax(logits)[ids[i]]), int(logits.argmax()) == ids[i]))
            if i < len(ids) - 1:
                self._gen.append_tokens([ids[i]])
                self._cur.append(ids[i])
        return out

    def forward(self, batch: list[list[int]]) -> None:
        for ids in batch:
            gen = self._generator(len(ids) + 1)
            gen.append_tokens(ids)
            gen.get_logits()

    def generate(self, ids: list[int], max_new_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        gen = self._generator(min(len(ids) + max_new_tokens, self.context_length))
        gen.append_tokens(ids)
        eos = self.tokenizer.eos_token_id
        out: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            out.append(tok)
            if tok == eos or _stopped(self.tokenizer, out, stop):
                break
        return out

    def close(self) -> None:
        self._gen = None
        del self.model


def _token_scores(logits: np.ndarray, ids: list[int], start: int) -> list[tuple[float, bool]]:
    """Scores of ids[start:] from the logits of ids[:-1] (row i predicts ids[i + 1])."""
    rows = logits[start - 1:len(ids) - 1]
    logp = _log_softmax(rows)
    return [(float(logp[j, ids[start + j]]), int(rows[j].argmax()) == ids[start + j]) for j in range(len(rows))]


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def _config_context(config: dict[str, Any]) -> int | None:
    """The context length a transformers config states (the keys lm-eval's HFLM reads), if any."""
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _folder_context(folder: Path) -> int | None:
    """Context length from genai_config.json or config.json in an ONNX model's folder."""
    try:
        if (folder / "genai_config.json").is_file():
            value = json.loads((folder / "genai_config.json").read_text()).get("model", {}).get("context_length")
            return value if isinstance(value, int) and value > 0 else None
        if (folder / "config.json").is_file():
            return _config_context(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, AttributeError):
        return None
    return None


def open_backend(handle: ModelHandle, target: Accelerator | None = None) -> Backend:
    """The backend for a handle's kind, on the target's device / execution provider."""
    target = target or Accelerator()
    if handle.kind in ("hf", "peft"):
        return HFBackend(handle, device=target.torch_device)
    if handle.kind == "onnx":
        return OnnxBackend(handle, target)
    if handle.kind == "genai":
        return GenaiBackend(handle, target)
    raise UserError(f"cannot evaluate a model of kind '{handle.kind}'")
