"""OnnxConversion (dynamo export) and the ONNX quantization / optimization passes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from honed.models.handle import ModelHandle
from honed.models.onnx_runtime import OnnxSession
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator


def _run(name: str, src: ModelHandle, tmp: Path, data_configs: dict | None = None, **options):
    cls = get_pass(name)
    ctx = PassContext(pass_name=name, host=Accelerator(), target=Accelerator(), data_configs=data_configs or {},
                      work_dir=tmp / "work", cache_dir=tmp / "cache")
    out = tmp / "out"
    out.mkdir(parents=True)
    return cls().run(src, cls.config_class(**options), out, ctx), ctx


def _ops(handle: ModelHandle) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(Path(handle.path) / "model.onnx")).graph.node)


@pytest.fixture(scope="module")
def onnx_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelHandle, dict]:
    handle, ctx = _run("OnnxConversion", ModelHandle(kind="hf", path=str(tiny_llama)),
                       tmp_path_factory.mktemp("conv_llama"))
    return handle, ctx.metrics


@pytest.fixture(scope="module")
def onnx_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelHandle, dict]:
    handle, ctx = _run("OnnxConversion", ModelHandle(kind="hf", path=str(tiny_bert)),
                       tmp_path_factory.mktemp("conv_bert"))
    return handle, ctx.metrics


SHAPES = [(1, 1), (1, 9), (3, 4), (2, 17)]


def _inputs(b: int, s: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(b * 100 + s)
    ids = rng.integers(5, vocab, size=(b, s))
    mask = np.ones_like(ids)
    if b > 1 and s > 1:
        mask[0, :1] = 0  # a left-padded row
    return ids, mask


def test_causal_lm_conversion_matches_torch(onnx_llama, tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    handle, metrics = onnx_llama
    assert handle.kind == "onnx" and handle.task == "text-generation"
    assert (Path(handle.path) / "tokenizer.json").is_file()
    assert metrics["max_abs_diff"] < 1e-4
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    sess = OnnxSession(handle.path)
    assert len(sess.past_names) == 2 * hf.config.num_hidden_layers
    for b, s in SHAPES:
        ids, mask = _inputs(b, s, hf.config.vocab_size)
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(sess.position_ids(mask))).logits.numpy()
        got = sess.run(ids, mask)[0]
        keep = mask.astype(bool)
        np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, err_msg=f"shape {(b, s)}")


def test_causal_lm_past_key_values_step(onnx_llama, tiny_llama: Path) -> None:
    """Prefill then one decode step with the returned past equals a full forward."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    sess = OnnxSession(onnx_llama[0].path)
    ids = np.random.default_rng(1).integers(5, hf.config.vocab_size, size=(2, 8))
    _, past = sess.step(ids[:, :6], np.ones((2, 6), dtype=np.int64), None)
    logits, past = sess.step(ids[:, 6:], np.ones((2, 8), dtype=np.int64), past)
    assert next(iter(past.values())).shape[2] == 8
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids)).logits[:, 6:].numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4)


def test_bert_classifier_conversion_matches_torch(onnx_bert, tiny_bert: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    handle, metrics = onnx_bert
    assert handle.task == "text-classification"
    assert metrics["max_abs_diff"] < 1e-4
    hf = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    sess = OnnxSession(handle.path)
    for b, s in SHAPES:
        ids, mask = _inputs(b, s, hf.config.vocab_size)
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        got = sess.run(ids, mask)[0]
        assert got.shape == (b, hf.config.num_labels)
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"shape {(b, s)}")


def _max_diff(a: ModelHandle, b: ModelHandle, vocab: int = 200) -> float:
    ids, mask = _inputs(2, 7, vocab)
    return float(np.abs(OnnxSession(a.path).run(ids, mask)[0].astype(np.float32)
                        - OnnxSession(b.path).run(ids, mask)[0].astype(np.float32)).max())


@pytest.mark.parametrize(
    ("pass_name", "options", "op", "tolerance"),
    [
        ("OnnxDynamicQuantization", {}, "MatMulInteger", 0.2),
        ("OnnxBlockWiseRtnQuantization", {"block_size": 32}, "MatMulNBits", 0.5),
        ("OnnxBlockWiseRtnQuantization", {"block_size": 16, "is_symmetric": False}, "MatMulNBits", 0.5),
        ("OnnxHqqQuantization", {"block_size": 32}, "MatMulNBits", 0.5),
        ("OnnxFloatToFloat16", {}, "MatMul", 0.01),
    ],
)
def test_llm_quantization_runs(onnx_llama, tmp_path: Path, pass_name: str, options: dict, op: str,
                               tolerance: float) -> None:
    from honed.models.runtime import OnnxRuntime as OnnxGenerator

    src = onnx_llama[0]
    out, ctx = _run(pass_name, src, tmp_path, **options)
    assert _ops(out)[op] > 0
    assert ctx.metrics["onnx_size_mb"] > 0
    assert 0 < _max_diff(src, out) < tolerance  # changed, but still the same model
    assert len(OnnxGenerator(Path(out.path)).generate_ids([5, 6, 7], 4, stop_at_eos=False)) == 4


def test_bert_optimize_then_dynamic_int8(onnx_bert, tmp_path: Path) -> None:
    src = onnx_bert[0]
    fused, ctx = _run("OrtTransformersOptimization", src, tmp_path / "opt")
    assert ctx.metrics["fused_operators"].get("SkipLayerNormalization", 0) > 0
    assert _max_diff(src, fused) < 1e-4
    q, _ = _run("OnnxDynamicQuantization", fused, tmp_path / "q")
    assert _ops(q)["MatMulInteger"] > 0
    assert _max_diff(src, q) < 0.05


def test_static_quantization_with_calibration_data(onnx_bert, tmp_path: Path) -> None:
    from honed.data.config import DataConfig

    rows = tmp_path / "calib.jsonl"
    rows.write_text("\n".join(json.dumps({"text": t}) for t in
                              ["a cat sat on the mat", "numbers one two three", "the lights went out",
                               "they threw me a party"]))
    dc = DataConfig(name="calib", load_dataset_config={"data_files": str(rows)},
                    pre_process_data_config={"text_template": "{text}"})
    out, ctx = _run("OnnxStaticQuantization", onnx_bert[0], tmp_path, {"calib": dc}, data_config="calib")
    assert ctx.metrics["calibration_samples"] == 4
    ops = _ops(out)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert _max_diff(onnx_bert[0], out) < 0.1


def test_static_quantization_unknown_data_config(onnx_bert, tmp_path: Path) -> None:
    from honed.errors import UserError

    with pytest.raises(UserError, match="data_config 'nope'"):
        _run("OnnxStaticQuantization", onnx_bert[0], tmp_path, data_config="nope")


def test_onnx_causal_lm_greedy_matches_hf(onnx_llama, tiny_llama: Path) -> None:
    from honed.models.runtime import load_generator

    onnx_gen, hf_gen = load_generator(onnx_llama[0].path), load_generator(tiny_llama)
    assert (onnx_gen.kind, hf_gen.kind) == ("onnx", "hf")
    ids = hf_gen.encode("### Text: They threw me a party")
    assert onnx_gen.generate_ids(ids, 10, stop_at_eos=False) == hf_gen.generate_ids(ids, 10, stop_at_eos=False)
