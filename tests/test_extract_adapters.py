"""ExtractAdapters: one genai base, many LoRA adapters switched in onnxruntime-genai.

The acceptance case trains two adapters with the LoRA pass on two label sets over one tiny Llama, builds one
int4 genai base from the first, writes both as .onnx_adapter files, and checks in onnxruntime-genai that
each active adapter gives the logits of the int4 genai build of that adapter merged into the base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator
from tests.helpers import cli, write_config

TEXTS = ["I passed the exam with top marks", "The lights went out upstairs", "My old dog died this morning",
         "They threw me a party"]
LABEL_SETS = {"tone": ["joy", "fear", "sadness", "surprise"], "count": ["one", "two", "three", "four"]}
PROMPTS = [f"### Text: {t}\n### Label:" for t in TEXTS]
# int4: the merged build quantizes W + BA, the base quantizes W and the adapter its own A and B, so the two
# differ by int4 rounding: measured at most 0.018 on logits of magnitude ~1.3.
TOL_INT4 = 0.05
TOL_FP32 = 1e-4
MERGED_INT4 = {"precision": "int4", "int4_algo_config": "default", "matmul_mixed_precision": "none"}


def _run(name: str, model: ModelHandle, out: Path, data_configs: dict | None = None, **cfg: Any) -> ModelHandle:
    cls = get_pass(name)
    ctx = PassContext(pass_name=out.name, host=Accelerator(), target=Accelerator(),
                      data_configs=data_configs or {}, work_dir=out.parent / f"{out.name}.work",
                      cache_dir=out.parent / "cache")
    out.mkdir(parents=True)
    return cls().run(model, cls.config_class.model_validate(cfg), out, ctx)


def _train(base: Path, tmp: Path, task: str) -> ModelHandle:
    """A LoRA adapter trained (briefly) to answer each text with this task's label; in float32 on every CPU (on
    one with AVX512-BF16 honed would train in bf16, and that adapter's int4 build lies 0.7 from its merged int4
    build: the two int4 roundings, of A and B apart and of W + BA, differ more for some adapters than others)."""
    from honed.data import DataConfig

    rows = tmp / f"{task}.jsonl"
    rows.write_text("".join(json.dumps({"phrase": t, "label": lab}) + "\n"
                            for t, lab in zip(TEXTS, LABEL_SETS[task], strict=True)) * 2)
    dc = DataConfig.model_validate({
        "name": task, "load_dataset_config": {"data_name": "json", "data_files": str(rows)},
        "pre_process_data_config": {"text_template": "### Text: {phrase}\n### Label: {label}", "max_seq_len": 64},
    })
    return _run("LoRA", ModelHandle(kind="hf", path=str(base)), tmp / f"lora_{task}", {task: dc},
                train_data_config=task, r=4, alpha=8, lora_dropout=0.0, torch_dtype="float32",
                training_args={"max_steps": 6, "learning_rate": 5e-2, "per_device_train_batch_size": 4, "seed": 0})


def _random_adapter(base: Path, out: Path, r: int, targets: list[str], seed: int) -> ModelHandle:
    """A peft LoRA adapter with random non-zero A and B (init_lora_weights=False), not trained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
                   ).save_pretrained(out)
    return ModelHandle(kind="peft", path=str(out), base=ModelHandle(kind="hf", path=str(base)))


def _merged(adapter: ModelHandle, tmp: Path, name: str, **build: Any) -> ModelHandle:
    """The genai build of ``adapter`` merged into its base: the reference each switched adapter must match."""
    hf = _run("MergeAdapterWeights", adapter, tmp / f"merge_{name}")
    return _run("ModelBuilder", hf, tmp / f"merged_{name}", **build)


class Genai:
    """Last-token logits of a genai folder, optionally with one of its adapter files active."""

    def __init__(self, folder: str | Path) -> None:
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        self.og, self.folder = og, Path(folder)
        self.model = og.Model(str(folder))
        self.adapters = og.Adapters(self.model)
        self.tok = AutoTokenizer.from_pretrained(folder)

    def load(self, name: str, file: str) -> None:
        self.adapters.load(str(self.folder / file), name)

    def logits(self, prompt: str, adapter: str | None = None) -> np.ndarray:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=64)
        gen = self.og.Generator(self.model, params)
        if adapter is not None:
            gen.set_active_adapter(self.adapters, adapter)
        gen.append_tokens(np.array([self.tok(prompt)["input_ids"]], dtype=np.int32))
        return np.array(gen.get_logits(), dtype=np.float32).reshape(-1)


def _lora_initializers(folder: str | Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    from honed.passes.extract_adapters import find_lora_weights

    graph = onnx.load(str(Path(folder) / "model.onnx")).graph
    inits = {t.name: t for t in graph.initializer}
    return {n: numpy_helper.to_array(inits[n]) for n in find_lora_weights(graph)}


def _read_adapter(file: Path) -> dict[str, np.ndarray]:
    """An .onnx_adapter file's parameters, copied (the read views die with the reader)."""
    import onnxruntime as ort

    reader = ort.AdapterFormat.read_adapter(str(file))
    return {k: v.numpy().copy() for k, v in reader.get_parameters().items()}


# ----------------------------------------------------------------------------- int4, trained adapters


@pytest.fixture(scope="module")
def int4(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("int4")
    tone, count = _train(tiny_llama, tmp, "tone"), _train(tiny_llama, tmp, "count")
    genai = _run("ModelBuilder", tone, tmp / "build", precision="int4")
    out = _run("ExtractAdapters", genai, tmp / "extract", adapter_name="tone", adapter_paths={"count": count.path})
    return {
        "out": out, "genai": genai,
        "merged": {"tone": _merged(tone, tmp, "tone", **MERGED_INT4), "count": _merged(count, tmp, "count", **MERGED_INT4)},
        "base": _run("ModelBuilder", ModelHandle(kind="hf", path=str(tiny_llama)), tmp / "base", **MERGED_INT4),
    }


def test_int4_base_switches_trained_adapters(int4: dict[str, Any]) -> None:
    """Acceptance: each active adapter gives its merged int4 build's logits; A and B differ far beyond that."""
    out = int4["out"]
    folder = Path(out.path)
    assert out.kind == "genai" and out.attributes["adapters"] == {"tone": "tone.onnx_adapter",
                                                                   "count": "count.onnx_adapter"}
    g = Genai(folder)
    g.load("tone", "tone.onnx_adapter")
    g.load("count", "count.onnx_adapter")
    ref = {k: Genai(v.path) for k, v in int4["merged"].items()}
    base = Genai(int4["base"].path)
    worst = {"tone": 0.0, "count": 0.0}
    gap = np.inf
    for prompt in PROMPTS:
        # tone, count, then tone again in new generators over one model: switching leaves no state behind.
        got = {"tone": g.logits(prompt, "tone"), "count": g.logits(prompt, "count")}
        again = g.logits(prompt, "tone")
        np.testing.assert_array_equal(again, got["tone"])
        for name, logits in got.items():
            want = ref[name].logits(prompt)
            worst[name] = max(worst[name], float(np.abs(logits - want).max()))
            assert logits.argmax() == want.argmax(), (name, prompt)
        gap = min(gap, float(np.abs(got["tone"] - got["count"]).max()))
        # No active adapter: the zero defaults make it the base model.
        np.testing.assert_allclose(g.logits(prompt), base.logits(prompt), atol=1e-5)
    print(f"int4 max|switched - merged|: {worst}; min max|tone - count|: {gap:.3f}")
    assert max(worst.values()) <= TOL_INT4, worst
    assert gap >= 10 * TOL_INT4, gap


def test_int4_adapter_files_hold_the_graph_weights(int4: dict[str, Any]) -> None:
    """The tone file holds exactly the LoRA initializers the builder wrote; the graph now takes them as inputs."""
    import onnx

    folder = Path(int4["out"].path)
    before = _lora_initializers(int4["genai"].path)
    assert before and any(n.endswith("_Q4") for n in before)  # the int4 build quantizes the LoRA MatMuls too
    saved = _read_adapter(folder / "tone.onnx_adapter")
    assert saved.keys() == before.keys()
    for name, arr in before.items():
        np.testing.assert_array_equal(saved[name], arr, err_msg=name)
    count = _read_adapter(folder / "count.onnx_adapter")
    assert count.keys() == before.keys()
    assert any(not np.array_equal(count[n], before[n]) for n in before)
    graph = onnx.load(str(folder / "model.onnx")).graph
    inputs = {i.name for i in graph.input}
    assert before.keys() <= inputs
    defaults = {t.name: t for t in graph.initializer if t.name in before}
    assert defaults.keys() == before.keys()  # optional: every LoRA input has its zero default
    assert all(not np.any(onnx.numpy_helper.to_array(t)) for t in defaults.values())
    for f in ("genai_config.json", "tokenizer.json"):
        assert (folder / f).is_file(), f


# ----------------------------------------------------------------------------- fp32, dynamic rank


@pytest.fixture(scope="module")
def fp32(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fp32")
    a = _random_adapter(tiny_llama, tmp / "r4", 4, ["q_proj", "v_proj", "down_proj"], seed=1)
    b = _random_adapter(tiny_llama, tmp / "r8", 8, ["q_proj", "v_proj"], seed=2)  # another rank, fewer layers
    genai = _run("ModelBuilder", a, tmp / "build", precision="fp32")
    return {"tmp": tmp, "a": a, "b": b, "genai": genai, "base": tiny_llama}


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_fp32_dynamic_rank_and_subset_match_merged(arch: str, fp32: dict[str, Any], tiny_phi3: Path,
                                                   tmp_path: Path) -> None:
    """Float LoRA inputs take any rank (lora_r) and any subset of the layers; logits equal the merged builds.
    Phi-3's fused qkv_proj / gate_up_proj adapters are split by the builder; the replay splits alike."""
    import onnx

    if arch == "llama":
        tmp, base, a, b, genai = tmp_path, fp32["base"], fp32["a"], fp32["b"], fp32["genai"]
    else:
        tmp, base = tmp_path, tiny_phi3
        a = _random_adapter(base, tmp / "r4", 4, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], seed=1)
        b = _random_adapter(base, tmp / "r8", 8, ["qkv_proj", "gate_up_proj"], seed=2)
        genai = _run("ModelBuilder", a, tmp / "build", precision="fp32")
    out = _run("ExtractAdapters", genai, tmp / "extract", adapter_name="r4", adapter_paths={"r8": b.path})
    graph = onnx.load(str(Path(out.path) / "model.onnx")).graph
    lora_inputs = [i for i in graph.input if ".lora_" in i.name]
    assert lora_inputs and all("lora_r" in [d.dim_param for d in i.type.tensor_type.shape.dim] for i in lora_inputs)
    g = Genai(out.path)
    g.load("r4", "r4.onnx_adapter")
    g.load("r8", "r8.onnx_adapter")
    ref = {"r4": Genai(_merged(a, tmp, "r4", precision="fp32").path),
           "r8": Genai(_merged(b, tmp, "r8", precision="fp32").path)}
    plain = Genai(_run("ModelBuilder", ModelHandle(kind="hf", path=str(base)), tmp / "base", precision="fp32").path)
    worst = 0.0
    for prompt in PROMPTS[:2]:
        got_a, got_b = g.logits(prompt, "r4"), g.logits(prompt, "r8")
        worst = max(worst, float(np.abs(got_a - ref["r4"].logits(prompt)).max()),
                    float(np.abs(got_b - ref["r8"].logits(prompt)).max()))
        assert np.abs(got_a - got_b).max() > 100 * TOL_FP32
        np.testing.assert_allclose(g.logits(prompt), plain.logits(prompt), atol=TOL_FP32)
    print(f"{arch} fp32 max|switched - merged|: {worst:.2e}")
    assert worst <= TOL_FP32


@pytest.mark.parametrize("fmt", ["onnx_adapter", "numpy", "safetensors"])
def test_save_formats_round_trip(fp32: dict[str, Any], fmt: str) -> None:
    from safetensors.numpy import load_file

    out = _run("ExtractAdapters", fp32["genai"], fp32["tmp"] / f"fmt_{fmt}", save_format=fmt)
    file = Path(out.path) / out.attributes["adapters"]["adapter_weights"]
    loaded = {
        "onnx_adapter": lambda: _read_adapter(file),
        "numpy": lambda: dict(np.load(file)),
        "safetensors": lambda: load_file(str(file)),
    }[fmt]()
    want = _lora_initializers(fp32["genai"].path)
    assert loaded.keys() == want.keys() and file.suffix == {"onnx_adapter": ".onnx_adapter", "numpy": ".npz",
                                                            "safetensors": ".safetensors"}[fmt]
    for name, arr in want.items():
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)


# ----------------------------------------------------------------------------- plain onnxruntime (onnx kind)


def _ort_logits(path: Path, feeds_from: Path, options: Any = None, run_options: Any = None) -> np.ndarray:
    import onnxruntime as ort

    from honed.models.onnx_runtime import OnnxSession

    ids = np.array([[5, 17, 30, 44, 9, 60]], dtype=np.int64)
    feeds = OnnxSession(feeds_from).feeds(ids, np.ones_like(ids))
    sess = ort.InferenceSession(str(path / "model.onnx"), options or ort.SessionOptions(),
                                providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feeds, run_options)[0]


def test_onnx_model_with_ort_lora_adapter_and_external_initializers(fp32: dict[str, Any]) -> None:
    """For a plain ONNX model: make_inputs feeds onnxruntime's own LoraAdapter; make_inputs false leaves
    initializers the session adds with add_external_initializers."""
    import onnxruntime as ort

    tmp, src = fp32["tmp"], Path(fp32["genai"].path)
    onnx_in = ModelHandle(kind="onnx", path=str(src))
    want = _ort_logits(src, src)

    inputs = _run("ExtractAdapters", onnx_in, tmp / "ort_inputs")
    assert inputs.kind == "onnx"
    folder = Path(inputs.path)
    adapter = ort.LoraAdapter()
    adapter.Load(str(folder / "adapter_weights.onnx_adapter"))
    run_options = ort.RunOptions()
    run_options.add_active_adapter(adapter)
    np.testing.assert_allclose(_ort_logits(folder, src, run_options=run_options), want, atol=TOL_FP32)
    assert np.abs(_ort_logits(folder, src) - want).max() > 100 * TOL_FP32  # without it: the base model

    ext = _run("ExtractAdapters", onnx_in, tmp / "ort_external", make_inputs=False)
    folder = Path(ext.path)
    weights = _read_adapter(folder / "adapter_weights.onnx_adapter")
    assert set(ext.attributes["adapter_initializers"]) == set(weights)
    opts = ort.SessionOptions()
    values = [ort.OrtValue.ortvalue_from_numpy(v) for v in weights.values()]
    opts.add_external_initializers(list(weights), values)
    np.testing.assert_allclose(_ort_logits(folder, src, options=opts), want, atol=TOL_FP32)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("cfg", "text"),
    [
        ({"save_format": "pt"}, "save_format"),
        ({"adapter_type": "dora"}, "adapter_type"),
        ({"make_inputs": "false"}, "make_inputs"),
        ({"adapter_name": "a/b"}, "file name"),
        ({"adapter_paths": {"../x": "."}}, "file name"),
        ({"adapter_name": "x", "adapter_paths": {"x": "."}}, "adapter_name"),
        ({"adapter_paths": {"x": "/no/such/adapter"}}, "file not found"),
    ],
)
def test_config_validation(cfg: dict, text: str) -> None:
    with pytest.raises(ValidationError, match=text):
        get_pass("ExtractAdapters").config_class.model_validate(cfg)


def test_run_errors_are_one_line(fp32: dict[str, Any], int4: dict[str, Any], tiny_llama: Path) -> None:
    tmp = fp32["tmp"]
    plain = ModelHandle(kind="genai", path=int4["base"].path)  # built from a full model: no LoRA
    k_proj = _random_adapter(tiny_llama, tmp / "k_proj", 4, ["k_proj", "q_proj"], seed=3)
    rank8 = _random_adapter(tiny_llama, tmp / "int4_r8", 8, ["q_proj"], seed=4)
    cases = [
        (plain, {}, "holds no LoRA weights"),
        (fp32["genai"], {"make_inputs": False}, "make_inputs: false"),
        (ModelHandle(kind="onnx", path=fp32["genai"].path), {"adapter_paths": {"b": fp32["b"].path}},
         "built from a PEFT adapter"),
        (fp32["genai"], {"adapter_paths": {"b": str(tiny_llama)}}, "not a PEFT adapter folder"),
        (fp32["genai"], {"adapter_paths": {"b": k_proj.path}}, "has no LoRA weights for"),
        # int4 LoRA weights are MatMulNBits with a static K = r: another rank cannot fit.
        (int4["genai"], {"adapter_paths": {"b": rank8.path}}, "retrain it with the base adapter's r"),
    ]
    for i, (model, cfg, text) in enumerate(cases):
        with pytest.raises(UserError, match=text) as err:
            _run("ExtractAdapters", model, tmp / f"err{i}", **cfg)
        assert "\n" not in str(err.value) and "passes.err" in str(err.value)


@pytest.mark.parametrize("with_adapter", [True, False])
def test_cli_workflow(with_adapter: bool, fp32: dict[str, Any], tiny_llama: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the engine: adapter input -> ModelBuilder int4 -> ExtractAdapters writes base + both files to
    the output folder; without an adapter the run stops with one line naming the pass."""
    monkeypatch.chdir(tmp_path)
    other = _random_adapter(tiny_llama, tmp_path / "other", 4, ["q_proj", "v_proj"], seed=5)
    model = {"model_path": str(tiny_llama), **({"adapter_path": fp32["a"].path} if with_adapter else {})}
    wf = write_config(tmp_path / "wf.json", {
        "input_model": model,
        "passes": {"build": {"type": "ModelBuilder", "precision": "int4"},
                   "extract": {"type": "ExtractAdapters", "adapter_name": "first",
                               "adapter_paths": {"second": other.path}}},
        "engine": {"cache_dir": "cache", "output_dir": "out"},
    })
    code = cli("run", "--config", str(wf))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    if not with_adapter:
        assert code == 2 and len(lines) == 1 and "passes.extract" in lines[0] and "no LoRA weights" in lines[0]
        return
    assert code == 0, lines
    out = tmp_path / "out"
    for f in ("model.onnx", "genai_config.json", "first.onnx_adapter", "second.onnx_adapter", "footprints.json"):
        assert (out / f).is_file(), f
    g = Genai(out)
    g.load("first", "first.onnx_adapter")
    g.load("second", "second.onnx_adapter")
    assert np.abs(g.logits(PROMPTS[0], "first") - g.logits(PROMPTS[0], "second")).max() > 10 * TOL_INT4
