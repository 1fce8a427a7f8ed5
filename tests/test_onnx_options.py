"""ONNX pass options Olive workflows use: low target_opset, OnnxIOFloat16ToFloat32, quantizer extra_options
(MatMulConstBOnly), the "quantized nothing" errors, and footprints that read precisions from the files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.onnx_runtime import OnnxSession
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator
from tests.helpers import cli, write_config


def _run(name: str, src: ModelHandle, tmp: Path, **options):
    cls = get_pass(name)
    ctx = PassContext(pass_name=name, host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=tmp / "work", cache_dir=tmp / "cache")
    out = tmp / "out"
    out.mkdir(parents=True)
    return cls().run(src, cls.config_class(**options), out, ctx), ctx


def _proto(handle: ModelHandle):
    import onnx

    path = Path(handle.path)
    return onnx.load(str(path / "model.onnx" if path.is_dir() else path))


def _opset(handle: ModelHandle) -> int:
    return next(o.version for o in _proto(handle).opset_import if o.domain in ("", "ai.onnx"))


@pytest.fixture(scope="module")
def llama17(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelHandle, dict]:
    """tiny_llama exported at opset 17 (the TorchScript exporter, past key/values as inputs/outputs)."""
    handle, ctx = _run("OnnxConversion", ModelHandle(kind="hf", path=str(tiny_llama)),
                       tmp_path_factory.mktemp("llama17"), target_opset=17)
    return handle, ctx.metrics


# --- OnnxConversion target_opset < 18 -----------------------------------------------------------------------


def test_opset17_causal_lm_matches_torch(llama17, tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    handle, metrics = llama17
    assert _opset(handle) == 17 and metrics["opset"] == 17 and handle.attributes["opset"] == 17
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    sess = OnnxSession(handle.path)
    rng = np.random.default_rng(0)
    for b, s in [(1, 1), (3, 4), (2, 13)]:  # shapes other than the traced (2, 3): the axes are dynamic
        ids = rng.integers(5, hf.config.vocab_size, size=(b, s))
        mask = np.ones_like(ids)
        if b > 1:
            mask[0, 0] = 0  # left padding
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(sess.position_ids(mask))).logits.numpy()
        got = sess.run(ids, mask)[0]
        np.testing.assert_allclose(got[mask.astype(bool)], ref[mask.astype(bool)], atol=1e-4, err_msg=f"{(b, s)}")
    # a decode step on a non-empty past (the past length axis is dynamic too)
    ids = rng.integers(5, hf.config.vocab_size, size=(2, 8))
    _, past = sess.step(ids[:, :6], np.ones((2, 6), dtype=np.int64), None)
    logits, _ = sess.step(ids[:, 6:], np.ones((2, 8), dtype=np.int64), past)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids)).logits[:, 6:].numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4)


def test_opset14_classifier_matches_torch(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    handle, ctx = _run("OnnxConversion", ModelHandle(kind="hf", path=str(tiny_bert)), tmp_path, target_opset=14)
    assert _opset(handle) == 14 and ctx.metrics["opset"] == 14
    assert "LayerNormalization" not in Counter(n.op_type for n in _proto(handle).graph.node)  # opset 17+ op
    hf = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    ids = np.random.default_rng(1).integers(5, hf.config.vocab_size, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(OnnxSession(handle.path).run(ids, mask)[0], ref, atol=1e-4)


def test_exporter_writing_another_opset_is_an_error(tiny_bert: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's dynamo exporter keeps opset 18 when it cannot convert down (LayerNormalization to 14, for one)
    and only logs it; honed reads the opset written and refuses. The export is stubbed to write opset 18."""
    import onnx
    from onnx import TensorProto, helper

    from honed.passes import onnx_conversion

    def export_at_18(model, task, out_file, opset, dynamo, external) -> None:
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(out_file))

    monkeypatch.setattr(onnx_conversion, "export_encoder", export_at_18)
    with pytest.raises(UserError, match=r"target_opset 14 but the dynamo exporter wrote opset 18.*"
                                        r"use_dynamo_exporter: false"):
        _run("OnnxConversion", ModelHandle(kind="hf", path=str(tiny_bert)), tmp_path, target_opset=14,
             use_dynamo_exporter=True)


@pytest.mark.parametrize(("options", "dynamo", "ok"), [
    ({"target_opset": 13}, False, True),
    ({"target_opset": 18}, True, True),
    ({"target_opset": 17, "use_dynamo_exporter": True}, True, True),
    ({"target_opset": 20, "use_dynamo_exporter": False}, False, True),
    ({"target_opset": 21, "use_dynamo_exporter": False}, None, False),  # TorchScript writes up to 20
    ({"target_opset": 6}, None, False),
    ({"target_opset": 24}, None, False),
])
def test_conversion_opset_config(options: dict, dynamo: bool | None, ok: bool) -> None:
    cls = get_pass("OnnxConversion").config_class
    if ok:
        assert cls.model_validate(options).dynamo is dynamo
    else:
        with pytest.raises(ValidationError):
            cls.model_validate(options)


# --- OnnxIOFloat16ToFloat32 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_fp16(llama17, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    return _run("OnnxFloatToFloat16", llama17[0], tmp_path_factory.mktemp("fp16"))[0]


def _io_types(handle: ModelHandle) -> dict[str, int]:
    g = _proto(handle).graph
    return {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output)}


@pytest.mark.parametrize(("pattern", "converted"), [(None, "all"), ("logits", "logits"), ("present", "present")])
def test_io_float16_to_float32(llama_fp16: ModelHandle, tmp_path: Path, pattern: str | None, converted: str) -> None:
    import onnx

    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    before = _io_types(llama_fp16)
    floats = {n for n, t in before.items() if t == fp16}
    assert "logits" in floats and any(n.startswith("past_key_values") for n in floats)  # the fixture is fp16 I/O
    out, ctx = _run("OnnxIOFloat16ToFloat32", llama_fp16, tmp_path, name_pattern=pattern)
    after = _io_types(out)
    want = {n for n in floats if converted == "all" or re.search(converted, n)}
    assert {n for n, t in after.items() if t == fp32} == want
    assert {n for n, t in after.items() if t == fp16} == floats - want
    assert ctx.metrics["converted_inputs"] + ctx.metrics["converted_outputs"] == len(want)
    onnx.checker.check_model(_proto(out))

    # Same numbers as the fp16 model: the casts at the boundary are exact for fp16 values.
    ids = np.random.default_rng(2).integers(5, 200, size=(2, 7))
    mask = np.ones_like(ids)
    a, b = OnnxSession(llama_fp16.path), OnnxSession(out.path)
    ref, past = a.step(ids, mask, None)
    got, past32 = b.step(ids, mask, None)
    assert got.dtype == (np.float32 if "logits" in want else np.float16)
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), atol=1e-3)
    for name, value in past32.items():
        present = name.replace("past_key_values", "present")
        assert value.dtype == (np.float32 if present in want else np.float16), present
    # and with a non-empty past, fed as fp32 exactly where the inputs were converted
    feed = {k: v.astype(np.float32 if k in want else np.float16) for k, v in past32.items()}
    nxt = np.array([[9], [11]])
    ref2, _ = a.step(nxt, np.ones((2, 8), dtype=np.int64), past)
    got2, _ = b.step(nxt, np.ones((2, 8), dtype=np.int64), feed)
    np.testing.assert_allclose(got2.astype(np.float32), ref2.astype(np.float32), atol=1e-3)


def test_io_conversion_with_nothing_to_convert_warns(llama17, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="honed"):
        out, ctx = _run("OnnxIOFloat16ToFloat32", llama17[0], tmp_path)
    assert ctx.metrics["converted_outputs"] == 0
    assert "no float16 input/output matches name_pattern 'logits'" in caplog.text
    assert _io_types(out) == _io_types(llama17[0])


def test_io_conversion_keeps_a_genai_folder_a_genai_folder(tiny_llama: Path, tmp_path: Path) -> None:
    """Olive's web recipe: ModelBuilder (fp16 I/O for a GPU target), then fp32 logits."""
    import onnx

    builder = get_pass("ModelBuilder")
    (tmp_path / "b").mkdir()
    ctx = PassContext(pass_name="b", host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=tmp_path / "bw", cache_dir=tmp_path / "bc")
    genai = builder().run(ModelHandle(kind="hf", path=str(tiny_llama)),
                          builder.config_class(precision="fp16", execution_provider="cuda"), tmp_path / "b", ctx)
    assert _io_types(genai)["logits"] == onnx.TensorProto.FLOAT16
    out, _ = _run("OnnxIOFloat16ToFloat32", genai, tmp_path / "io")
    assert out.kind == "genai" and (Path(out.path) / "genai_config.json").is_file()
    types = _io_types(out)
    assert types["logits"] == onnx.TensorProto.FLOAT
    assert types["past_key_values.0.key"] == onnx.TensorProto.FLOAT16  # the default name_pattern is 'logits'


# --- quantizer extra_options --------------------------------------------------------------------------------


def _two_matmuls(path: Path) -> ModelHandle:
    """Z = X @ Y (activation x activation), out = Z @ W (W a constant weight)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "Y"], ["Z"], name="act_matmul"),
         helper.make_node("MatMul", ["Z", "W"], ["out"], name="weight_matmul")],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 32]),
              helper.make_tensor_value_info("Y", TensorProto.FLOAT, [32, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])],
        [onnx.numpy_helper.from_array(w, "W")],
    )
    path.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path / "model.onnx"))
    return ModelHandle(kind="onnx", path=str(path))


def _activation_matmul_quantized(handle: ModelHandle) -> bool:
    """Whether X @ Y now runs on integers (its float MatMul is gone)."""
    g = _proto(handle).graph
    return not any(n.op_type == "MatMul" and set(n.input) == {"X", "Y"} for n in g.node)


@pytest.mark.parametrize(("const_b_only", "quantizes_activation_matmul"), [(None, False), (True, False),
                                                                         (False, True)])
def test_matmul_const_b_only_is_applied(tmp_path: Path, const_b_only: bool | None,
                                        quantizes_activation_matmul: bool) -> None:
    src = _two_matmuls(tmp_path / "src")
    extra = {} if const_b_only is None else {"MatMulConstBOnly": const_b_only}
    out, _ = _run("OnnxDynamicQuantization", src, tmp_path / "q", quant_preprocess=False, extra_options=extra)
    ops = Counter(n.op_type for n in _proto(out).graph.node)
    assert ops["MatMulInteger"] == (2 if quantizes_activation_matmul else 1)
    assert _activation_matmul_quantized(out) is quantizes_activation_matmul


@pytest.mark.parametrize(("name", "extra", "match"), [
    ("OnnxDynamicQuantization", {"MatMulConstBOnlyy": True}, "did you mean 'MatMulConstBOnly'"),
    ("OnnxDynamicQuantization", {"CalibMovingAverage": True}, "a static-quantization option"),
    ("OnnxDynamicQuantization", {"MatMulConstBOnly": "false"}, "must be true or false"),
    ("OnnxStaticQuantization", {"WeightSymetric": False}, "did you mean 'WeightSymmetric'"),
])
def test_unknown_or_mistyped_extra_options_are_errors(name: str, extra: dict, match: str) -> None:
    cls = get_pass(name).config_class
    base = {"data_config": "d"} if name == "OnnxStaticQuantization" else {}
    with pytest.raises(ValidationError, match=match):
        cls.model_validate({**base, "extra_options": extra})
    ok = {"MatMulConstBOnly": False, "DefaultTensorType": 1, "ActivationSymmetric": True}
    assert cls.model_validate({**base, "extra_options": ok}).extra_options == ok


def test_extra_option_lists_match_onnxruntime_docs() -> None:
    """honed's lists are the keys the installed onnxruntime documents (plus the two it reads undocumented)."""
    import importlib
    import inspect

    from honed.passes._onnx_common import ORT_DYNAMIC_EXTRA_OPTIONS, ORT_STATIC_EXTRA_OPTIONS

    q = importlib.import_module("onnxruntime.quantization.quantize")

    def documented(*objs) -> set[str]:
        keys: set[str] = set()
        for obj in objs:
            section = (inspect.getdoc(obj) or "").split("extra_options:", 1)[1]
            keys |= set(re.findall(r"^\s*([A-Za-z][\w.]*)\s*=", section, re.MULTILINE))
        return keys

    assert ORT_DYNAMIC_EXTRA_OPTIONS - {"DefaultTensorType"} == documented(q.quantize_dynamic)
    assert ORT_STATIC_EXTRA_OPTIONS - {"DefaultTensorType", "CalibPercentile"} == documented(
        q.quantize_static, q.StaticQuantConfig.__init__)


# --- no silent change: a quantizer that quantizes nothing is an error ----------------------------------------


@pytest.fixture(scope="module")
def llama_int4(llama17, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    return _run("OnnxBlockWiseRtnQuantization", llama17[0], tmp_path_factory.mktemp("int4"), block_size=32)[0]


@pytest.fixture(scope="module")
def llama_int8(llama17, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    return _run("OnnxDynamicQuantization", llama17[0], tmp_path_factory.mktemp("int8"))[0]


@pytest.mark.parametrize(("source", "name", "options"), [
    ("int4", "OnnxBlockWiseRtnQuantization", {}),
    ("int4", "OnnxHqqQuantization", {}),
    ("int4", "OnnxDynamicQuantization", {"op_types_to_quantize": ["MatMul"]}),
    ("int8", "OnnxBlockWiseRtnQuantization", {}),
    ("int8", "OnnxDynamicQuantization", {"op_types_to_quantize": ["MatMul"]}),
])
def test_quantizing_a_quantized_model_is_an_error(request: pytest.FixtureRequest, tmp_path: Path, source: str,
                                                  name: str, options: dict) -> None:
    src = request.getfixturevalue(f"llama_{source}")
    already = "MatMulNBits" if source == "int4" else "MatMulInteger"
    with pytest.raises(UserError, match=rf"^passes\.{name} \({name}\): nothing to quantize: .*already has .*"
                                        rf"\d+ {already}") as e:
        _run(name, src, tmp_path, **options)
    assert "\n" not in str(e.value)


def test_model_without_weight_matmul_is_an_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["X", "Y"], ["Z"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 32]),
                               helper.make_tensor_value_info("Y", TensorProto.FLOAT, [32, 16])],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [4, 16])])
    (tmp_path / "m").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m/model.onnx"))
    src = ModelHandle(kind="onnx", path=str(tmp_path / "m"))
    no_weight = r"\): nothing to quantize: no .*MatMul.* node has a float constant weight; remove the pass"
    with pytest.raises(UserError, match="OnnxBlockWiseRtnQuantization" + no_weight):
        _run("OnnxBlockWiseRtnQuantization", src, tmp_path / "rtn")
    with pytest.raises(UserError, match="OnnxDynamicQuantization" + no_weight):
        _run("OnnxDynamicQuantization", src, tmp_path / "dyn", quant_preprocess=False)
    # ...which MatMulConstBOnly false makes quantizable
    _, ctx = _run("OnnxDynamicQuantization", src, tmp_path / "q", quant_preprocess=False,
                    extra_options={"MatMulConstBOnly": False})
    assert ctx.metrics["quantized_ops_added"] > 0


def test_nodes_to_include_quantizes_only_those(llama17, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime adds nodes_to_include to the op types; honed (like Olive's RTN) quantizes only them."""
    g = _proto(llama17[0]).graph
    inits = {t.name for t in g.initializer}
    weight_matmuls = [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(weight_matmuls) > 2
    out, _ = _run("OnnxBlockWiseRtnQuantization", llama17[0], tmp_path / "one", block_size=32,
                  nodes_to_include=weight_matmuls[:2])
    assert Counter(n.op_type for n in _proto(out).graph.node)["MatMulNBits"] == 2
    # Eligible MatMuls exist, but nodes_to_include names none of them: the quantizer writes nothing.
    with caplog.at_level("WARNING", logger="honed"), \
            pytest.raises(UserError, match=r"OnnxBlockWiseRtnQuantization\): quantized nothing"):
        _run("OnnxBlockWiseRtnQuantization", llama17[0], tmp_path / "none", nodes_to_include=["no_such_node"])
    assert "nodes_to_include names no node no_such_node" in caplog.text


def test_int4_twice_in_a_workflow_exits_2_naming_the_pass(llama17, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    wf = write_config(tmp_path / "wf.json", {
        "input_model": {"type": "ONNXModel", "model_path": llama17[0].path},
        "passes": {"int4": {"type": "OnnxBlockWiseRtnQuantization", "block_size": 32},
                   "int4_again": {"type": "OnnxBlockWiseRtnQuantization", "block_size": 32}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    capsys.readouterr()
    assert cli("run", "--config", str(wf)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert err[0].startswith("error: passes.int4_again (OnnxBlockWiseRtnQuantization): nothing to quantize")
    assert not (tmp_path / "out" / "footprints.json").exists()


# --- footprints describe the files ----------------------------------------------------------------------------


def _initializer_bytes(handle: ModelHandle) -> Counter:
    """Bytes per numpy dtype of the initializers, computed from the arrays themselves."""
    import onnx

    out: Counter = Counter()
    for t in _proto(handle).graph.initializer:
        arr = onnx.numpy_helper.to_array(t)
        out[str(arr.dtype)] += arr.nbytes
    return out


def test_model_contents_int8(llama_int8: ModelHandle, llama17) -> None:
    from honed.engine.footprints import model_contents

    c = model_contents(llama_int8)
    per_dtype = _initializer_bytes(llama_int8)
    assert c["weight_bytes"]["int8"] == per_dtype["int8"] > 0
    assert c["weight_mib"]["int8"] == round(per_dtype["int8"] / 2**20, 4)
    ops = Counter(n.op_type for n in _proto(llama_int8).graph.node)
    assert c["op_counts"]["MatMulInteger"] == ops["MatMulInteger"] > 0
    assert c["op_counts"]["DynamicQuantizeLinear"] == ops["DynamicQuantizeLinear"] > 0
    assert c["opset"] == _opset(llama_int8)
    # int8 weights are about a quarter of the float ones they replaced
    f32 = model_contents(llama17[0])["weight_bytes"]
    assert "int8" not in f32 and f32["float32"] > c["weight_bytes"]["float32"]


def test_model_contents_int4_counts_packed_weights_as_int4(llama_int4: ModelHandle) -> None:
    import onnx

    from honed.engine.footprints import model_contents

    g = _proto(llama_int4).graph
    inits = {t.name: t for t in g.initializer}
    packed = sum(onnx.numpy_helper.to_array(inits[n.input[1]]).nbytes for n in g.node if n.op_type == "MatMulNBits")
    c = model_contents(llama_int4)
    assert c["weight_bytes"]["int4"] == packed > 0
    assert c["weight_bytes"].get("uint8", 0) == _initializer_bytes(llama_int4)["uint8"] - packed
    assert c["op_counts"]["MatMulNBits"] == sum(n.op_type == "MatMulNBits" for n in g.node)


def test_footprints_json_reads_precisions_from_the_output(llama17, tmp_path: Path) -> None:
    wf = write_config(tmp_path / "wf.json", {
        "input_model": {"type": "ONNXModel", "model_path": llama17[0].path},
        "passes": {"int8": {"type": "OnnxDynamicQuantization"}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    assert cli("run", "--config", str(wf)) == 0
    fp = json.loads((tmp_path / "out" / "footprints.json").read_text())
    contents = fp["output_model"]["contents"]
    assert contents["weight_bytes"]["int8"] > 0 and contents["op_counts"]["MatMulInteger"] > 0
    assert fp["steps"][0]["metrics"]["model_contents"] == contents
    # a cache hit reports the same
    assert cli("run", "--config", str(wf)) == 0
    again = json.loads((tmp_path / "out" / "footprints.json").read_text())
    assert again["steps"][0]["cached"] and again["steps"][0]["metrics"]["model_contents"] == contents
