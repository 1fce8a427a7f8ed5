"""Training that cannot silently go wrong: reruns resume whatever the hash seed, NaN losses and
non-finite merged weights stop the run with one line, and trust_remote_code reaches every pass."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import honed.training.finetune as ft
from honed.errors import UserError
from honed.models.handle import ModelHandle
from tests.helpers import ROOT, cli, write_config
from tests.test_finetune import FAST, _one_thread, make_ctx, run_pass  # noqa: F401  (_one_thread: autouse fixture)
from tests.test_finetune import rows_for as rows_for  # fixture

# ----------------------------------------------------------------------------- determinism across processes

# One LoRA pass in a fresh interpreter: argv = model dir, output dir, step to crash after (0: none).
LORA_RUN = """
import json, sys
from pathlib import Path
import honed.training.finetune as ft
from tests.test_finetune import Crash, FAST, make_rows, run_pass
model, out, crash = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows = make_rows(model)
ft.load_splits = lambda config, tokenizer, ctx: (rows, rows[:6])
try:
    handle, ctx = run_pass("LoRA", model, out, callbacks=[Crash(crash)] if crash else [],
                           training_args=FAST | {"save_steps": 3})
except KeyboardInterrupt:
    print(json.dumps({"crashed": True}))
else:
    print(json.dumps({"resumed_from": ctx.metrics.get("resumed_from_step"), "steps": ctx.metrics["train_steps"]}))
"""


def lora_in_process(model: Path, out: Path, hash_seed: int, crash: int = 0) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-c", LORA_RUN, str(model), str(out), str(crash)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _digests(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _fingerprints(work: Path) -> set[str]:
    return {json.loads(f.read_text())["fingerprint"] for f in (work / "checkpoints").glob("*/state.json")}


def test_lora_outputs_and_fingerprint_do_not_depend_on_the_hash_seed(tiny_llama: Path, tmp_path: Path) -> None:
    """Two processes with different PYTHONHASHSEED: the same checkpoint fingerprint and the same adapter bytes."""
    for seed in (1, 2):
        assert lora_in_process(tiny_llama, tmp_path / str(seed), seed) == {"resumed_from": None, "steps": 12}
    a, b = (_fingerprints(tmp_path / s / "work") for s in ("1", "2"))
    assert len(a) == 1 and a == b
    config = (tmp_path / "1" / "out" / "adapter" / "adapter_config.json").read_bytes()
    assert config == (tmp_path / "2" / "out" / "adapter" / "adapter_config.json").read_bytes()
    targets = json.loads(config)["target_modules"]
    assert targets == sorted(targets)
    assert _digests(tmp_path / "1" / "out") == _digests(tmp_path / "2" / "out")


def test_killed_run_resumes_in_a_process_with_another_hash_seed(tiny_llama: Path, tmp_path: Path) -> None:
    assert lora_in_process(tiny_llama, tmp_path, 3, crash=7) == {"crashed": True}
    assert lora_in_process(tiny_llama, tmp_path, 4) == {"resumed_from": 6, "steps": 12}


# ----------------------------------------------------------------------------- NaN / inf


def _poisoned_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base model loads with one NaN weight: the first forward pass gives a NaN loss."""
    load = ft._load_for_training

    def poisoned(*args: object, **kwargs: object) -> object:
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
        return model

    monkeypatch.setattr(ft, "_load_for_training", poisoned)


def test_nan_loss_fails_the_pass_with_the_step(tiny_llama: Path, tmp_path: Path, rows_for,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rows_for(tiny_llama)
    _poisoned_loader(monkeypatch)
    with pytest.raises(UserError, match=r"^passes\.LoRA: loss is nan at step 1; lower training_args\.learning_rate"):
        run_pass("LoRA", tiny_llama, tmp_path)
    assert not (tmp_path / "out" / "adapter").exists()


def test_diverging_learning_rate_fails_with_the_step(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    """The largest learning rate the config allows, without clipping, on plain SGD: the loss overflows."""
    from honed.training.args import TrainingArgs
    from honed.training.loop import train

    rows = rows_for(tiny_llama)
    from honed.models.loaders import load_model

    model = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="float32")
    for p in model.parameters():
        p.requires_grad_(True)
    args = TrainingArgs.model_validate({"max_steps": 30, "learning_rate": 10, "optim": "sgd", "max_grad_norm": 0,
                                        "per_device_train_batch_size": 4, "warmup_steps": 0})
    with pytest.raises(UserError, match=r"^passes\.full: loss is (nan|inf) at step \d+;"):
        train(model, rows, args, work_dir=tmp_path, pad_token_id=0, key="passes.full")


def test_merge_refuses_non_finite_weights(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    from safetensors.torch import load_file, save_file

    from honed.passes.base import get_pass

    rows_for(tiny_llama)
    adapter, _ = run_pass("LoRA", tiny_llama, tmp_path / "a", training_args=FAST | {"max_steps": 2})
    weights_file = Path(adapter.path) / "adapter_model.safetensors"
    weights = load_file(str(weights_file))
    name = next(k for k in sorted(weights) if "lora_B" in k)
    weights[name][0, 0] = float("inf")
    save_file(weights, str(weights_file))
    cls = get_pass("MergeAdapterWeights")
    ctx, _ = make_ctx(tmp_path, "merge")
    with pytest.raises(UserError, match=r"^passes\.merge: merged weight '.*' holds NaN or inf values"):
        cls().run(adapter, cls.config_class.model_validate({}), tmp_path / "merged", ctx)


# ----------------------------------------------------------------------------- trust_remote_code


def custom_code_model(base: Path, folder: Path, marker: Path) -> Path:
    """A copy of ``base`` whose tokenizer is a class in a .py file of the folder; importing it writes ``marker``."""
    import shutil

    shutil.copytree(base, folder)
    (folder / "custom_tok.py").write_text(
        "from pathlib import Path\n"
        "from transformers import PreTrainedTokenizerFast\n\n"
        f"Path({str(marker)!r}).write_text('imported')\n\n\n"
        "class CustomTokenizerFast(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "custom_tok.CustomTokenizerFast"]}
    cfg["tokenizer_class"] = "CustomTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def _workflow(tmp: Path, model: Path, trust: bool) -> Path:
    (tmp / "rows.jsonl").write_text("".join(
        json.dumps({"phrase": p, "tone": t}) + "\n"
        for p, t in [("I won the prize", "joy"), ("the dark room scared me", "fear"), ("my dog died", "sadness")]))
    input_model: dict = {"model_path": str(model)}
    if trust:
        input_model["load_kwargs"] = {"trust_remote_code": True}
    return write_config(tmp / f"wf-{trust}.json", {
        "input_model": input_model,
        "data_configs": [{"name": "d", "load_dataset_config": {"data_files": str(tmp / "rows.jsonl")},
                          "pre_process_data_config": {"text_template": "{phrase} -> {tone}", "max_seq_len": 64}}],
        "passes": {"lora": {"type": "LoRA", "train_data_config": "d", "r": 4, "alpha": 8,
                            "training_args": {"max_steps": 2, "per_device_train_batch_size": 2}},
                   "merge": {"type": "MergeAdapterWeights"}},
        "engine": {"cache_dir": str(tmp / "cache"), "output_dir": str(tmp / f"out-{trust}")},
    })


def test_trust_remote_code_reaches_every_pass(tiny_llama: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "custom-code-ran"
    model = custom_code_model(tiny_llama, tmp_path / "custom", marker)

    # Without the flag: one line naming the fix, exit 2, and the folder's code never ran.
    assert cli("run", "-c", str(_workflow(tmp_path, model, trust=False))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "trust_remote_code" in err[0] and "custom code" in err[0], err
    assert not marker.exists()

    # With it: LoRA, then the merge (which loads the adapter's copy of the custom tokenizer).
    assert cli("run", "-c", str(_workflow(tmp_path, model, trust=True))) == 0, capsys.readouterr().err
    assert marker.exists()
    out = tmp_path / "out-True"
    assert (out / "model.safetensors").is_file() and (out / "custom_tok.py").is_file()
    footprints = json.loads((out / "footprints.json").read_text())
    assert footprints["output_model"]["load_kwargs"] == {"trust_remote_code": True}


def test_loading_without_trust_never_imports_the_folder_code(tiny_llama: Path, tmp_path: Path) -> None:
    from honed.models.loaders import load_model, load_tokenizer

    marker = tmp_path / "custom-code-ran"
    model = custom_code_model(tiny_llama, tmp_path / "custom", marker)
    handle = ModelHandle(kind="hf", path=str(model))
    with pytest.raises(UserError, match="custom code"):
        load_tokenizer(handle)
    load_model(handle)  # the config and weights are plain Llama: no custom code involved
    assert not marker.exists()
    adapter = ModelHandle(kind="peft", path=str(model), base=handle.model_copy(
        update={"load_kwargs": {"trust_remote_code": True}}))
    assert type(load_tokenizer(adapter)).__name__ == "CustomTokenizerFast"  # an adapter inherits its base's flag
    assert marker.exists()
