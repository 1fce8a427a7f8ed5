"""Memory that scales: the estimate, the preflight refusal, the streamed merge and the bf16-held LoRA base.

Each test names the one-line fault it catches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import honed.training.finetune as ft
import honed.training.merge as merge
from honed.errors import UserError
from honed.models import memory
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model
from honed.passes.base import get_pass
from tests.test_finetune import _one_thread, make_ctx, run_pass  # noqa: F401  (_one_thread: autouse fixture)
from tests.test_finetune import rows_for as rows_for  # fixture

# ----------------------------------------------------------------------------- the estimate


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_weights_equal_the_loaded_models_parameter_bytes(arch: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    """Catches: a dtype size off (BF16 counted as 4 bytes), a tensor counted twice, the config formula dropping
    the untied head or the norms."""
    folder = request.getfixturevalue(f"tiny_{arch}")
    model = load_model(ModelHandle(kind="hf", path=str(folder)))
    real_params = sum(p.numel() for p in model.parameters())
    real_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    w = memory.weights(folder)
    assert (w.params, w.stored_bytes) == (real_params, real_bytes)
    assert w.bytes_as("bfloat16") == real_params * 2
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(folder / "config.json", config_only / "config.json")
    if arch == "llama":  # the formula is a Llama's (Phi-3's fused projections hold the same parameters)
        assert memory.weights(config_only).params == real_params


def test_weights_of_a_bf16_folder(bf16_llama: Path) -> None:
    """Catches: the stored dtype taken from the wrong tensors (a bf16 model read as fp32)."""
    w = memory.weights(bf16_llama)
    assert w.dtype == "bfloat16"
    assert w.stored_bytes == w.params * 2


def test_lora_estimate_adds_its_parts(tiny_llama: Path) -> None:
    """Catches: the adapter's optimizer state or the activations left out, or activations not scaling with the
    tokens of a micro-batch."""
    w = memory.weights(tiny_llama)
    small = memory.lora_estimate("x", w, held_dtype="bfloat16", compute_dtype="bfloat16", tokens=128, r=8,
                                 targets=["q_proj"])
    big = memory.lora_estimate("x", w, held_dtype="bfloat16", compute_dtype="bfloat16", tokens=256, r=8,
                               targets=["q_proj"])
    h = w.config["hidden_size"]
    layers = w.config["num_hidden_layers"]
    assert small.parts["adapter and optimizer"] == layers * 8 * (h + h) * memory.ADAM_BYTES_PER_PARAM
    assert small.parts["weights"] == w.params * 2
    assert big.parts["activations"] == 2 * small.parts["activations"] > 0
    assert small.total == sum(small.parts.values())


def test_available_memory_reads_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: the override ignored, or read in GB of 10**9 instead of GiB."""
    monkeypatch.setenv(memory.ENV_LIMIT, "1.5")
    assert memory.available_memory() == (int(1.5 * 2**30), memory.ENV_LIMIT)
    monkeypatch.setenv(memory.ENV_LIMIT, "lots")
    with pytest.raises(UserError, match="HONED_MEMORY_LIMIT_GB='lots'"):
        memory.available_memory()


def test_cgroup_limit_caps_the_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: a container's memory.max ignored in favour of the host's free memory."""
    monkeypatch.delenv(memory.ENV_LIMIT, raising=False)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 3 * 2**20)
    assert memory.available_memory() == (3 * 2**20, "the cgroup's memory.max")


# ----------------------------------------------------------------------------- the preflight


def test_lora_preflight_refuses_before_loading(tiny_llama: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: the preflight call dropped from the LoRA pass (the model would load), the comparison inverted,
    or a message without the estimate and the fix."""
    monkeypatch.setenv(memory.ENV_LIMIT, "0.01")

    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model loaded before the preflight refused")

    monkeypatch.setattr(ft, "_load_for_training", no_load)
    monkeypatch.setattr(ft, "load_splits", no_load)
    cls = get_pass("LoRA")
    config = cls.config_class.model_validate({"train_data_config": "train"})
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(UserError) as e:
        cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), config, tmp_path / "out", ctx)
    msg = str(e.value)
    assert msg.startswith(f"LoRA on {tiny_llama}: needs about ")
    assert "(weights " in msg and "+ activations " in msg and "+ adapter and optimizer " in msg
    assert "HONED_MEMORY_LIMIT_GB allows 0.0 GiB; use QLoRA (type: QLoRA) or a smaller max_seq_len" in msg
    assert "\n" not in msg
    monkeypatch.setenv(memory.ENV_LIMIT, "64")  # enough: the same call goes on to load (here: our tripwire)
    with pytest.raises(AssertionError, match="loaded before"):
        cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), config, tmp_path / "out", ctx)


def test_cli_exits_2_with_one_line(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the refusal raised as an internal error (exit 1 with a traceback) instead of a UserError."""
    from honed.cli.main import main

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(8)))
    wf = {"input_model": {"model_path": str(tiny_llama)},
          "data_configs": [{"name": "d", "load_dataset_config": {"data_files": str(data)},
                            "pre_process_data_config": {"text_template": "{text}", "max_seq_len": 32}}],
          "passes": {"lora": {"type": "LoRA", "train_data_config": "d", "training_args": {"max_steps": 1}}},
          "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}}
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    monkeypatch.setenv(memory.ENV_LIMIT, "0.001")
    assert main(["run", "--config", str(tmp_path / "wf.json")]) == 2
    err = capsys.readouterr().err
    assert "LoRA on" in err and "needs about" in err and "Traceback" not in err


def test_merge_and_build_preflights(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    rows_for) -> None:
    """Catches: the merge or the ModelBuilder preflight call dropped."""
    rows_for(tiny_llama)
    adapter, _ = run_pass("LoRA", tiny_llama, tmp_path, training_args={"max_steps": 1})
    monkeypatch.setenv(memory.ENV_LIMIT, "0.001")
    ctx, _ = make_ctx(tmp_path, "merge")
    cls = get_pass("MergeAdapterWeights")
    with pytest.raises(UserError, match=r"MergeAdapterWeights \(merge\) on .*needs about .*HONED_MEMORY_LIMIT_GB"):
        cls().run(adapter, cls.config_class.model_validate({}), tmp_path / "m", ctx)
    assert not (tmp_path / "m" / "model").exists()
    build = get_pass("ModelBuilder")
    with pytest.raises(UserError, match=r"ModelBuilder \(merge\) on .*needs about .*codes x 2"):
        build().run(ModelHandle(kind="hf", path=str(tiny_llama)),
                    build.config_class.model_validate({"precision": "int4"}), tmp_path / "b", ctx)


# ----------------------------------------------------------------------------- the streamed merge


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in memory.safetensors_files(folder):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_streamed_merge_equals_peft_merge(stored: str, tiny_llama: Path, bf16_llama: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, rows_for) -> None:
    """Catches: the LoRA scaling dropped or applied twice, B @ A transposed or swapped, a base tensor not
    copied, the delta added after the cast, or the shards' index naming the wrong file."""
    base = tiny_llama if stored == "float32" else bf16_llama
    rows_for(base)
    adapter, _ = run_pass("LoRA", base, tmp_path, use_rslora=stored == "bfloat16")
    plan = merge.stream_plan(adapter)
    assert isinstance(plan, merge.StreamPlan) and plan.lora
    ctx, _ = make_ctx(tmp_path, "merge")
    merge.merge_in_memory(adapter, adapter.base, stored, tmp_path / "peft", ctx)
    monkeypatch.setattr(merge, "SHARD_BYTES", 40_000)  # several shards and an index
    merge.merge_streamed(plan, stored, tmp_path / "streamed", "passes.merge", adapter.path)
    assert (tmp_path / "streamed" / "model.safetensors.index.json").is_file()
    want, got = _state(tmp_path / "peft"), _state(tmp_path / "streamed")
    common = set(want) & set(got)
    assert common == set(want) - {"lm_head.weight"} or common == set(want)
    for name in common:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]) or float((got[name].float() - want[name].float()).abs().max()) < (
            1e-6 if stored == "float32" else 1e-2), name
    changed = [n for n in plan.lora if not torch.equal(got[n].float(), _state(base)[n].float())]
    assert changed, "the adapter changed no weight: the comparison would mean nothing"
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        a = load_model(ModelHandle(kind="hf", path=str(tmp_path / "peft")), dtype="float32")(input_ids=ids).logits
        b = load_model(ModelHandle(kind="hf", path=str(tmp_path / "streamed")), dtype="float32")(input_ids=ids).logits
    assert float((a - b).abs().max()) < 1e-4


def test_merge_pass_streams_a_plain_lora(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    """Catches: the pass always taking the in-memory path (a full fp32 copy of the model)."""
    rows_for(tiny_llama)
    adapter, _ = run_pass("LoRA", tiny_llama, tmp_path, training_args={"max_steps": 2})
    cls = get_pass("MergeAdapterWeights")
    ctx, _ = make_ctx(tmp_path, "merge")
    cls().run(adapter, cls.config_class.model_validate({}), tmp_path / "m", ctx)
    assert ctx.metrics["merge_streamed"] is True
    assert ctx.metrics["merge_max_abs_diff"] < 1e-4


def test_dora_merges_in_memory(tiny_phi3: Path, tmp_path: Path, rows_for) -> None:
    """Catches: a DoRA adapter streamed as if it were plain LoRA (its magnitude vector would be dropped)."""
    rows_for(tiny_phi3)
    adapter, _ = run_pass("DoRA", tiny_phi3, tmp_path, training_args={"max_steps": 1})
    assert merge.stream_plan(adapter) == "not a plain LoRA adapter"


# ----------------------------------------------------------------------------- the LoRA base's dtype


SGD = {"max_steps": 1, "optim": "sgd", "learning_rate": 0.5, "per_device_train_batch_size": 4, "logging_steps": 4}


def test_held_dtype_rule() -> None:
    """Catches: the rule inverted (bf16 held where fp32 was asked for) or applied to QLoRA/DoRA or a GPU."""
    assert ft.held_dtype("cpu", "float32", "bfloat16", chosen=False, variant="lora") == "bfloat16"
    assert ft.held_dtype("cpu", "float32", "float16", chosen=False, variant="lora") == "float16"
    assert ft.held_dtype("cpu", "float32", "float32", chosen=False, variant="lora") == "float32"
    assert ft.held_dtype("cpu", "float32", "bfloat16", chosen=True, variant="lora") == "float32"
    assert ft.held_dtype("cpu", "float32", "bfloat16", chosen=False, variant="dora") == "float32"
    assert ft.held_dtype("cuda", "float32", "bfloat16", chosen=False, variant="lora") == "float32"
    assert ft.held_dtype("cpu", "bfloat16", "bfloat16", chosen=False, variant="lora") == "bfloat16"


def test_lora_base_stays_bf16_and_trains_as_fp32(bf16_llama: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, rows_for) -> None:
    """On a CPU without native bf16 the bf16 base stays bf16 and the adapter trains as over an fp32 copy.
    Catches: the base upcast to fp32 (held_dtype ignored), the upcast linear's backward using the wrong weight
    or transpose, or the non-linear layers (norms) left in bf16."""
    monkeypatch.setenv("HONED_CPU_BF16", "0")
    ft.cpu_has_fast_bf16.cache_clear()
    rows_for(bf16_llama)
    seen: dict[str, set[torch.dtype]] = {}
    real_train = ft.train

    def spy(model, *a, **k):  # type: ignore[no-untyped-def]
        base = model.get_base_model()
        seen["linear"] = {m.weight.dtype for m in base.modules() if isinstance(m, torch.nn.Linear)
                          and m.weight.ndim == 2 and not m.weight.requires_grad}
        seen["norm"] = {p.dtype for n, p in base.named_parameters() if "norm" in n}
        return real_train(model, *a, **k)

    monkeypatch.setattr(ft, "train", spy)
    try:
        held, _ = run_pass("LoRA", bf16_llama, tmp_path / "held", lora_dropout=0.0, training_args=SGD)
        assert held.attributes["base_held_dtype"] == "bfloat16" and held.attributes["train_dtype"] == "float32"
        assert seen == {"linear": {torch.bfloat16}, "norm": {torch.float32}}
        full, _ = run_pass("LoRA", bf16_llama, tmp_path / "full", lora_dropout=0.0, torch_dtype="float32",
                           training_args=SGD)
        assert seen["linear"] == {torch.float32}
    finally:
        ft.cpu_has_fast_bf16.cache_clear()
    assert Path(full.path, "adapter_model.safetensors").is_file()


def test_upcast_linears_compute_what_fp32_computes(bf16_llama: Path) -> None:
    """The bf16-held base with per-layer upcasts gives the fp32 copy's loss and adapter gradients (same adapter
    weights in both: peft rounds a fresh adapter's init to the base dtype before widening it).
    Catches: the upcast linear's backward using the wrong weight or transpose, or norms left in bf16."""
    from peft import LoraConfig, get_peft_model

    ids = torch.tensor([[1, 5, 9, 3, 7, 11, 13, 4, 8, 2]])
    grads, losses, adapter = [], [], None
    for held in (False, True):
        m = load_model(ModelHandle(kind="hf", path=str(bf16_llama)), dtype="bfloat16" if held else "float32",
                       attn_implementation="sdpa")
        if held:
            assert ft.upcast_linears(m, "float32") > 0
        pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                          target_modules=["q_proj", "v_proj", "down_proj"]))
        params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
        if adapter is None:
            torch.manual_seed(0)
            adapter = {n: torch.randn_like(p, dtype=torch.float32) * 0.1 for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(adapter[n])
        pm.train()
        out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
        losses.append(float(out.loss))
        grads.append({n: p.grad.clone() for n, p in params.items()})
    assert abs(losses[0] - losses[1]) < 1e-5
    for n in grads[0]:
        assert float((grads[0][n] - grads[1][n]).abs().max()) <= 1e-4 * float(grads[0][n].abs().max()), n


def test_the_build_hands_the_builders_memory_back(tiny_llama: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The genai builder's graph outlives create_model in reference cycles and glibc keeps the freed heap (at 3.8B
    about 7 GiB stayed resident through the fidelity check); the build releases it before anything else loads.
    Catches: build_genai returning without collecting and trimming."""
    import honed.util.monitor as monitor
    from tests.helpers import run_pass as build

    calls: list[int] = []
    real = monitor.release_memory
    monkeypatch.setattr(monitor, "release_memory", lambda: (calls.append(1), real())[1])
    build("ModelBuilder", tiny_llama, tmp_path / "int4", precision="int4", fidelity_samples=0)
    assert calls == [1]
