"""ONNX graph passes after ModelBuilder: an onnxruntime-genai folder in, a genai folder out (Olive's recipes:
ModelBuilder -> OnnxBlockWiseRtnQuantization / OnnxHqqQuantization / OnnxDynamicQuantization), and
OrtTransformersOptimization's use_gqa (MultiHeadAttention -> GroupQueryAttention)."""

from __future__ import annotations

import json
import logging
import shutil
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

GRAPH_PASSES = ("OnnxBlockWiseRtnQuantization", "OnnxHqqQuantization", "OnnxDynamicQuantization",
                "OnnxStaticQuantization", "OnnxFloatToFloat16", "OrtTransformersOptimization")


def _ctx(tmp: Path, data_configs: dict[str, Any] | None = None) -> PassContext:
    return PassContext(pass_name="p", host=Accelerator(), target=Accelerator(), data_configs=data_configs or {},
                       work_dir=tmp / "work", cache_dir=tmp / "cache")


def _run(name: str, model: ModelHandle, tmp: Path, data_configs: dict[str, Any] | None = None,
         **options: Any) -> tuple[ModelHandle, PassContext]:
    cls = get_pass(name)
    out = tmp / "out"
    out.mkdir(parents=True)
    ctx = _ctx(tmp, data_configs)
    return cls().run(model, cls.config_class(**options), out, ctx), ctx


def _ops(onnx_path: Path) -> dict[str, int]:
    import onnx

    from honed.passes._onnx_common import op_counts

    return op_counts(onnx.load(str(onnx_path), load_external_data=False))


@pytest.fixture(scope="module")
def fp32_genai(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    """ModelBuilder fp32 build of the tiny llama: a genai folder with 11 float MatMuls and 2 GroupQueryAttention."""
    tmp = tmp_path_factory.mktemp("mb")
    handle, _ = _run("ModelBuilder", ModelHandle(kind="hf", path=str(tiny_llama)), tmp, precision="fp32")
    assert handle.kind == "genai"
    return handle


def _logits_rel_error(ref_folder: Path, got_folder: Path) -> float:
    """||got - ref|| / ||ref|| of the logits over two prompts (batch 1 x 12, batch 2 x 20, empty past)."""
    from honed.models.onnx_runtime import OnnxSession

    ref_s, got_s = OnnxSession(ref_folder / "model.onnx"), OnnxSession(got_folder / "model.onnx")
    rng = np.random.default_rng(0)
    num = den = 0.0
    for shape in ((1, 12), (2, 20)):
        ids = rng.integers(3, 263, size=shape)
        mask = np.ones_like(ids)
        ref = ref_s.run(ids, mask)[0].astype(np.float64)
        got = got_s.run(ids, mask)[0].astype(np.float64)
        num += float(((got - ref) ** 2).sum())
        den += float((ref**2).sum())
    return (num / den) ** 0.5


def test_graph_passes_declare_genai() -> None:
    for name in GRAPH_PASSES:
        cls = get_pass(name)
        assert "genai" in cls.accepts and "genai" in cls.produces, name


@pytest.mark.parametrize("second", [
    {"type": "OnnxBlockWiseRtnQuantization"},            # olive-recipes llama3.2 rtn
    {"type": "OnnxHqqQuantization"},                     # olive-recipes llama3.2 hqq
    {"type": "OnnxDynamicQuantization", "weight_type": "QInt8"},  # olive auto-opt int8
])
def test_dry_run_accepts_model_builder_chain(second: dict[str, Any], tiny_llama: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.json", {
        "input_model": {"type": "HfModel", "model_path": str(tiny_llama)},
        "passes": {"m": {"type": "ModelBuilder", "precision": "fp32"}, "q": second},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    assert cli("run", "--config", str(cfg), "--dry-run") == 0


# pass, options, the op the output must have (and how many at least), tolerance on the logits' relative error
# (||logits - fp32 logits|| / ||fp32 logits||; measured: rtn 0.12, hqq 0.11, dynamic 0.02, static 0.05,
# fp16 1e-3, fusion only 1e-6).
CHAIN = [
    ("OnnxBlockWiseRtnQuantization", {}, "MatMulNBits", 11, 0.2),
    ("OnnxHqqQuantization", {"block_size": 32}, "MatMulNBits", 11, 0.2),
    ("OnnxDynamicQuantization", {}, "MatMulInteger", 11, 0.05),
    ("OnnxStaticQuantization", {"data_config": "calib", "calibration_sampling_size": 4}, "QuantizeLinear", 11, 0.15),
    ("OnnxFloatToFloat16", {}, "Cast", 1, 0.01),
    ("OrtTransformersOptimization", {"use_gqa": False}, "GroupQueryAttention", 2, 1e-4),
]


@pytest.mark.parametrize(("name", "options", "op", "at_least", "tolerance"), CHAIN, ids=[c[0] for c in CHAIN])
def test_genai_in_genai_out(name: str, options: dict[str, Any], op: str, at_least: int, tolerance: float,
                            fp32_genai: ModelHandle, tmp_path: Path) -> None:
    from honed.data.config import DataConfig
    from honed.models.runtime import load_generator

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"text": t}) for t in
                              ["a cat sat on the mat", "numbers one two three", "the lights went out", "a party"]))
    calib = DataConfig(name="calib", load_dataset_config={"data_files": str(rows)},
                       pre_process_data_config={"text_template": "{text}"})
    src = Path(fp32_genai.path)
    handle, _ = _run(name, fp32_genai, tmp_path, {"calib": calib}, **options)
    out = Path(handle.path)
    assert (handle.kind, out) == ("genai", tmp_path / "out")
    # The folder carried over whole, less the source's external weights (this small graph is saved inline).
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir() if p.name != "model.onnx.data")
    assert json.loads((out / "genai_config.json").read_text()) == json.loads((src / "genai_config.json").read_text())
    ops = _ops(out / "model.onnx")
    assert ops.get(op, 0) >= at_least, ops
    if op in ("MatMulNBits", "MatMulInteger"):
        assert "MatMul" not in ops, ops  # every weight MatMul was quantized
    assert _logits_rel_error(src, out) < tolerance
    gen = load_generator(out)  # onnxruntime-genai reads genai_config.json and the new graph
    assert gen.kind == "genai"
    assert len(gen.generate_ids([1, 5, 6, 7], 8, stop_at_eos=False)) == 8


def test_genai_other_decoder_name_and_graphs_carried(fp32_genai: ModelHandle, tmp_path: Path) -> None:
    """A genai folder whose decoder is not model.onnx (genai_config names it) and that holds another graph:
    the pass rewrites the decoder under its own name and copies the other graph untouched."""
    src = tmp_path / "src"
    shutil.copytree(fp32_genai.path, src)
    (src / "model.onnx").rename(src / "decoder.onnx")  # its weights stay in model.onnx.data
    (src / "vision.onnx").write_bytes(b"not touched")
    cfg = json.loads((src / "genai_config.json").read_text())
    cfg["model"]["decoder"]["filename"] = "decoder.onnx"
    (src / "genai_config.json").write_text(json.dumps(cfg))
    handle, _ = _run("OnnxFloatToFloat16", ModelHandle(kind="genai", path=str(src)), tmp_path)
    out = Path(handle.path)
    assert handle.kind == "genai"
    assert (out / "vision.onnx").read_bytes() == b"not touched"
    assert not (out / "model.onnx").exists() and not (out / "model.onnx.data").exists()
    assert json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "decoder.onnx"
    assert _ops(out / "decoder.onnx").get("GroupQueryAttention") == 2


def test_genai_config_follows_dropped_input_and_refuses_new_one(fp32_genai: ModelHandle, tmp_path: Path) -> None:
    import onnx

    from honed.passes._onnx_common import _match_genai_config

    src = Path(fp32_genai.path) / "model.onnx"
    graph = onnx.load(str(src), load_external_data=False).graph
    ins, outs = {v.name for v in graph.input}, {v.name for v in graph.output}
    cfg_file = tmp_path / "genai_config.json"
    cfg = json.loads((Path(fp32_genai.path) / "genai_config.json").read_text())
    cfg["model"]["decoder"]["inputs"]["position_ids"] = "position_ids"
    cfg_file.write_text(json.dumps(cfg))
    # The source had position_ids; the rewritten graph (src) has not: genai must stop feeding it.
    _match_genai_config(cfg_file, src, (ins | {"position_ids"}, outs), "p")
    written = json.loads(cfg_file.read_text())["model"]["decoder"]
    assert "position_ids" not in written["inputs"] and written["inputs"]["attention_mask"] == "attention_mask"
    with pytest.raises(UserError, match=r"^p: the rewritten decoder has inputs the source lacked \(input_ids\)"):
        _match_genai_config(cfg_file, src, (ins - {"input_ids"}, outs), "p")


# --- use_gqa -------------------------------------------------------------------------------------------------

def test_use_gqa_options() -> None:
    cls = get_pass("OrtTransformersOptimization").config_class
    assert cls(use_gqa=False).use_gqa is False
    assert cls(use_gqa=True, float16=True).use_gqa is True
    with pytest.raises(ValidationError, match="use_gqa: true needs float16: true"):
        cls(use_gqa=True)
    with pytest.raises(ValidationError):
        cls(use_gqa="false")


def test_use_gqa_without_mha_warns_and_keeps_graph(fp32_genai: ModelHandle, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Olive replaces no node then; honed says so in one warning line (ModelBuilder already wrote GQA)."""
    caplog.set_level(logging.WARNING, logger="honed")
    handle, ctx = _run("OrtTransformersOptimization", fp32_genai, tmp_path, float16=True, use_gqa=True)
    [message] = [r.getMessage() for r in caplog.records if r.name == "honed" and r.levelno == logging.WARNING]
    assert "\n" not in message
    assert message.startswith("passes.p (OrtTransformersOptimization): use_gqa: the optimized graph has no "
                              "MultiHeadAttention node (it has 2 GroupQueryAttention)")
    assert ctx.metrics["gqa_replaced"] == 0 and handle.kind == "genai"
    ops = _ops(Path(handle.path) / "model.onnx")
    assert ops.get("GroupQueryAttention") == 2 and "MultiHeadAttention" not in ops


N_HEADS, HEAD = 2, 16  # GroupQueryAttention on CPU wants head sizes in multiples of 16
HIDDEN = N_HEADS * HEAD


def _mha_graph(folder: Path, rotary: bool = True) -> Path:
    """A decoder attention block as onnxruntime's llama fusion leaves it: Q/K/V MatMuls of one input, Q and K
    through RotaryEmbedding, MultiHeadAttention (causal) with past key/value, attention_mask as padding mask."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(1)
    ang = np.outer(np.arange(64), 1.0 / (10000 ** (np.arange(0, HEAD, 2) / HEAD)))
    weights = {n: rng.normal(0, 0.3, (HIDDEN, HIDDEN)) for n in ("Wq", "Wk", "Wv")}
    inits = [nh.from_array(a.astype(np.float32), n) for n, a in {**weights, "cos": np.cos(ang), "sin": np.sin(ang)}.items()]
    nodes = [oh.make_node("MatMul", ["x", f"W{c}"], [c], name=f"{c}_proj") for c in "qkv"]
    q, k = "q", "k"
    if rotary:
        nodes += [oh.make_node("RotaryEmbedding", [c, "position_ids", "cos", "sin"], [c + "r"], domain="com.microsoft",
                               name=f"rotary_{c}") for c in "qk"]
        q, k = "qr", "kr"
    nodes += [
        oh.make_node("Cast", ["attention_mask"], ["mask32"], to=T.INT32, name="mask_cast"),
        oh.make_node("MultiHeadAttention", [q, k, "v", "", "mask32", "", "past_key", "past_value"],
                     ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=N_HEADS,
                     unidirectional=1, name="MultiHeadAttention_0"),
    ]
    kv = ["b", N_HEADS, "p", HEAD]
    graph = oh.make_graph(nodes, "mha", [
        oh.make_tensor_value_info("x", T.FLOAT, ["b", "s", HIDDEN]),
        oh.make_tensor_value_info("attention_mask", T.INT64, ["b", "t"]),
        oh.make_tensor_value_info("position_ids", T.INT64, ["b", "s"]),
        oh.make_tensor_value_info("past_key", T.FLOAT, kv), oh.make_tensor_value_info("past_value", T.FLOAT, kv),
    ], [
        oh.make_tensor_value_info("out", T.FLOAT, ["b", "s", HIDDEN]),
        oh.make_tensor_value_info("present_key", T.FLOAT, ["b", N_HEADS, "t", HEAD]),
        oh.make_tensor_value_info("present_value", T.FLOAT, ["b", N_HEADS, "t", HEAD]),
    ], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def test_use_gqa_replaces_mha_with_same_outputs(tmp_path: Path) -> None:
    """A prompt (4 tokens, no past) and a decoding step (1 token after 3): the fp16 GroupQueryAttention graph
    gives the fp32 MultiHeadAttention graph's output and presents within 0.02 (fp16 rounding; largest value
    about 6). A wrong rotary, mask or head layout is off by O(1)."""
    import onnxruntime as ort

    src = _mha_graph(tmp_path / "mha")
    handle, ctx = _run("OrtTransformersOptimization", ModelHandle(kind="onnx", path=str(src)), tmp_path,
                       model_type="gpt2", num_heads=N_HEADS, hidden_size=HIDDEN, float16=True, use_gqa=True)
    assert ctx.metrics["gqa_replaced"] == 1
    ops = _ops(Path(handle.path) / "model.onnx")
    assert ops.get("GroupQueryAttention") == 1 and "MultiHeadAttention" not in ops and "RotaryEmbedding" not in ops
    assert ops.get("MatMul") == 1  # Q/K/V packed
    ref_s = ort.InferenceSession(str(src / "model.onnx"))
    got_s = ort.InferenceSession(str(Path(handle.path) / "model.onnx"))
    fed = {i.name for i in got_s.get_inputs()}
    assert fed == {"x", "attention_mask", "past_key", "past_value"}  # position_ids: only the rotary read it
    rng = np.random.default_rng(2)
    for past, new in ((0, 4), (3, 1)):
        feeds = {"x": rng.normal(size=(1, new, HIDDEN)), "attention_mask": np.ones((1, past + new), np.int64),
                 "position_ids": np.arange(past, past + new)[None], "past_key": rng.normal(size=(1, N_HEADS, past, HEAD)),
                 "past_value": rng.normal(size=(1, N_HEADS, past, HEAD))}
        feeds = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feeds.items()}
        for ref, got in zip(ref_s.run(None, feeds), got_s.run(None, {k: v for k, v in feeds.items() if k in fed}),
                            strict=True):
            assert ref.shape == got.shape
            assert np.abs(got.astype(np.float32) - ref).max() < 0.02


def test_use_gqa_refuses_mha_it_cannot_rewrite(tmp_path: Path) -> None:
    """Without RotaryEmbedding before Q/K, onnxruntime's replacement would crash; honed stops with one line."""
    src = _mha_graph(tmp_path / "mha", rotary=False)
    with pytest.raises(UserError) as err:
        _run("OrtTransformersOptimization", ModelHandle(kind="onnx", path=str(src)), tmp_path,
             model_type="gpt2", num_heads=N_HEADS, hidden_size=HIDDEN, float16=True, use_gqa=True)
    message = str(err.value)
    assert "\n" not in message
    assert message == ("passes.p (OrtTransformersOptimization): use_gqa cannot replace MultiHeadAttention "
                       "'MultiHeadAttention_0': its query does not come from MatMul [-> Add] -> RotaryEmbedding; "
                       "set use_gqa: false")
