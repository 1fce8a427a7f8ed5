"""A lean training loop for causal LMs (LoRA adapters or full weights).

Why not the Hugging Face ``Trainer``: on a CPU or one GPU most of a small model's step
goes to the output head and padding.  This loop

* computes the output head only where a label is (completion-only loss trains on a few
  tokens per row, so the ``vocab x seq`` logits are mostly never needed),
* batches sequences of similar length and pads each batch only to its own longest row,
* on CPU samples LoRA dropout sparsely (``honed.training.dropout``: same distribution, a fraction
  of the random draws) and runs each plain LoRA layer as one autograd node
  (``honed.training.fused_lora``: peft's maths, fewer passes over the activations), and lets a
  bf16 model attend in fp32 (``honed.training.attention``: the bf16 attention backward is slow there),
* normalises the loss by the label tokens of the whole optimizer step, so gradient
  accumulation gives the same update as one big batch,
* checkpoints the trainable weights, optimizer, scheduler, RNG and data position every
  ``save_steps`` into the work dir and resumes from the newest one when rerun: with everything the rest of
  the run depends on (the best weights for ``load_best_model_at_end``, early-stopping counters, the
  unlogged part of the train-loss window, every RNG), so a killed and rerun fine-tune ends with the weights
  and metrics of one that was never interrupted (``tests/test_training_resume.py``),
* runs data parallel when launched in several processes (``training_args.num_processes``, see
  ``honed.training.distributed``): every process sees the same optimizer steps, takes every N-th row of each
  micro-batch, and the step's label-token count, loss and gradients are summed over the processes, so the update
  is the one a single process computes (within float rounding of the sums' order).  LoRA dropout masks are drawn
  per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from honed.data.collate import Collator
from honed.errors import UserError
from honed.training import distributed as ddp
from honed.training.args import PROCESS_FIELDS, TrainingArgs

log = logging.getLogger("honed")

IGNORE_INDEX = -100
CHECKPOINT_FORMAT = 2
"""Mixed into the run fingerprint: a checkpoint written by an older layout (no best weights, no loss window)
is never resumed, since resuming it could not be exact."""
BEST_FILE = "best.safetensors"
"""The weights of the best evaluation so far, in a checkpoint of a run with ``load_best_model_at_end``."""
# Architectures whose logits are exactly ``lm_head(last_hidden_state)``: the loop may apply the head
# to the labelled positions only.  Others (logit soft-capping, logit scaling) run the full forward.
SPARSE_HEAD_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "phi", "gemma", "olmo", "olmo2", "smollm3", "starcoder2"}
)


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint.

    Everything the rest of the run or its reported metrics depend on lives here (or in the checkpoint's
    tensors), never only in a local of ``train``: a resumed run must continue exactly as the killed one would have.
    """

    global_step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    """Micro-batches of ``epoch`` already consumed."""
    tokens_seen: int = 0
    train_seconds: float = 0.0
    best_eval_loss: float | None = None
    """Lowest eval loss so far (nats per label token), lowered only by more than ``early_stopping_threshold``."""
    best_step: int | None = None
    """The step whose evaluation gave ``best_eval_loss`` (its weights are the checkpoint's best weights)."""
    bad_evals: int = 0
    resumed_from: int = 0
    should_stop: bool = False
    first_loss: float | None = None
    """Train loss of step 1 (nats per label token), reported as ``train_loss_first_step``."""
    last_train_loss: float | None = None
    """The latest logged train loss (nats per label token), reported as ``train_loss``."""
    last_eval_loss: float | None = None
    """The latest eval loss (nats per label token), reported as ``eval_loss``."""
    window_loss: float = 0.0
    """Cross-entropy summed over the label tokens of the steps since the last logged train loss (nats); the
    next log divides it by ``window_label_tokens``, so a run resumed inside the window logs the same loss."""
    window_label_tokens: int = 0
    """Label tokens of those steps."""
    log_history: list[dict[str, float]] = field(default_factory=list)


class Callback:
    """Hooks into the loop (tests use them to simulate a crash; users to log elsewhere)."""

    def on_step_end(self, state: TrainState, args: TrainingArgs) -> None:
        """After each optimizer step (and after a checkpoint due at that step)."""

    def on_log(self, state: TrainState, logs: dict[str, float]) -> None:
        """After train or eval metrics were computed."""


@dataclass
class TrainResult:
    """What a finished run reports."""

    state: TrainState
    metrics: dict[str, float]


# ----------------------------------------------------------------------------- data


def as_rows(data: Any) -> list[dict[str, list[int]]]:
    """Rows of token lists from a ``datasets.Dataset``, a dict of columns or a list of dicts."""
    if data is None:
        return []
    if isinstance(data, list):
        return data
    cols = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    keep = [k for k in ("input_ids", "attention_mask", "labels", "position_ids") if k in cols]
    n = len(cols["input_ids"])
    return [{k: cols[k][i] for k in keep} for i in range(n)]


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """The micro-batches (row indices) of one epoch, in a seeded order.

    With ``group_by_length`` rows are shuffled, cut into mega-batches of 50 batches, each sorted
    by length and split (as HF's LengthGroupedSampler), so padding is small while the order stays
    random; the longest batch runs first so an out-of-memory shows at once.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    mega = batch_size * 50
    batches: list[list[int]] = []
    for m in range(0, len(idx), mega):
        chunk = sorted(idx[m : m + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if len(batches) > 1:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
        rest = batches[1:]
        rng.shuffle(rest)
        batches = [batches[0], *rest]
    return batches


def collate(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its own longest row (labels with -100).

    Packed rows carry restarting ``position_ids`` and no attention mask, which is how transformers
    keeps the rows of one block from attending to each other (see ``honed.data.Collator``).
    """
    return Collator(pad_id)(rows)


# ----------------------------------------------------------------------------- model pieces


def _causal_lm(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sparse_head_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) when logits are plain ``lm_head(hidden)``; None otherwise."""
    lm = _causal_lm(model)
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SPARSE_HEAD_TYPES:
        return None
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    try:
        decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is lm:
        return None
    return decoder, head


def loss_sum(model: Any, batch: dict[str, Any], parts: tuple[Any, Any] | None) -> tuple[Any, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there were."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**inputs, use_cache=False).last_hidden_state[:, :-1]
        logits = head(hidden[keep])
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][keep]
    loss = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return loss, n


# ----------------------------------------------------------------------------- checkpoints


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def canonical(value: Any) -> Any:
    """``json.dumps`` default that gives the same text in every process: sets (iterated in an order that
    depends on PYTHONHASHSEED) become sorted lists, anything else its ``str``."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: (type(v).__name__, str(v)))
    return str(value)


def fingerprint(args: TrainingArgs, extra: Any, rows: Sequence[dict[str, list[int]]]) -> str:
    """Identity of a run: a checkpoint of another run in the same work dir is not resumed.

    The same in every process (no set order, no object addresses), so a rerun resumes; the same for any
    ``num_processes`` (``PROCESS_FIELDS`` do not change the result), so a run resumes with another.
    """
    h = hashlib.sha256(f"checkpoint-format-{CHECKPOINT_FORMAT}".encode())
    h.update(args.model_dump_json(exclude=set(PROCESS_FIELDS)).encode())
    h.update(json.dumps(extra, sort_keys=True, default=canonical).encode())
    h.update(json.dumps([len(r["input_ids"]) for r in rows]).encode())
    if rows:
        h.update(json.dumps(rows[0]["input_ids"]).encode())
    return h.hexdigest()[:16]


def latest_checkpoint(ckpt_root: Path, fp: str) -> Path | None:
    """The newest complete checkpoint of this run, if any."""
    if not ckpt_root.is_dir():
        return None
    found = []
    for d in ckpt_root.glob("checkpoint-*"):
        meta = d / "state.json"
        if d.is_dir() and meta.exists():
            with contextlib.suppress(ValueError, OSError):
                if json.loads(meta.read_text()).get("fingerprint") == fp:
                    found.append((int(d.name.split("-")[1]), d))
    return max(found)[1] if found else None


def _previous_best(ckpt_root: Path, fp: str, best_step: int) -> Path | None:
    """The best-weights file of an earlier checkpoint of this run that holds step ``best_step``'s weights."""
    for d in ckpt_root.glob("checkpoint-*"):
        f = d / BEST_FILE
        with contextlib.suppress(ValueError, OSError):
            meta = json.loads((d / "state.json").read_text())
            if meta.get("fingerprint") == fp and meta["state"].get("best_step") == best_step and f.is_file():
                return f
    return None


def _write_best(tmp: Path, best: dict[str, Any], state: TrainState, ckpt_root: Path, fp: str) -> None:
    """Put the best weights into the checkpoint being written in ``tmp``.

    Why links: a full fine-tune's best weights are as large as the model.  When they are the weights of this
    very step (the checkpoint follows the evaluation of its step) or already sit in an earlier checkpoint of
    the run, the file is hard-linked (checkpoint files are never rewritten in place, and pruning an old
    checkpoint only drops its name); elsewhere, or where links fail, it is written out.
    """
    from safetensors.torch import save_file

    target = tmp / BEST_FILE
    if state.best_step == state.global_step:
        source: Path | None = tmp / "trainable.safetensors"
    else:
        source = _previous_best(ckpt_root, fp, state.best_step) if state.best_step is not None else None
    if source is not None:
        with contextlib.suppress(OSError):
            os.link(source, target)
            return
    save_file({n: t.detach().to("cpu").contiguous() for n, t in best.items()}, str(target))


def rng_state() -> dict[str, Any]:
    """This process's torch generators (LoRA dropout draws from them)."""
    import torch

    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def save_checkpoint(
    ckpt_root: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState, fp: str, limit: int,
    best: dict[str, Any] | None = None, rank_rngs: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp dir, then rename) and prune old ones.

    ``best``: the trainable weights of the best evaluation so far (``load_best_model_at_end``), saved beside
    the current ones so a resumed run ends with them too.  ``rank_rngs``: every process's ``rng_state()`` in a
    data-parallel run (written by rank 0 alone), so each rank resumes its own dropout stream.
    """
    import torch
    from safetensors.torch import save_file

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"checkpoint-{state.global_step}"
    tmp = ckpt_root / f".tmp-{state.global_step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {n: p.detach().to("cpu").contiguous() for n, p in _trainable(model).items()}
    save_file(weights, str(tmp / "trainable.safetensors"))
    if best is not None:
        _write_best(tmp, best, state, ckpt_root, fp)
    # Every generator a step draws from: torch's CPU one (LoRA dropout), CUDA's, and Python's (kept for
    # callbacks and libraries; the data order has its own seeded generator, see ``epoch_batches``).
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}
    if rank_rngs is not None:
        blob["rank_rng"] = rank_rngs
    torch.save(blob, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"fingerprint": fp, "state": asdict(state)}, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    olds = sorted(
        (int(d.name.split("-")[1]), d) for d in ckpt_root.glob("checkpoint-*") if d.is_dir() and d != final
    )
    for _, d in olds[: max(0, len(olds) - (limit - 1))]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, seed: int = 0
) -> tuple[TrainState, dict[str, Any] | None]:
    """Restore weights, optimizer, scheduler and RNG; return the saved state and the best weights, if saved
    (on the device and in the dtype of the model's parameters).

    In a data-parallel run each rank restores its own generators when the checkpoint was written by as many
    processes; otherwise rank 0 takes the saved one and the others reseed from ``seed`` and the step (their
    dropout masks then differ from an uninterrupted run's; with no dropout the run is the same).
    """
    import torch
    from safetensors.torch import load_file

    params = _trainable(model)

    def read(name: str) -> dict[str, Any]:
        weights = load_file(str(path / name))
        missing = set(params) - set(weights)
        if missing:
            raise RuntimeError(f"checkpoint {path} lacks {sorted(missing)[:3]} in {name}")
        return {n: weights[n].to(p.device, p.dtype) for n, p in params.items()}

    weights = read("trainable.safetensors")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    best = read(BEST_FILE) if (path / BEST_FILE).is_file() else None
    blob = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    rng = blob["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    saved = json.loads((path / "state.json").read_text())["state"]
    per_rank = blob.get("rank_rng")
    if per_rank is not None and len(per_rank) == ddp.world_size():
        torch.set_rng_state(per_rank[ddp.rank()]["torch"])
        if "cuda" in per_rank[ddp.rank()] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(per_rank[ddp.rank()]["cuda"])
    elif ddp.rank() > 0:
        torch.manual_seed(ddp.seed_for_rank(seed) + 7919 * int(saved["global_step"]))
    return TrainState(**saved), best


# ----------------------------------------------------------------------------- device helpers


@contextlib.contextmanager
def physical_core_threads() -> Iterator[None]:
    """Use one torch thread per physical core this process may use (hyper-threads slow GEMMs down; the
    affinity mask, cgroup quota and a worker's share count: ``honed.util.cpus``); restore afterwards.

    An explicit ``OMP_NUM_THREADS`` wins.
    """
    import torch

    from honed.util.cpus import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_optimizer(params: list[Any], args: TrainingArgs, device: str) -> Any:
    """The optimizer ``args.optim`` names; bitsandbytes ones only where CUDA is."""
    import torch

    name = args.optim
    betas = (args.adam_beta1, args.adam_beta2)
    if name in ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit"):
        if device.startswith("cuda"):
            import bitsandbytes as bnb

            cls = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}
            opt_cls = cls.get(name, bnb.optim.AdamW8bit)
            return opt_cls(params, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon,
                           weight_decay=args.weight_decay)
        log.warning("training_args.optim '%s' needs CUDA; using adamw_torch on %s (the same update, with "
                    "32-bit optimizer state)", name, device)
        name = "adamw_torch"
    if name == "sgd":
        return torch.optim.SGD(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    fused = device.startswith("cuda") or name == "adamw_torch_fused"
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon,
                             weight_decay=args.weight_decay, fused=fused or None, foreach=None if fused else True)


# ----------------------------------------------------------------------------- the loop


def eval_due(args: TrainingArgs, step: int, total_steps: int, end_of_epoch: bool, evaluated: bool) -> bool:
    """Whether the loop computes the eval loss after optimizer step ``step`` (1-based).

    transformers' ``DefaultFlowCallback`` rules, as the user's settings say them: ``steps`` at every multiple of
    ``eval_steps`` (``logging_steps`` when unset), with no extra evaluation because training ended (the 4.x Trainer
    does none; transformers 5 added one in PR #44146, which on a big eval split is a long evaluation at a step the
    user never named); ``epoch`` at each epoch's end, and at the last step when ``max_steps`` ends training inside
    an epoch (the Trainer calls ``on_epoch_end`` after leaving an epoch early too); ``no`` never.  One exception,
    so the kept weights are right: with ``load_best_model_at_end`` and an earlier evaluation (``evaluated``),
    ``steps`` also evaluates the last step, else the weights trained after the last evaluation could never be kept;
    without an earlier evaluation the last weights are the only candidate and need none.
    """
    if args.eval_strategy == "steps":
        if step % args.effective_eval_steps == 0:
            return True
        return args.load_best_model_at_end and evaluated and step >= total_steps
    if args.eval_strategy == "epoch":
        return end_of_epoch or step >= total_steps
    return False


def _check_loss(value: float, key: str, step: int, what: str = "loss") -> None:
    """UserError when a loss (a float the loop reads anyway: no extra device sync) is NaN or inf."""
    if not math.isfinite(value):
        raise UserError(f"{key}: {what} is {'nan' if math.isnan(value) else 'inf'} at step {step}; lower "
                        "training_args.learning_rate or check the data")


def train(
    model: Any,
    train_data: Any,
    args: TrainingArgs,
    *,
    work_dir: Path,
    pad_token_id: int,
    eval_data: Any = None,
    device: str = "cpu",
    progress: Callable[[int], Any] | None = None,
    callbacks: Sequence[Callback] = (),
    run_id: Any = None,
    key: str = "training",
    eval_progress: Callable[[int], Any] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on token rows; resume from ``work_dir`` if it holds a checkpoint.

    ``progress(total_steps)`` opens a progress bar (``advance(n, **fields)``, ``close()``); ``eval_progress(batches)``
    one for each evaluation of the eval loss (``progress`` when not given: an evaluation of a big eval split takes
    as long as many steps and must not look like a hang); evaluations follow ``eval_due``.  ``run_id`` is anything
    that identifies the model and adapter setup, mixed into the checkpoint fingerprint.  A NaN or infinite loss
    stops the run with a UserError naming ``key`` (e.g. ``passes.lora``) and the step, before the optimizer applies
    it.

    Inside a process group (``honed.training.distributed.launch``) every process runs this with the same rows and
    args; the processes split each micro-batch's rows, sum the step's label tokens, losses and gradients, and
    only rank 0 writes checkpoints.  Logged and returned losses are those of all the processes' rows.
    """
    import torch

    rows = as_rows(train_data)
    eval_rows = as_rows(eval_data)
    if not rows:
        raise ValueError("no training rows")
    lengths = [len(r["input_ids"]) for r in rows]
    bs, ga = args.per_device_train_batch_size, args.gradient_accumulation_steps
    micro_per_epoch = math.ceil(len(rows) / bs)
    steps_per_epoch = math.ceil(micro_per_epoch / ga)
    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(steps_per_epoch * args.num_train_epochs)
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    data_seed = args.effective_data_seed
    if eval_rows and not any(eval_due(args, s, total_steps, False, False) for s in (total_steps, args.effective_eval_steps)
                             if s <= total_steps):
        why = ("eval_strategy is 'no'" if args.eval_strategy == "no"
               else f"eval_steps {args.effective_eval_steps} is past the last step, {total_steps}")
        log.warning("%s: %d eval rows are held out but no eval loss will be computed (training_args.%s); they are "
                    "not trained on either: set eval_strategy/eval_steps to evaluate them, or drop "
                    "eval_dataset_size to train on them", key, len(eval_rows), why)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = make_optimizer(params, args, device)
    from transformers import get_scheduler

    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_steps,
                              scheduler_specific_kwargs=dict(args.lr_scheduler_kwargs or {}))
    # reduce_lr_on_plateau steps on the eval loss after each evaluation (as transformers' Trainer does), the
    # other schedules after each optimizer step.
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    parts = sparse_head_parts(model)
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16 if args.bf16 else torch.float16)
        if (args.bf16 or args.fp16) else contextlib.nullcontext()
    )

    ckpt_root = work_dir / "checkpoints"
    fp = fingerprint(args, run_id, rows)
    state = TrainState()
    best_weights: dict[str, Any] | None = None
    rank, world = ddp.rank(), ddp.world_size()
    if world > 1:
        log.info("data parallel in %d processes: each optimizer step's %d rows (per_device_train_batch_size %d x "
                 "gradient_accumulation_steps %d) are split between them; steps, schedule and updates are those "
                 "of one process", world, bs * ga, bs, ga)
        if bs < world:
            log.warning("%s: per_device_train_batch_size %d is below num_processes %d: each micro-batch's rows are "
                        "split between the processes, so %d of them idle; raise the batch or lower num_processes",
                        key, bs, world, world - bs)
    last = ddp.broadcast_object(latest_checkpoint(ckpt_root, fp))  # rank 0's choice: every rank resumes the same
    if last is not None:
        state, best_weights = load_checkpoint(last, model, optimizer, scheduler, seed=args.seed)
        if args.load_best_model_at_end and state.best_step is not None and best_weights is None:
            raise RuntimeError(f"checkpoint {last} lacks the weights of its best evaluation ({BEST_FILE})")
        state.resumed_from = state.global_step
        log.info("resuming from %s (step %d of %d)", last, state.global_step, total_steps)
    else:
        torch.manual_seed(ddp.seed_for_rank(args.seed))
        random.seed(args.seed)

    if world > 1:  # processes that disagree on the run would wait for each other until ddp_timeout: fail now
        views = ddp.all_gather_object((fp, state.global_step, total_steps))
        if len(set(views)) > 1:
            raise RuntimeError(f"{key}: the training processes disagree on the run (fingerprint, resumed step, "
                               f"steps by rank: {views})")

    task = progress(total_steps) if progress is not None else None
    if task is not None and state.global_step:
        task.advance(state.global_step)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    # Throughput only: counted from this process's start (a resumed run's first window is shorter in time).
    window_tokens, window_t = 0, time.perf_counter()
    model.train()

    # bitsandbytes repacks a 4-bit layer for CPU inference the first time it runs in eval mode, and
    # the repacked kernel has no autograd: training after an evaluation would get no gradient through
    # it.  Those layers therefore stay in train mode (they have no dropout) while evaluating.
    quant4 = [m for m in model.modules() if type(m).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")]

    eval_bar = eval_progress or progress
    ebs = args.per_device_eval_batch_size
    eval_order = sorted(range(len(eval_rows)), key=lambda i: len(eval_rows[i]["input_ids"]))
    eval_starts = range(rank * ebs, len(eval_order), ebs * world)  # each process its share of the batches

    def run_eval() -> float:
        # A bar (batches done/total, elapsed, ETA) on a terminal; a line before and after in a log, not one a batch.
        log.info("step %d/%d: computing eval loss on %d rows (%d batches of %d)", state.global_step, total_steps,
                 len(eval_rows), math.ceil(len(eval_rows) / ebs), ebs)
        t0 = time.perf_counter()
        bar = eval_bar(len(eval_starts)) if eval_bar is not None else None
        marked = {} if eval_progress is not None else {"eval": f"{len(eval_rows)} rows"}  # on a training bar
        model.eval()
        for m in quant4:
            m.train()
        tot, cnt = 0.0, 0
        try:
            with torch.no_grad(), autocast:
                for i in eval_starts:
                    batch = collate([eval_rows[j] for j in eval_order[i : i + ebs]], pad_token_id)
                    batch = {k: v.to(device) for k, v in batch.items()}
                    s, n = loss_sum(model, batch, parts)
                    tot += float(s)
                    cnt += n
                    if bar is not None:
                        bar.advance(1, **marked)
        finally:
            if bar is not None:
                bar.close()
        model.train()
        tot, cnt = ddp.all_reduce_sum([tot, cnt])  # the same loss, so the same decisions, on every rank
        loss = tot / max(cnt, 1)
        log.info("step %d/%d eval loss %.4f (%.1fs)", state.global_step, total_steps, loss, time.perf_counter() - t0)
        return loss

    def after_eval(loss: float) -> None:
        nonlocal best_weights
        improved = state.best_eval_loss is None or loss < state.best_eval_loss - args.early_stopping_threshold
        if improved:
            state.best_eval_loss, state.best_step, state.bad_evals = loss, state.global_step, 0
            if args.load_best_model_at_end:
                best_weights = {n: p.detach().clone() for n, p in _trainable(model).items()}
        else:
            state.bad_evals += 1
            if args.early_stopping_patience and state.bad_evals >= args.early_stopping_patience:
                log.info("early stop at step %d: eval loss has not improved for %d evaluations",
                         state.global_step, state.bad_evals)
                state.should_stop = True
        logs = {"step": state.global_step, "eval_loss": loss}
        state.log_history.append(logs)
        for cb in callbacks:
            cb.on_log(state, logs)

    run_tokens = 0
    t_start = time.perf_counter()
    seconds_before = state.train_seconds
    stack = contextlib.ExitStack()
    if device == "cpu":
        from honed.training.attention import fp32_attention
        from honed.training.dropout import use_sparse_dropout
        from honed.training.fused_lora import fused_lora

        use_sparse_dropout(model)  # for the LoRA layers fused_lora leaves to peft (same distribution)
        stack.enter_context(fused_lora(model))
        stack.enter_context(fp32_attention(model))
    try:
        while state.global_step < total_steps and not state.should_stop:
            batches = epoch_batches(lengths, bs, data_seed, state.epoch, args.group_by_length)
            while state.micro_in_epoch < len(batches) and state.global_step < total_steps:
                group = batches[state.micro_in_epoch : state.micro_in_epoch + ga]
                # This process's rows: every world-th row of each micro-batch (all of them in one process).
                micro = [collate([rows[i] for i in b[rank::world]], pad_token_id) if b[rank::world] else None
                         for b in group]
                micro_tokens = [sum(len(rows[i]["input_ids"]) for i in b) for b in group]  # all processes' rows
                n_label = sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro if m is not None)
                n_label = int(ddp.all_reduce_sum([n_label])[0])  # the step's label tokens over every process
                step_loss = 0.0
                for m, ntok in zip(micro, micro_tokens, strict=True):
                    window_tokens += ntok
                    run_tokens += ntok
                    state.tokens_seen += ntok
                    if m is None:  # a last micro-batch with fewer rows than processes
                        continue
                    m = {k: v.to(device, non_blocking=True) for k, v in m.items()}
                    with autocast:
                        s, _ = loss_sum(model, m, parts)
                    (s / max(n_label, 1)).backward()
                    step_loss += float(s.detach())
                ddp.all_reduce_grads(params)
                step_loss = ddp.all_reduce_sum([step_loss])[0]
                _check_loss(step_loss, key, state.global_step + 1)
                if args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                if not plateau:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.micro_in_epoch += len(group)
                state.global_step += 1
                state.window_loss += step_loss
                state.window_label_tokens += n_label
                if state.first_loss is None:
                    state.first_loss = step_loss / max(n_label, 1)

                end_of_epoch = state.micro_in_epoch >= len(batches)
                done = state.global_step >= total_steps
                if state.global_step % args.logging_steps == 0 or done:
                    now = time.perf_counter()
                    state.last_train_loss = state.window_loss / max(state.window_label_tokens, 1)
                    tok_s = window_tokens / max(now - window_t, 1e-9)
                    logs = {"step": state.global_step, "loss": state.last_train_loss, "learning_rate": lr,
                            "tokens_per_s": tok_s, "epoch": state.epoch + state.micro_in_epoch / len(batches)}
                    state.log_history.append(logs)
                    log.info("step %d/%d loss %.4f lr %.3g %.0f tok/s", state.global_step, total_steps,
                             state.last_train_loss, lr, tok_s)
                    for cb in callbacks:
                        cb.on_log(state, logs)
                    state.window_loss, state.window_label_tokens = 0.0, 0
                    window_tokens, window_t = 0, now
                if eval_rows and eval_due(args, state.global_step, total_steps, end_of_epoch,
                                          evaluated=state.last_eval_loss is not None):
                    eval_loss = run_eval()
                    _check_loss(eval_loss, key, state.global_step, what="eval loss")
                    state.last_eval_loss = eval_loss
                    after_eval(eval_loss)
                    if plateau:
                        scheduler.step(eval_loss)
                if task is not None:
                    shown = state.last_train_loss if state.last_train_loss is not None else step_loss / max(n_label, 1)
                    fields = {"loss": f"{shown:.4f}"}
                    if state.last_eval_loss is not None:
                        fields["eval_loss"] = f"{state.last_eval_loss:.4f}"
                    task.advance(1, **fields)
                state.train_seconds = seconds_before + time.perf_counter() - t_start
                if state.global_step % args.save_steps == 0 and not done and not state.should_stop:
                    rank_rngs = ddp.all_gather_object(rng_state()) if world > 1 else None
                    if rank == 0:
                        save_checkpoint(ckpt_root, model, optimizer, scheduler, state, fp, args.save_total_limit,
                                        best=best_weights, rank_rngs=rank_rngs)
                    ddp.barrier()  # a rank killed after this step finds the checkpoint written
                for cb in callbacks:
                    cb.on_step_end(state, args)
                if state.should_stop:
                    break
            if state.micro_in_epoch >= len(batches):
                state.epoch += 1
                state.micro_in_epoch = 0
    finally:
        stack.close()
        if task is not None:
            task.close()
    state.train_seconds = seconds_before + time.perf_counter() - t_start
    if best_weights is not None:
        with torch.no_grad():
            for n, p in _trainable(model).items():
                p.copy_(best_weights[n])
    with torch.no_grad():  # the last optimizer step is after the last loss: check what it left
        bad = next((n for n, p in _trainable(model).items() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise UserError(f"{key}: trainable weight {bad} is not finite after step {state.global_step}; lower "
                        "training_args.learning_rate or check the data and the base model's weights")
    model.eval()
    run_seconds = time.perf_counter() - t_start
    metrics: dict[str, float] = {
        "train_steps": state.global_step,
        "train_loss": state.last_train_loss if state.last_train_loss is not None else float("nan"),
        "train_runtime_s": round(state.train_seconds, 3),
        "train_tokens_per_s": round(run_tokens / max(run_seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    if state.first_loss is not None:
        metrics["train_loss_first_step"] = state.first_loss
    if state.resumed_from:
        metrics["resumed_from_step"] = state.resumed_from
    if state.last_eval_loss is not None:
        metrics["eval_loss"] = state.last_eval_loss
    if state.best_eval_loss is not None:
        metrics["best_eval_loss"] = state.best_eval_loss
    return TrainResult(state=state, metrics=metrics)
