"""Gptq: the algorithm against reference computations, its checkpoint format, and the chain to onnxruntime-genai.

Each test names the fault it catches: rounding that ignores the Hessian (plain round-to-nearest), nibbles packed
in the wrong order, zero points dropped, a builder that rounds the codes again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model
from honed.models.quantized import dequantize, dequantized_state_dict, pack_codes, unpack_codes
from honed.passes.gptq import GptqConfig, dequantized, gptq_linear
from tests.helpers import run_pass


def rtn_reference(w: np.ndarray, bits: int, group: int, sym: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest per group, written independently of honed (GPTQ's quantizer: min/max with 0 included)."""
    maxq = 2**bits - 1
    g = w.reshape(w.shape[0], -1, group)
    lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    if sym:
        hi = np.maximum(-lo, hi)
        lo = -hi
    scale = (hi - lo) / maxq
    zero = np.full_like(scale, (maxq + 1) / 2) if sym else np.round(-lo / scale)
    codes = np.clip(np.round(g / scale[..., None]) + zero[..., None], 0, maxq)
    return codes.reshape(w.shape), scale, zero


@pytest.mark.parametrize(("bits", "cols"), [(4, 64), (4, 33), (8, 16)])
def test_pack_round_trip(bits: int, cols: int) -> None:
    codes = torch.randint(0, 2**bits, (5, cols))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-cols * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, cols), codes)
    if bits == 4:  # low nibble first, as MatMulNBits reads it
        assert packed[0, 0].item() == codes[0, 0].item() | (codes[0, 1].item() << 4)


@pytest.mark.parametrize("sym", [False, True])
def test_identity_hessian_is_round_to_nearest(sym: bool) -> None:
    """Uncorrelated inputs: GPTQ has no error to spread, so its codes are exactly RTN's."""
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    cfg = GptqConfig(data_config="d", group_size=16, sym=sym)
    q = gptq_linear(w, torch.eye(64) * 2, cfg)
    codes, scale, zero = rtn_reference(w.numpy(), 4, 16, sym)
    np.testing.assert_array_equal(q.codes.numpy(), codes)
    np.testing.assert_allclose(q.scales.numpy(), scale, rtol=1e-6)
    np.testing.assert_array_equal(q.zeros.numpy(), zero)
    # the dequantized weight is (code - zero) * scale, within half a step of the original
    deq = dequantized(q, 16).numpy()
    np.testing.assert_allclose(deq, ((codes.reshape(8, 4, 16) - zero[..., None]) * scale[..., None]).reshape(8, 64),
                               rtol=1e-6, atol=1e-7)
    assert np.abs(deq - w.numpy()).max() <= scale.max() * (1.0 if sym else 0.5) + 1e-6


def test_gptq_beats_round_to_nearest_on_correlated_inputs() -> None:
    """The point of GPTQ: on the calibration inputs, ||XW^T - XQ^T|| well below RTN's (paper, Table 1 setting)."""
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated features
    w = torch.randn(32, 64)
    cfg = GptqConfig(data_config="d", group_size=32)
    q = gptq_linear(w, 2 * x.T @ x / len(x), cfg)
    codes, scale, zero = rtn_reference(w.numpy(), 4, 32, False)
    rtn = torch.tensor(((codes.reshape(32, 2, 32) - zero[..., None]) * scale[..., None]).reshape(32, 64),
                       dtype=torch.float32)
    err_gptq = torch.linalg.norm(x @ (w - dequantized(q, 32)).T)
    err_rtn = torch.linalg.norm(x @ (w - rtn).T)
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)


def _data(tmp_path: Path) -> dict:
    rows = tmp_path / "cal.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}: the quick brown fox jumps over {i * 7} lazy dogs"}) + "\n"
                            for i in range(16)))
    return {"name": "cal", "load_dataset_config": {"data_files": str(rows)}}


def _gptq(model: Path, tmp_path: Path, **options) -> ModelHandle:
    from honed.data.config import DataConfig
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    cls = get_pass("Gptq")
    ctx = PassContext(pass_name="gptq", host=Accelerator(), target=Accelerator(),
                      data_configs={"cal": DataConfig(**_data(tmp_path))}, work_dir=tmp_path / "work",
                      cache_dir=tmp_path / "cache")
    return cls().run(ModelHandle(kind="hf", path=str(model)), cls.config_class(data_config="cal", **options),
                     tmp_path / "gptq", ctx)


def _logits(net, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(ids).logits[0].numpy()


@pytest.mark.parametrize("true_sequential", [False, True])
def test_checkpoint_loads_as_its_dequantized_weights(tiny_causal_lm: Path, tmp_path: Path,
                                                     true_sequential: bool) -> None:
    out = _gptq(tiny_causal_lm, tmp_path, group_size=32, true_sequential=true_sequential)
    qc = json.loads((Path(out.path) / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "olive" and qc["bits"] == 4 and qc["group_size"] == 32
    state = dequantized_state_dict(out.path)
    net = load_model(out)
    src = load_model(ModelHandle(kind="hf", path=str(tiny_causal_lm)))
    quantized = [k for k in state if k.endswith(".weight") and "layers" in k and state[k].dim() == 2]
    assert quantized
    for key in quantized:
        loaded = net.get_parameter(key).detach()
        assert torch.equal(loaded, state[key].to(loaded.dtype)), key
        # 16 levels per group: at most 16 distinct values in any row's first group
        assert len(torch.unique(loaded[0, :32])) <= 16, key
        assert not torch.equal(loaded, src.get_parameter(key).detach()), key
    ids = torch.tensor([[5, 9, 14, 22, 31, 40, 7, 8]])
    assert np.abs(_logits(net, ids) - _logits(src, ids)).max() < 0.5  # close to the source, not equal


def test_model_builder_keeps_the_gptq_codes(tiny_causal_lm: Path, tmp_path: Path) -> None:
    """The genai int4 build's MatMulNBits hold the checkpoint's codes, scales and zero points unchanged, and its
    logits match the dequantized PyTorch model's."""
    import onnx
    import onnxruntime_genai as og
    from onnx import numpy_helper
    from safetensors.torch import load_file

    out = _gptq(tiny_causal_lm, tmp_path, group_size=32)
    genai = run_pass("ModelBuilder", out, tmp_path / "mb", precision="int4")
    graph = onnx.load(str(next(Path(genai.path).rglob("model.onnx"))))
    init = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    tensors = load_file(str(Path(out.path) / "model.safetensors"))
    prefix = "model.layers.0.self_attn.o_proj"
    node = next(n for n in graph.graph.node if n.op_type == "MatMulNBits" and "layers.0/attn/o_proj" in n.name)
    qweight, scales, zeros = (init[name] for name in node.input[1:4])
    np.testing.assert_array_equal(qweight.reshape(-1), tensors[prefix + ".qweight"].numpy().reshape(-1))
    np.testing.assert_allclose(scales.reshape(-1), tensors[prefix + ".scales"].numpy().reshape(-1), rtol=1e-3)
    np.testing.assert_array_equal(zeros.reshape(-1), tensors[prefix + ".qzeros"].numpy().reshape(-1))

    ids = np.array([[5, 9, 14, 22, 31, 40, 7, 8]], dtype=np.int32)
    model = og.Model(genai.path)
    gen = og.Generator(model, og.GeneratorParams(model))
    gen.append_tokens(ids)
    got = gen.get_output("logits")[0]
    want = _logits(load_model(out), torch.tensor(ids, dtype=torch.long))
    # the LM head is rounded to int8 by the builder and MatMulNBits computes in int8 on CPU: a few % of the range
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() + 1e-3


def test_lm_head_option_quantizes_the_head(tiny_llama: Path, tmp_path: Path) -> None:
    out = _gptq(tiny_llama, tmp_path, group_size=32, lm_head=True)
    state = dequantized_state_dict(out.path)
    assert "lm_head.weight" in state
    cfg = json.loads((Path(out.path) / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    head = load_model(out).get_output_embeddings().weight.detach()
    assert torch.equal(head, state["lm_head.weight"].to(head.dtype))


def test_footprint_contents_name_the_quantization(tiny_llama: Path, tmp_path: Path) -> None:
    from honed.engine.footprints import model_contents

    out = _gptq(tiny_llama, tmp_path, group_size=32)
    contents = model_contents(out)
    assert contents["quantization"]["algorithm"] == "gptq" and contents["quantization"]["bits"] == 4
    assert contents["quantization"]["quantized_linears"] == 14
    assert contents["weight_bytes"]["int4"] > 0


def test_desc_act_is_a_config_error() -> None:
    """Refused when the config is validated, so a dry run reports it."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="desc_act true is not supported"):
        GptqConfig(data_config="d", desc_act=True)


@pytest.mark.parametrize(("options", "says"), [
    ({"group_size": 128}, "does not divide the model's hidden_size 64, intermediate_size 128; set group_size "
                          "to 16 or 32 or 64"),
    ({"group_size": 32, "data_config": "missing"}, "'missing' is not defined"),
])
def test_bad_options_are_one_line_errors(tiny_llama: Path, tmp_path: Path, options: dict, says: str) -> None:
    if options.get("data_config") == "missing":
        from honed.data.config import DataConfig
        from honed.passes.base import PassContext
        from honed.passes.gptq import Gptq
        from honed.util.accelerator import Accelerator

        ctx = PassContext(pass_name="gptq", host=Accelerator(), target=Accelerator(),
                          data_configs={"cal": DataConfig(**_data(tmp_path))}, work_dir=tmp_path / "w",
                          cache_dir=tmp_path / "c")
        with pytest.raises(UserError, match=says):
            Gptq().run(ModelHandle(kind="hf", path=str(tiny_llama)), GptqConfig(**options), tmp_path / "o", ctx)
        return
    with pytest.raises(UserError, match=says):
        _gptq(tiny_llama, tmp_path, **options)


def test_model_builder_refuses_float_precision_for_a_quantized_model(tiny_llama: Path, tmp_path: Path) -> None:
    out = _gptq(tiny_llama, tmp_path, group_size=32)
    with pytest.raises(UserError, match="already quantized to int4"):
        run_pass("ModelBuilder", out, tmp_path / "mb", precision="fp32")


def test_dequantize_matches_the_formula() -> None:
    codes = torch.tensor([[0, 15, 7, 8]])
    zeros = torch.tensor([[8, 1]])
    scales = torch.tensor([[0.5, 2.0]])
    w = dequantize(pack_codes(codes, 4), scales, pack_codes(zeros, 4), 4, 2)
    assert w.tolist() == [[-4.0, 3.5, 12.0, 14.0]]


def test_block_size_changes_speed_not_the_result() -> None:
    """Lazy batch updates (block_size) are exact: blocks of 32 columns give the codes one block of 128 gives."""
    torch.manual_seed(1)
    x = torch.randn(256, 128) @ torch.randn(128, 128)
    w = torch.randn(16, 128)
    h = 2 * x.T @ x / len(x)
    one = gptq_linear(w, h, GptqConfig(data_config="d", group_size=32, block_size=128))
    four = gptq_linear(w, h, GptqConfig(data_config="d", group_size=32, block_size=32))
    assert (one.codes == four.codes).float().mean() > 0.99


def test_fewer_rows_than_asked_is_said(tiny_llama: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="honed"):
        out = _gptq(tiny_llama, tmp_path, group_size=32, num_samples=64)
    assert "gave 16 calibration rows, fewer than the 64 asked for" in caplog.text
    assert json.loads((Path(out.path) / "config.json").read_text())["quantization_config"]["bits"] == 4


# HF linear or builder node (q/k/v packed) -> its sensitivity group (gate and up share one: one width per HF linear)
_GROUP = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "qkv_proj": "qkv", "o_proj": "o_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"}


def test_measured_mix_keeps_the_chosen_linears_at_8_bits_through_the_builder(tiny_llama: Path,
                                                                             tmp_path: Path) -> None:
    """mixed_precision 'measured': the groups sensitivity.json chose are GPTQ'd to 8 bits (codes above 15, listed
    in the checkpoint's overrides), the rest to 4; ModelBuilder keeps exactly those widths per MatMulNBits node
    (the LM head int8 besides), and the folder generates. Catches widths that never reach GPTQ or the
    checkpoint, and a builder that rounds everything to the global width."""
    import onnx
    import onnxruntime_genai as og
    from safetensors.torch import load_file

    out = _gptq(tiny_llama, tmp_path, group_size=32, mixed_precision="measured", mixed_precision_budget=6.0)
    info = json.loads((Path(out.path) / "sensitivity.json").read_text())
    assert info["int8"] and len(info["int8"]) < len(info["groups"])
    assert info["spent_extra_mib"] <= info["budget_extra_mib"]
    qc = json.loads((Path(out.path) / "config.json").read_text())["quantization_config"]
    eight = set(qc["overrides"])
    assert {v["bits"] for v in qc["overrides"].values()} == {8}
    assert {f"layers.{m.split('.')[2]}.{_GROUP[m.rsplit('.', 1)[-1]]}" for m in eight} == set(info["int8"])
    tensors = load_file(str(Path(out.path) / "model.safetensors"))
    for key in (k for k in tensors if k.endswith(".qweight")):
        module = key[: -len(".qweight")]
        width = 8 if module in eight else 4
        codes = unpack_codes(tensors[key], width, tensors[key].shape[1] * 8 // width)
        assert int(codes.max()) > 15 if module in eight else int(codes.max()) <= 15, module

    genai = run_pass("ModelBuilder", out, tmp_path / "mb", precision="int4")
    graph = onnx.load(str(next(Path(genai.path).rglob("model.onnx"))))
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop("/lm_head/MatMul_Q8", None) == 8 or bits.pop("/lm_head/MatMul_Q4", None) == 8
    for name, b in bits.items():
        layer, proj = name.split("/")[2], name.split("/")[4]
        assert b == (8 if f"{layer}.{_GROUP[proj]}" in info["int8"] else 4), name
    model = og.Model(genai.path)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=12)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([[5, 9, 14, 22]], dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    assert len(gen.get_sequence(0)) == 12


def test_measured_mix_needs_4_bits() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set bits 4"):
        GptqConfig(data_config="d", bits=8, mixed_precision="measured")


def _mb(model: Path, tmp_path: Path, with_data: bool, **options) -> ModelHandle:
    """ModelBuilder run directly; the data config 'cal' (16 rows) when ``with_data``; its metrics in attributes."""
    from honed.data.config import DataConfig
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    cls = get_pass("ModelBuilder")
    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = PassContext(pass_name="mb", host=Accelerator(), target=Accelerator(),
                      data_configs={"cal": DataConfig(**_data(tmp_path))} if with_data else {},
                      work_dir=tmp_path / "work", cache_dir=tmp_path / "cache")
    handle = cls().run(ModelHandle(kind="hf", path=str(model)), cls.config_class(**options), tmp_path / "model", ctx)
    handle.attributes["metrics"] = ctx.metrics
    return handle


def _initializers(handle: ModelHandle) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(next(Path(handle.path).rglob("model.onnx")))).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def test_gptq_build_is_the_gptq_pass_then_the_builder(tiny_llama: Path, tmp_path: Path) -> None:
    """int4_algo_config 'gptq': exactly what Gptq (asymmetric, block 32, the measured int8 mix) then ModelBuilder
    builds: the same MatMulNBits initializers, sensitivity.json in the folder, and its fidelity measured against
    the float input. precision int4 alone (the default) stays RTN with the fixed mix, data or not. Catches a gptq
    build that is RTN, drops the measured mix, or compares the output with the GPTQ checkpoint."""
    default = _mb(tiny_llama, tmp_path / "default", True, precision="int4", int4_algo_config="gptq")
    metrics = default.attributes["metrics"]
    assert metrics["quantized_linears"] == 14 and metrics["sensitivity_int8_groups"] >= 1
    assert (Path(default.path) / "sensitivity.json").is_file()
    assert metrics["kl_mean"] > 0  # against the float input: the GPTQ checkpoint itself would give about 0
    (tmp_path / "explicit").mkdir()
    explicit = run_pass("ModelBuilder", _gptq(tiny_llama, tmp_path / "explicit", group_size=32,
                                              mixed_precision="measured"), tmp_path / "explicit-mb", precision="int4")
    ours, theirs = _initializers(default), _initializers(explicit)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    import onnx

    graph = onnx.load(str(next(Path(default.path).rglob("model.onnx")))).graph
    assert any(next(a.i for a in n.attribute if a.name == "bits") == 8 for n in graph.node
               if n.op_type == "MatMulNBits" and "layers" in n.name)  # the measured mix reached the build

    plain = _mb(tiny_llama, tmp_path / "plain", True, precision="int4")
    assert not (Path(plain.path) / "sensitivity.json").exists()
    assert "quantized_linears" not in plain.attributes["metrics"]


@pytest.mark.parametrize(("options", "says"), [
    ({"precision": "int4", "int4_algo_config": "gptq"}, "has no data config to calibrate on"),
    ({"precision": "int4", "int4_algo_config": "gptq", "calibration_data_config": "nope"},
     "calibration_data_config 'nope' is not defined"),
])
def test_gptq_build_errors_are_one_line(tiny_llama: Path, tmp_path: Path, options: dict, says: str) -> None:
    with pytest.raises(UserError, match=says):
        _mb(tiny_llama, tmp_path, options.get("calibration_data_config") is not None, **options)


def test_gptq_build_refuses_a_fixed_mix() -> None:
    from pydantic import ValidationError

    from honed.passes.model_builder import ModelBuilderConfig

    with pytest.raises(ValidationError, match="remove the fixed matmul_mixed_precision"):
        ModelBuilderConfig(precision="int4", int4_algo_config="gptq", matmul_mixed_precision="last_matmul:int8")


def test_answer_weight_is_a_weighted_hessian() -> None:
    """Weights w_t scale each position's outer product (H = 2/sum(w) sum w_t x_t x_t^T): an integer weight is the
    same as repeating the row, and uniform weights are plain GPTQ's Hessian."""
    import torch

    from honed.passes.gptq import _Hessian

    torch.manual_seed(0)
    x = torch.randn(1, 6, 8)
    w = torch.tensor([1.0, 1, 4, 1, 1, 1])
    weighted, repeated, uniform, plain = _Hessian(8), _Hessian(8), _Hessian(8), _Hessian(8)
    weighted.add(x, w)
    repeated.add(torch.cat([x[:, :2], x[:, 2:3].repeat(1, 4, 1), x[:, 3:]], 1))
    uniform.add(x, torch.full((6,), 3.0))
    plain.add(x)
    torch.testing.assert_close(weighted.H, repeated.H)
    torch.testing.assert_close(uniform.H, plain.H)
