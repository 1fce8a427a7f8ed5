"""Score one model with an evaluator config: every metric, through one backend, cached by content.

Classification with a generative model: each row's prompt is what precedes the label in the
formatted text (the text template's part before its last field, or the chat prompt), and each
candidate label is scored by the sum of its tokens' log-probabilities after that prompt (plus
EOS when ``score_eos``); the highest wins.  ``scoring: generate`` instead greedy-generates and
compares the text.  Candidates are ``user_config.labels`` or the label column's distinct values.

The built-in metrics are defined at the bottom, each with one ``register_metric`` call next to the
function computing it (``honed.evaluate.metrics`` holds the registry).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.data.batches import dummy_past, timing_batch, timing_batch_size
from honed.data.config import DataConfig, use_problem
from honed.data.formatting import (
    Formatted,
    answer_split,
    check_columns,
    encode_texts,
    format_examples,
    text_pairs,
)
from honed.data.sources import load_rows
from honed.errors import DataError, UserError
from honed.evaluate.backends import Backend, open_backend
from honed.evaluate.metrics import (
    MetricDef,
    SubType,
    auroc,
    classification_scores,
    get_metric,
    perplexity,
    register_metric,
    text_scores,
    timing_stats,
)
from honed.evaluate.past_timing import with_past
from honed.models.handle import ModelHandle
from honed.util.accelerator import Accelerator
from honed.util.context import ProgressTask
from honed.util.fs import atomic_write_text
from honed.util.hashing import cache_key, code_fingerprint, environment, library_versions
from honed.util.monitor import PeakMemory
from honed.util.user_script import user_function

if TYPE_CHECKING:  # the schema validates against the registry defined here: annotations only
    from honed.evaluate.config import EvaluatorConfig, MetricConfig

Results = dict[str, float]
Progress = Callable[[str, float | None], ProgressTask]
"""Opens a progress bar: ``(description, total) -> ProgressTask`` (the engine's ``RunDisplay.bar``; handed in, since
this layer sits below the engine)."""

SCORE_CHUNK = 16
"""Sequences per forward call of ``HFRuntime.score_many``: label scoring hands it whole multiples of this, so
scoring in parts (to move a progress bar) batches the sequences exactly as one call over all of them would."""

TEXT_SUB_TYPES = {"exact_match", "relaxed_accuracy", "word_sort_ratio", "wer"}
SCORE_SUB_TYPES = {"auroc", "auc"}
"""Accuracy sub types that need each label's score (log-likelihood or classifier logit), not just the prediction."""


class _Session:
    """Lazily opened backend and loaded rows shared by the metrics of one evaluation."""

    def __init__(self, handle: ModelHandle, data_configs: dict[str, DataConfig], target: Accelerator,
                 cache_dir: Path | None, clock: Callable[[], float], reference: ModelHandle | None = None,
                 progress: Progress | None = None) -> None:
        self.handle, self.data_configs, self.target, self.cache_dir = handle, data_configs, target, cache_dir
        self.reference = reference
        """The model fidelity metrics compare with when their config names none."""
        self.clock = clock
        self.progress = progress
        self._backend: Backend | None = None
        self._rows: dict[str, Any] = {}
        self.memory: PeakMemory | None = None
        """Peak RSS sampled over the whole evaluation, when a whole-run metric (memory) asks for it."""
        self.memory_before = 0

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.handle, self.target)
        return self._backend

    def data(self, metric: MetricConfig) -> tuple[DataConfig, Any]:
        name = metric.data_config
        if name is None:
            raise UserError(f"metric '{metric.name}' needs a data_config")
        if name not in self.data_configs:
            raise UserError(f"metric '{metric.name}': no data config named '{name}'; add it under data_configs")
        cfg = self.data_configs[name]
        problem = use_problem(cfg, metric.type)  # dummy data, user dataloader / post-processing (honed.data)
        if problem:
            raise UserError(f"metric '{metric.name}': {problem}")
        if name not in self._rows:
            ds = load_rows(cfg, cache_dir=self.cache_dir)
            check_columns(cfg, ds)
            self._rows[name] = ds
        ds = self._rows[name]
        limit = [n for n in (metric.user_config.max_samples, cfg.pre_process_data_config.max_samples) if n]
        if limit and min(limit) < len(ds):
            ds = ds.select(range(min(limit)))
        return cfg, ds

    def examples(self, metric: MetricConfig, completion: bool = True) -> tuple[DataConfig, Any, list[Formatted]]:
        cfg, ds = self.data(metric)
        if completion:
            pp = cfg.pre_process_data_config.model_copy(update={"completion_only": True})
            cfg = cfg.model_copy(update={"pre_process_data_config": pp})
        tok = self.backend.tokenizer if cfg.pre_process_data_config.chat_template else None
        return cfg, ds, format_examples(cfg, ds, tok)

    @contextlib.contextmanager
    def bar(self, metric: MetricConfig, what: str, rows: int) -> Iterator[ProgressTask]:
        """A bar over the ``rows`` a data metric scores (silent without a progress factory), closed however the
        metric ends: an evaluation of a big data config takes as long as a fine-tune and must not look hung."""
        task = self.progress(f"{metric.name}: {what}", rows) if self.progress is not None else ProgressTask()
        try:
            yield task
        finally:
            task.close()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def _label_col(cfg: DataConfig, metric: MetricConfig) -> str:
    """The metric's label_col, else the data's label_cols / label_col, else "label" for input_cols (Olive's
    huggingface_pre_process default), else the field the template's answer starts with."""
    if metric.user_config.label_col:
        return metric.user_config.label_col
    pp = cfg.pre_process_data_config
    if pp.label_col:
        return pp.label_col
    if pp.label_cols:
        return pp.label_cols[0]
    if pp.input_cols:
        return "label"
    if pp.text_template:
        _, name, _ = answer_split(pp.text_template)
        if name:
            return name
    if pp.chat_messages:
        from honed.data.formatting import template_fields

        fields = template_fields(pp.chat_messages[-1].content)
        if fields:
            return fields[-1]
    raise UserError(f"metric '{metric.name}': cannot tell which column holds the label; set "
                    "user_config.label_col")


def _tokens(backend: Backend, prompt: str, answer: str, add_special: bool, eos: bool) -> tuple[list[int], int]:
    """Token ids of prompt+answer tokenized together (as in training) and the first answer token's index."""
    tok = backend.tokenizer
    text = prompt + answer
    enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=bool(getattr(tok, "is_fast", False)))
    ids = list(enc["input_ids"])
    if "offset_mapping" in enc:
        start = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prompt)), len(ids))
    else:
        start = len(tok(prompt, add_special_tokens=add_special)["input_ids"])
    if eos and tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    return ids, max(start, 1)


def _class_columns(labels: list[str], uc: Any, id2label: dict[Any, Any], named: bool, metric: str) -> list[int]:
    """The classifier's class index of each label (the inverse of how predictions are named)."""
    if uc.labels:
        return list(range(len(labels)))
    if named:
        inverse = {str(v): int(k) for k, v in id2label.items()}
        return [inverse[lab] for lab in labels]
    if all(lab.isdigit() for lab in labels):
        return [int(lab) for lab in labels]
    raise UserError(f"metric '{metric}': auroc cannot tell which class of the classifier each label is; set "
                    "user_config.labels in class order")


def _softmax_rows(rows: Any) -> list[list[float]]:
    import numpy as np

    x = np.asarray(rows, dtype=np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return (x / x.sum(axis=-1, keepdims=True)).tolist()


def _accuracy(s: _Session, metric: MetricConfig) -> Results:
    """Olive's accuracy sub types: classification scores over the predicted labels, auroc over each
    row's softmax of label scores (classifier logits or label log-likelihoods), exact_match /
    relaxed_accuracy / word_sort_ratio / wer over the predicted text, perplexity over the same rows."""
    wanted = {sub.name for sub in metric.sub_types}
    out: Results = {}
    if "perplexity" in wanted:
        out["perplexity"] = _perplexity(s, metric)["perplexity"]
    if wanted <= {"perplexity"}:
        return out
    out.update(_labels(s, metric, wanted))
    return out


def _labels(s: _Session, metric: MetricConfig, wanted: set[str]) -> Results:
    uc = metric.user_config
    cfg, ds = s.data(metric)
    backend = s.backend
    # a classifier reads input_cols' text pair as a pair; every other model gets formatted text (a pair is an
    # error there, naming text_template)
    pairs = text_pairs(cfg, ds) if backend.is_classifier else None
    examples: list[Formatted] = [] if pairs is not None else s.examples(metric)[2]
    col = _label_col(cfg, metric)
    if col not in ds.column_names:
        raise DataError(f"metric '{metric.name}': label column '{col}' not in the data; columns are {ds.column_names}")
    truth = [str(v) for v in ds[col]]
    labels = list(uc.labels) if uc.labels else list(dict.fromkeys(truth))
    pp = cfg.pre_process_data_config
    add_special = pp.add_special_tokens and not pp.chat_template
    preds: list[str] = []
    probs: list[list[float]] = []  # per row, each label's probability (auroc)
    if backend.is_classifier:
        # class k is labels[k] when labels are given, else the model's id2label name when the data uses
        # those names, else the number k itself
        id2label = getattr(getattr(backend, "config", None), "id2label", None) or {}
        named = bool(id2label) and set(truth) <= {str(v) for v in id2label.values()}
        columns = _class_columns(labels, uc, id2label, named, metric.name) if wanted & SCORE_SUB_TYPES else []
        inputs = pairs if pairs is not None else [e.prompt or e.text for e in examples]
        with s.bar(metric, "classifying", len(inputs)) as bar:
            for i in range(0, len(inputs), uc.batch_size):
                logits = backend.class_logits(inputs[i:i + uc.batch_size])  # type: ignore[arg-type]
                for row in logits:
                    k = int(row.argmax())
                    preds.append(labels[k] if uc.labels else str(id2label[k]) if named else str(k))
                if columns:
                    probs += [[p[c] for c in columns] for p in _softmax_rows(logits)]
                bar.advance(len(logits))
        return _label_scores(metric, wanted, truth, preds, labels, probs)
    if uc.scoring == "generate":
        with s.bar(metric, "generating", len(examples)) as bar:
            for ex, _ in zip(examples, truth, strict=True):
                ids, _ = _tokens(backend, ex.prompt, "", add_special, False)
                text = backend.tokenizer.decode(backend.generate(ids, uc.max_new_tokens), skip_special_tokens=True)
                preds.append(text.strip().splitlines()[0].strip() if text.strip() else "")
                bar.advance(1)
        return _label_scores(metric, wanted, truth, preds, labels, probs)
    seqs: list[tuple[list[int], int]] = []
    for ex, true in zip(examples, truth, strict=True):
        if true not in ex.answer:
            raise DataError(f"row {ex.index}: label '{true}' does not appear in the formatted answer {ex.answer!r}; "
                            "set user_config.label_col to the column the template ends with")
        for cand in labels:
            seqs.append(_tokens(backend, ex.prompt, ex.answer.replace(true, cand, 1), add_special,
                                uc.score_eos and pp.append_eos))
    if seqs:  # one log-likelihood per (row, candidate label), batched by the backend
        scores = _score_rows(s, metric, seqs, len(labels))
        for r in range(len(examples)):
            row = scores[r * len(labels):(r + 1) * len(labels)]
            preds.append(labels[max(range(len(labels)), key=row.__getitem__)])
            probs.append(_softmax_rows([row])[0])
    return _label_scores(metric, wanted, truth, preds, labels, probs)


def _score_rows(s: _Session, metric: MetricConfig, seqs: list[tuple[list[int], int]], per_row: int) -> list[float]:
    """``score_many`` over each row's ``per_row`` candidate sequences, in parts of whole rows that fill whole
    ``SCORE_CHUNK`` batches (the same batches, so the same scores, as one call), moving a bar by rows."""
    rows = len(seqs) // per_row
    step = SCORE_CHUNK // math.gcd(SCORE_CHUNK, per_row)  # the fewest rows whose sequences fill whole batches
    scores: list[float] = []
    with s.bar(metric, "scoring labels", rows) as bar:
        for r in range(0, rows, step):
            scores += s.backend.score_many(seqs[r * per_row:(r + step) * per_row])
            bar.advance(min(step, rows - r))
    return scores


def _counted(items: Iterable[Any], bar: ProgressTask) -> Iterator[Any]:
    """``items``, moving ``bar`` by one as each is done (when the consumer asks for the next)."""
    for item in items:
        yield item
        bar.advance(1)


def _label_scores(metric: MetricConfig, wanted: set[str], truth: list[str], preds: list[str], labels: list[str],
                  probs: list[list[float]]) -> Results:
    out: Results = dict(classification_scores(truth, preds, labels))
    if wanted & TEXT_SUB_TYPES:
        opts = {sub.name: sub.metric_config or {} for sub in metric.sub_types}
        out.update(text_scores(truth, preds, tolerance=float(opts.get("relaxed_accuracy", {}).get("tolerance", 0.05)),
                               normalize_wer=bool(opts.get("wer", {}).get("normalize", True))))
    if wanted & SCORE_SUB_TYPES:
        if len(labels) < 2:
            raise UserError(f"metric '{metric.name}': auroc needs at least two labels; the data has {labels}")
        out["auroc"] = auroc(truth, probs, labels)
    return out


def _perplexity(s: _Session, metric: MetricConfig) -> Results:
    cfg, _, examples = s.examples(metric, completion=False)
    pp = cfg.pre_process_data_config
    add_special = pp.add_special_tokens and not pp.chat_template
    total, count = 0.0, 0
    with s.bar(metric, "perplexity", len(examples)) as bar:
        for ex in _counted(examples, bar):
            ids, _ = _tokens(s.backend, "", ex.text, add_special, pp.append_eos)
            lps = s.backend.score(ids, 1)
            total -= sum(lps)
            count += len(lps)
    return perplexity(total, count)


def reference_handle(path: str, cache_dir: Path | None) -> ModelHandle:
    """The handle of a fidelity metric's ``user_config.reference_model``: an ONNX or genai model on disk by its
    files, anything else as ``model_path`` resolves (a GGUF file converted once, into the cache)."""
    from honed.models.onnx_runtime import model_kind
    from honed.models.resolve import resolve_model

    local = Path(path).expanduser()
    if local.exists() and model_kind(local) in ("genai", "onnx"):
        return ModelHandle(kind=model_kind(local), path=str(local))  # type: ignore[arg-type]
    handle = resolve_model(path)
    gguf = handle.attributes.get("gguf_file")
    if gguf:
        if cache_dir is None:
            raise UserError(f"user_config.reference_model '{path}' is a GGUF file, which needs a cache to convert "
                            "into; give its Hugging Face folder instead")
        from honed.models.gguf import gguf_to_hf

        handle = handle.model_copy(update={"path": str(gguf_to_hf(Path(gguf), cache_dir))})
    return handle


def _reference_of(s: _Session, metric: MetricConfig) -> ModelHandle:
    path = metric.user_config.reference_model
    if path is not None:
        return reference_handle(path, s.cache_dir)
    if s.reference is None:
        raise UserError(f"metric '{metric.name}': no model to compare with; set user_config.reference_model to its "
                        "path (e.g. the workflow's input model)")
    return s.reference


def _fidelity(s: _Session, metric: MetricConfig) -> Results:
    """The candidate's next-token distributions against the reference's on the data's formatted rows, tokenized
    by the candidate's tokenizer as the perplexity metric does (``honed.models.fidelity``)."""
    from honed.models.fidelity import compare_runtimes
    from honed.models.runtime import open_runtime

    cfg, _, examples = s.examples(metric, completion=False)
    pp = cfg.pre_process_data_config
    add_special = pp.add_special_tokens and not pp.chat_template
    seqs = [_tokens(s.backend, "", ex.text, add_special, pp.append_eos)[0] for ex in examples]
    reference = open_runtime(_reference_of(s, metric), s.target)  # an HF model in its stored dtype
    try:
        with s.bar(metric, "fidelity", len(seqs)) as bar:
            result = compare_runtimes(reference, s.backend, _counted(seqs, bar))
    finally:
        reference.close()
    return {"kl_mean": result.kl_mean, "kl_p99": result.kl_p99, "top1_agreement": result.top1_agreement,
            "perplexity": result.perplexity, "reference_perplexity": result.reference_perplexity}


def _timing_input(s: _Session, metric: MetricConfig) -> list[list[int]]:
    """A batch of equal-length prompts: from the data when given, else the configured prompt."""
    uc = metric.user_config
    tok = s.backend.tokenizer
    cfg = s.data_configs.get(metric.data_config) if metric.data_config else None
    if cfg is not None:  # dummy data, a user dataloader, tokenized rows, dataloader_config.batch_size
        batch = timing_batch(cfg, tok, uc.batch_size, s.cache_dir)
        if batch is not None:
            past = dummy_past(cfg, tok, len(batch))  # TransformersTokenDummyDataContainer: a KV cache first
            return with_past(s.backend, past, batch) if past else batch
        uc = uc.model_copy(update={"batch_size": timing_batch_size(cfg, uc.batch_size)})
    texts: list[str] | list[tuple[str, str]]
    pairs = text_pairs(*s.data(metric)) if cfg is not None and s.backend.is_classifier else None
    if pairs is not None:  # input_cols' text pair, tokenized as the classifier reads it
        texts = pairs[: uc.batch_size]
    elif metric.data_config:
        _, _, examples = s.examples(metric)
        texts = [e.prompt or e.text for e in examples[: uc.batch_size]]
    else:
        texts = [uc.prompt] * uc.batch_size
    seqs = [list(ids) for ids in encode_texts(tok, texts)["input_ids"]] if texts else []
    n = min(len(x) for x in seqs)
    return [x[:n] for x in seqs]


def _timed(s: _Session, metric: MetricConfig, fn: Callable[[], Any]) -> list[float]:
    uc = metric.user_config
    for _ in range(uc.warmup_num):
        fn()
    times = []
    for _ in range(uc.repeat_test_num):
        t0 = s.clock()
        fn()
        times.append(s.clock() - t0)
        if uc.sleep_num:
            time.sleep(uc.sleep_num)
    return times


def _latency(s: _Session, metric: MetricConfig) -> Results:
    batch = _timing_input(s, metric)
    times = _timed(s, metric, getattr(batch, "call", None) or (lambda: s.backend.forward(batch)))
    return {k: v * 1000 for k, v in timing_stats(times).items()}  # milliseconds


def _throughput(s: _Session, metric: MetricConfig) -> Results:
    batch = _timing_input(s, metric)
    wanted = {x.name for x in metric.sub_types}
    out: Results = {}
    if wanted - {"tokens_per_s"}:
        times = _timed(s, metric, getattr(batch, "call", None) or (lambda: s.backend.forward(batch)))
        stats = timing_stats([len(batch) / t for t in times if t > 0])
        out.update(stats)
    if "tokens_per_s" in wanted:
        n = metric.user_config.max_new_tokens
        rates = []
        for _ in range(max(1, metric.user_config.repeat_test_num // 5)):
            t0 = s.clock()
            new = s.backend.generate(batch[0], n)
            rates.append(len(new) / max(s.clock() - t0, 1e-9))
        out["tokens_per_s"] = sum(rates) / len(rates)
    return out


def model_size_mb(handle: ModelHandle) -> float:
    """Bytes of the model's files (and of its base, for an adapter), in MiB."""
    files = handle.files() + (handle.base.files() if handle.base else [])
    return sum(f.stat().st_size for f in files) / 2**20


def _size(s: _Session, metric: MetricConfig) -> Results:
    mb = model_size_mb(s.handle)
    return {"mb": mb, "bytes": mb * 2**20}


def _custom(s: _Session, metric: MetricConfig) -> Results:
    uc = metric.user_config
    assert uc.user_script and uc.evaluate_func  # the config validator requires both
    # The one user-script loader: imported once per content, errors name the file and the key.
    func = user_function(uc.user_script, uc.evaluate_func, f"metric '{metric.name}': user_config.evaluate_func")
    rows = s.data(metric)[1].to_list() if metric.data_config else None
    value = func(s.handle, rows, **(uc.evaluate_func_kwargs or {}))
    if isinstance(value, int | float):
        return {metric.sub_types[0].name: float(value)}
    if isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}
    raise UserError(f"metric '{metric.name}': {uc.evaluate_func} returned {type(value).__name__}; return a number "
                    "or a dict of numbers")


def _memory(s: _Session, metric: MetricConfig) -> Results:
    """Peak RSS of this process over the whole evaluation, and its growth from the start, in MiB."""
    assert s.memory is not None  # evaluate_model samples it for a whole-run metric
    return {"peak_rss_mb": round(s.memory.peak / 2**20, 1),
            "delta_rss_mb": round((s.memory.peak - s.memory_before) / 2**20, 1)}


def _keyed(metric: MetricConfig, values: Results) -> Results:
    """'<metric>-<sub type>' -> value for each configured sub type; an alias (Olive 0.2's auc) takes its sub
    type's value and keeps the name the config uses."""
    defn = get_metric(metric.type)
    out: Results = {}
    for sub in metric.sub_types:
        known = defn.sub_type(sub.name) if defn else None
        name = sub.name if sub.name in values or known is None else known.name
        if name in values:
            out[f"{metric.name}-{sub.name}"] = float(values[name])
    return out


def evaluate_model(handle: ModelHandle, cfg: EvaluatorConfig, data_configs: dict[str, DataConfig] | None = None,
                   target: Accelerator | None = None, cache_dir: Path | None = None,
                   clock: Callable[[], float] = time.perf_counter, reference: ModelHandle | None = None,
                   progress: Progress | None = None) -> Results:
    """Every metric of ``cfg`` on ``handle``, keyed '<metric>-<sub type>'; ``reference`` is the model fidelity
    metrics compare with when they name none (``user_config.reference_model``).

    ``progress`` opens one bar per metric that scores a data config's rows (accuracy, perplexity, fidelity),
    counting rows; latency and throughput (bounded by ``repeat_test_num``) get none, so no display refresh competes
    with the calls they time."""
    s = _Session(handle, data_configs or {}, target or Accelerator(), cache_dir, clock, reference, progress)
    results: Results = {}
    defs = {m.type: get_metric(m.type) for m in cfg.metrics}
    unknown = sorted(t for t, d in defs.items() if d is None)
    if unknown:  # registered when the config was validated, unregistered since
        raise UserError(f"metric type(s) {', '.join(unknown)} are not registered")
    last = [m for m in cfg.metrics if defs[m.type].whole_run]  # type: ignore[union-attr]
    try:
        # Sampling RSS costs CPU (and the GIL) while latency is being timed: only when asked for.
        with PeakMemory(interval=0.02) if last else contextlib.nullcontext() as mem:
            s.memory, s.memory_before = mem, (mem.peak if mem else 0)
            for metric in cfg.metrics:
                if not defs[metric.type].whole_run:  # type: ignore[union-attr]
                    results.update(_keyed(metric, defs[metric.type].compute(s, metric)))  # type: ignore[union-attr]
            if cfg.is_lm:  # lm-eval tasks (Olive's LMEvaluator), on the same backend when it fits
                from honed.evaluate.lmeval import evaluate_tasks

                tasks = evaluate_tasks(handle, cfg, s.target, lambda: s.backend)
                clash = sorted(set(tasks) & set(results))
                if clash:
                    raise UserError(f"LMEvaluator results {', '.join(clash)} clash with metric results of the same "
                                    "name; rename the metric")
                results.update(tasks)
            if last and s._backend is None:  # a whole-run metric alone: load and run the model once
                s.backend.forward([list(s.backend.tokenizer(last[0].user_config.prompt)["input_ids"])])
    finally:
        s.close()
    for metric in last:
        results.update(_keyed(metric, defs[metric.type].compute(s, metric)))  # type: ignore[union-attr]
    return results


EVAL_LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "onnxruntime", "onnxruntime-genai")
"""Libraries whose versions enter the evaluation key (they load and run the models being scored)."""


def _reference_ids(cfg: EvaluatorConfig, reference: ModelHandle | None) -> list[str]:
    """Identity of each fidelity metric's reference: a local reference_model by content, else its name (hub id),
    else the handed reference's id."""
    from honed.util.hashing import hash_path

    out = []
    for m in cfg.metrics:
        if m.type != "fidelity":
            continue
        path = m.user_config.reference_model
        if path is None:
            out.append((reference.id or reference.path) if reference is not None else "")
        else:
            local = Path(path).expanduser()
            out.append(hash_path(local) if local.exists() else path)
    return out


def eval_key(model_id: str, cfg: EvaluatorConfig, data_configs: dict[str, DataConfig], target: Accelerator,
             reference: ModelHandle | None = None) -> str:
    """Key of the evaluation cache (``util.hashing.cache_key``): the model and the data it reads by content,
    the evaluator config and target, this module's code with all it imports (backends, runtimes, data
    formatting: the template and label code), the libraries' versions, and a fidelity metric's reference."""
    from honed.data.build import fingerprint

    used = {m.data_config for m in cfg.metrics if m.data_config}
    inputs: dict[str, Any] = {"model": model_id,
                              "data": {n: fingerprint(data_configs[n]) for n in sorted(used) if n in data_configs}}
    if cfg.is_lm:  # lm-eval's version and the task YAMLs' data files, by content
        from honed.evaluate.lmeval import fingerprint as lm_fingerprint

        inputs["lm_eval"] = lm_fingerprint(cfg)
    references = _reference_ids(cfg, reference)
    if references:  # only then: other evaluations keep their keys
        inputs["references"] = references
    return cache_key("evaluation", inputs=inputs,
                     config={"evaluator": cfg.model_dump(mode="json"), "target": target.model_dump()},
                     code=code_fingerprint(__name__), environment=environment(library_versions(EVAL_LIBRARIES)))


def evaluate_cached(handle: ModelHandle, cfg: EvaluatorConfig, data_configs: dict[str, DataConfig],
                    target: Accelerator, cache_root: Path, reference: ModelHandle | None = None,
                    progress: Progress | None = None) -> tuple[Results, bool]:
    """``evaluate_model`` through ``cache_root/evals/<key>.json``; (results, was cached).  ``progress`` as there (not
    part of the key)."""
    key = eval_key(handle.id or handle.path, cfg, data_configs, target, reference)
    path = Path(cache_root) / "evals" / f"{key}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None  # damaged: a miss, computed again below
        if isinstance(stored, dict) and isinstance(stored.get("results"), dict):
            return stored["results"], True
    results = evaluate_model(handle, cfg, data_configs, target, cache_dir=Path(cache_root), reference=reference,
                             progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"model": handle.id, "results": results, "created": time.time()}, indent=2,
                                       sort_keys=True))
    return results, False


# ---- the built-in metrics: one definition each -------------------------------------------------------------
# A new metric is one more register_metric call: the schema, its JSON Schema, `honed evaluate` and
# docs/config-reference.md (python scripts/gen_docs.py) take names, directions and units from here.

def _check_accuracy(metric: MetricConfig) -> None:
    scored = [s.name for s in metric.sub_types if s.name in SCORE_SUB_TYPES]
    if scored and metric.user_config.scoring == "generate":
        raise ValueError(f"metric '{metric.name}': {scored[0]} ranks each label's score, which greedy generation "
                         "does not give; set user_config.scoring to loglikelihood")


def _check_custom(metric: MetricConfig) -> None:
    if not (metric.user_config.user_script and metric.user_config.evaluate_func):
        raise ValueError(f"metric '{metric.name}': a custom metric needs user_config.user_script and evaluate_func")


_FRACTION = "fraction"  # 0 to 1
_PERCENTILES = (("avg", "mean"), ("max", "largest"), ("min", "smallest"), ("p50", "median"),
                ("p75", "75th percentile"), ("p90", "90th percentile"), ("p95", "95th percentile"),
                ("p99", "99th percentile"), ("p999", "99.9th percentile"))

register_metric(MetricDef(
    name="accuracy", compute=_accuracy, needs_data=True, check=_check_accuracy,
    description="Predicted labels (each label's log-likelihood after the prompt, a classifier's logits, or greedy "
    "generation) against the data's label column.",
    sub_types=(
        SubType("accuracy_score", True, _FRACTION, "share of rows whose predicted label is right", default=True,
                hf_names=("accuracy",)),
        SubType("f1_score", True, _FRACTION, "macro-averaged F1 over the labels", hf_names=("f1",)),
        SubType("precision", True, _FRACTION, "macro-averaged precision", hf_names=("precision",)),
        SubType("recall", True, _FRACTION, "macro-averaged recall", hf_names=("recall",)),
        SubType("auroc", True, _FRACTION, "one-vs-rest AUROC over each row's softmax of label scores",
                aliases=("auc",)),
        SubType("perplexity", False, "exp(nats/token)", "perplexity of the same rows' full text"),
        SubType("wer", False, "errors per reference word", "word error rate of the predicted text",
                options={"normalize": bool}),
        SubType("exact_match", True, _FRACTION, "predicted text equals the label", hf_names=("exact_match",)),
        SubType("relaxed_accuracy", True, _FRACTION, "exact match, or numbers within a relative tolerance",
                options={"tolerance": (int, float)}),
        SubType("word_sort_ratio", True, _FRACTION, "similarity of the sorted words of prediction and label"),
    ),
    refused={"rtfx": "rtfx is the real-time factor of speech recognition (seconds of audio per second of "
             "inference) and honed evaluates text models only; measure speed with a throughput metric (tokens_per_s)"},
    cli=("accuracy_score", "f1_score", "precision", "recall"),
))

register_metric(MetricDef(
    name="perplexity", compute=_perplexity, needs_data=True,
    description="Perplexity of the data's formatted text (every token after the first).",
    sub_types=(SubType("perplexity", False, "exp(nats/token)", "exp of the mean NLL", default=True),
               SubType("loss", False, "nats/token", "mean negative log-likelihood per predicted token")),
))

register_metric(MetricDef(
    name="latency", compute=_latency,
    description="Time of one forward call on a batch (the data's first batch, else user_config.prompt), over "
    "repeat_test_num timed runs after warmup_num untimed ones.",
    sub_types=tuple(SubType(n, False, "ms", f"{what} time of a forward call", default=n == "avg")
                    for n, what in _PERCENTILES),
    cli=("avg", "p50", "p90", "p99"),
))

register_metric(MetricDef(
    name="throughput", compute=_throughput,
    description="Sequences per second of forward calls on the timed batch (as latency), and generated tokens per "
    "second (tokens_per_s, greedy, max_new_tokens).",
    sub_types=(*(SubType(n, True, "samples/s", f"{what} rate of sequences per forward call", default=n == "avg")
                 for n, what in _PERCENTILES),
               SubType("tokens_per_s", True, "tokens/s", "new tokens per second of greedy generation")),
    cli=("avg", "tokens_per_s"),
))

register_metric(MetricDef(
    name="size_on_disk", compute=_size,
    description="Bytes of the model's files (and of its base model, for an adapter).",
    sub_types=(SubType("mb", False, "MiB", "size in MiB (2^20 bytes)", default=True),
               SubType("bytes", False, "bytes", "size in bytes")),
))

register_metric(MetricDef(
    name="memory", compute=_memory, whole_run=True,
    description="Resident memory of this process while the evaluator's other metrics run (loads and runs the "
    "model once when alone).",
    sub_types=(SubType("peak_rss_mb", False, "MiB", "peak RSS, in MiB (2^20 bytes)", default=True),
               SubType("delta_rss_mb", False, "MiB", "peak RSS minus RSS at the start, in MiB (2^20 bytes)")),
    cli=("peak_rss_mb", "delta_rss_mb"),
))

register_metric(MetricDef(
    name="custom", compute=_custom, open_sub_types=True, check=_check_custom,
    description="user_config.evaluate_func(model, rows, **evaluate_func_kwargs) in user_config.user_script: a "
    "number or a dict of numbers; sub_types name them, each with higher_is_better.",
))

register_metric(MetricDef(
    name="fidelity", compute=_fidelity, needs_data=True,
    description="The model's next-token distributions against a reference model's (user_config.reference_model), "
    "teacher-forced at every position of the data's formatted rows (llama.cpp's perplexity --kl-divergence "
    "statistics).",
    sub_types=(SubType("kl_mean", False, "nats/token", "mean KL(reference || model) per position", default=True),
               SubType("kl_p99", False, "nats/token", "99th percentile of the per-position KL", default=True),
               SubType("top1_agreement", True, _FRACTION, "share of positions whose most likely token is the "
                       "reference's", default=True),
               SubType("perplexity", False, "exp(nats/token)", "the model's perplexity on the same rows"),
               SubType("reference_perplexity", False, "exp(nats/token)", "the reference's perplexity on the same "
                       "rows")),
))
