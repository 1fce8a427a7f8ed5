"""honed's streamed int4 RTN codes (honed.models.rtn) give the genai folder the builder's own RTN writes.

The ModelBuilder pass rounds the decoder weights itself, tensor by tensor, and hands the builder the codes; these
tests build the same float model with the builder rounding it (build_genai with the options the pass would give it)
and require every MatMulNBits node to match: its attributes (bits, block size, K, N) and its weight, scale and
zero-point bytes (the streamed build's are named ``...MatMulNBits.qweight``, the builder's ``...MatMul.weight_Q4G32``;
the scales are 1-D in one and (N, blocks) in the other, so they are compared flattened); every other initializer,
byte for byte; and the sequence of operators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from honed.errors import UserError
from honed.models import memory
from honed.models.quantized import rtn_quantize
from honed.models.rtn import mixed_layers, rtn_plan
from tests.tiny_models import build_causal_lm

CASES = {
    # name: (arch, build_causal_lm overrides, ModelBuilder fields)
    "llama-default-mix": ("llama", {"num_hidden_layers": 9}, {}),
    "phi3-tied-asym": ("phi3", {"num_hidden_layers": 9, "tie_word_embeddings": True}, {"int4_is_symmetric": False}),
    "llama-head-only-asym": ("llama", {"num_hidden_layers": 3},
                             {"int4_is_symmetric": False, "matmul_mixed_precision": "last_matmul:int8"}),
    "phi3-all-int4-block16": ("phi3", {"num_hidden_layers": 2},
                              {"int4_algo_config": "rtn", "int4_block_size": 16}),
    "llama-mixed-layers-only": ("llama", {"num_hidden_layers": 8}, {"matmul_mixed_precision": "mixed_layers:int8"}),
}


def _graph(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]]:
    """MatMulNBits nodes by their MatMul's name -> (attributes, input arrays flattened), the other initializers by
    name, the operator sequence."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(folder / "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    nbits: dict[str, Any] = {}
    used: set[str] = set()
    for n in m.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        key = n.name.replace("/MatMulNBits", "/MatMul").removesuffix("_Q4").removesuffix("_Q8")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        arrays = [numpy_helper.to_array(inits[i]).reshape(-1) for i in n.input[1:] if i]
        nbits[key] = (attrs, arrays)
        used.update(n.input[1:])
    others = {k: numpy_helper.to_array(t) for k, t in inits.items() if k not in used}
    return nbits, others, [n.op_type for n in m.graph.node]


def _float_build(src: Path, out: Path, fields: dict[str, Any]) -> None:
    """The builder rounding the float weights itself, with the options the pass gives it."""
    from honed.passes.model_builder import DEFAULT_MIXED_PRECISION, _staged_source, build_genai

    algo = fields.get("int4_algo_config")
    mixed = fields.get("matmul_mixed_precision") or (DEFAULT_MIXED_PRECISION if algo is None else None)
    options: dict[str, Any] = {"block_size": fields.get("int4_block_size", 32),
                               "is_symmetric": fields.get("int4_is_symmetric", True), "algo_config": "rtn"}
    if mixed:
        options["matmul_mixed_precision"] = mixed
    build_genai(_staged_source(src, out / "work"), out / "model", "int4", "cpu", out / "cache", options)


def _pass(src: Path, out: Path, **fields: Any) -> tuple[Any, dict[str, Any]]:
    """The ModelBuilder pass on ``src`` into ``out``: its output handle and metrics."""
    from honed.models.handle import ModelHandle
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    cls = get_pass("ModelBuilder")
    ctx = PassContext(pass_name="b", host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=out / "work", cache_dir=out / "cache")
    (out / "model").mkdir(parents=True, exist_ok=True)
    handle = cls().run(ModelHandle(kind="hf", path=str(src)), cls.config_class(**fields), out / "model", ctx)
    return handle, ctx.metrics


def _generates(folder: Path) -> int:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("the quick brown fox"))
    n = 0
    while not generator.is_done():
        generator.generate_next_token()
        n += 1
    return n


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_codes_build_what_the_builder_rounds(case: str, tmp_path: Path) -> None:
    """Catches: blocks rounded in another order, symmetric and asymmetric swapped, an 8-bit (mixed_layers) module
    written at 4 bits or the other way, a fused Phi-3 projection split wrongly, zero points packed wrongly or left in
    a symmetric graph, the LM head not left to the builder at int8."""
    arch, overrides, fields = CASES[case]
    src = build_causal_lm(tmp_path / "src", arch, **overrides)
    handle, metrics = _pass(src, tmp_path / "streamed", precision="int4", fidelity_samples=0, **fields)
    assert metrics.get("int4_codes_mb"), "the pass did not stream the codes"
    _float_build(src, tmp_path / "float", fields)
    ours, our_others, our_ops = _graph(Path(handle.path))
    theirs, their_others, their_ops = _graph(tmp_path / "float" / "model")
    assert sorted(ours) == sorted(theirs)
    for node, (attrs, arrays) in theirs.items():
        got_attrs, got_arrays = ours[node]
        assert got_attrs == attrs, node
        assert len(got_arrays) == len(arrays), f"{node}: zero points present in one build only"
        for got, want in zip(got_arrays, arrays, strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want), node
    assert sorted(our_others) == sorted(their_others)
    for name, want in their_others.items():
        assert np.array_equal(our_others[name], want), name
    assert our_ops == their_ops
    assert _generates(Path(handle.path)) > 0


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_quantize_is_onnxruntimes_quant_tensor(bits: int, symmetric: bool) -> None:
    """Catches: a scale or zero point computed in another precision or order than onnxruntime's (ties, constant
    blocks, all-positive blocks, a partial last block are in the data)."""
    import torch
    from onnxruntime.quantization.neural_compressor.weight_only import pad_tensor, quant_tensor

    g = torch.Generator().manual_seed(bits + symmetric)
    w = (torch.randn(24, 80, generator=g) * 0.02).to(torch.bfloat16).float()
    w[0, :32] = 0.0  # a constant block
    w[1, :32] = w[1, :32].abs() + 0.01  # an all-positive block
    w[2, :32] = torch.arange(32) / 2 * 0.01  # halfway values
    codes, scales, zeros = rtn_quantize(w, bits, 32, symmetric)
    wt = w.numpy().T  # onnxruntime quantizes the (in, out) fp32 initializer, padded along `in`
    wt = pad_tensor(wt, 32, 3)
    q, scale, zp = quant_tensor(wt.T, bits, 32, "sym" if symmetric else "asym", "uint")
    assert np.array_equal(codes.numpy().reshape(-1), q.astype(np.uint8).reshape(-1))
    assert np.array_equal(scales.numpy().reshape(-1), scale.astype(np.float32).reshape(-1))
    assert np.array_equal(zeros.numpy().reshape(-1), np.asarray(zp).astype(np.uint8).reshape(-1))


def test_mixed_layers_is_the_builders_preset() -> None:
    """Catches: another layer list than onnxruntime-genai's mixed_layers (llama.cpp's)."""
    assert mixed_layers(9) == [0, 1, 3, 6, 8]
    assert mixed_layers(32) == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


@pytest.mark.parametrize(("overrides", "kwargs", "reason"), [
    ({"hidden_size": 48, "num_attention_heads": 4}, {"block_size": 32, "symmetric": True}, "input features"),
    ({"hidden_size": 96, "num_attention_heads": 4}, {"block_size": 32, "symmetric": False}, "even number"),
])
def test_plan_refuses_what_the_builder_pads_otherwise(overrides: dict, kwargs: dict, reason: str,
                                                      tmp_path: Path) -> None:
    """Catches: a partial block or an odd block count (whose zero points onnxruntime packs across rows) streamed."""
    src = build_causal_lm(tmp_path / "m", "llama", **overrides)
    plan = rtn_plan(src, mixed_layers_bits=8, **kwargs)
    assert isinstance(plan, str) and reason in plan


def test_preflight_estimates_the_streamed_build(tiny_llama: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: the preflight estimating the builder's float rounding (4x) for a streamed build, or a float build's
    refusal not saying what lets honed stream it."""
    monkeypatch.setenv(memory.ENV_LIMIT, "0.001")
    with pytest.raises(UserError, match=r"ModelBuilder \(b\) on .*needs about .*\(codes x 2 "):
        _pass(tiny_llama, tmp_path / "s", precision="int4")
    with pytest.raises(UserError, match=r"weights 0.0 fp32 .*let honed round int4 itself.*here int4_algo_config is "
                                        r"'k_quant'"):
        _pass(tiny_llama, tmp_path / "f", precision="int4", int4_algo_config="k_quant")
