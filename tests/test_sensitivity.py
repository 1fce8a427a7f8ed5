"""ModelBuilder's matmul_mixed_precision 'measured': the fake quantization against onnxruntime's own int4/int8
weights, the ranking against a deliberately fragile layer, the built graph against the choice and the budget,
and the errors a user sees.

Each test names the fault it catches: a fake quantization that is not the builder's RTN grid (wrong scale, zero
point or block axis), a measure that does not see where int4 hurts, overrides that do not reach the builder or
land on other nodes, a choice over budget, an error that is a traceback instead of one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model, load_tokenizer
from honed.passes import _sensitivity as sens
from tests.helpers import cli, run_pass, write_config


def _rows(tmp: Path) -> Path:
    rows = tmp / "cal.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}: the quick brown fox jumps over {i * 7} lazy dogs"}) + "\n"
                            for i in range(16)))
    return rows


def _build(model: Path, out: Path, data: Path | None, **options: Any) -> ModelHandle:
    """ModelBuilder run directly, with the data config 'cal' over ``data`` (none when ``data`` is None)."""
    from honed.data.config import DataConfig
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    cls = get_pass("ModelBuilder")
    configs = {"cal": DataConfig(name="cal", load_dataset_config={"data_files": str(data)})} if data else {}
    ctx = PassContext(pass_name="mb", host=Accelerator(), target=Accelerator(), data_configs=configs,
                      work_dir=out / "work", cache_dir=out / "cache")
    (out / "model").mkdir(parents=True, exist_ok=True)
    handle = cls().run(ModelHandle(kind="hf", path=str(model)), cls.config_class(**options), out / "model", ctx)
    handle.attributes["metrics"] = ctx.metrics
    return handle


def _graph(handle: ModelHandle) -> onnx.ModelProto:
    return onnx.load(str(Path(handle.path) / "model.onnx"))


def _bits(model: onnx.ModelProto) -> dict[str, int]:
    """MatMulNBits node name -> its ``bits`` attribute."""
    return {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in model.graph.node if n.op_type == "MatMulNBits"}


def _dequantized(model: onnx.ModelProto, node_name: str) -> np.ndarray:
    """The (N, K) float32 weight one MatMulNBits node multiplies by, read back from its initializers:
    codes (N, blocks, block*bits/8) low nibble first, scales (N, blocks), zero points packed like the codes (or
    the default 2**(bits-1) when absent)."""
    node = next(n for n in model.graph.node if n.name == node_name)
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    bits, block, k, n = attrs["bits"], attrs["block_size"], attrs["K"], attrs["N"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    packed = inits[node.input[1]].reshape(n, -1)
    blocks = -(-k // block)
    codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1) if bits == 4 else packed
    codes = codes[:, : blocks * block].reshape(n, blocks, block).astype(np.float32)
    scale = inits[node.input[2]].reshape(n, blocks).astype(np.float32)
    if len(node.input) > 3 and node.input[3]:
        zp_packed = inits[node.input[3]].reshape(n, -1)
        zp = (np.stack([zp_packed & 0x0F, zp_packed >> 4], -1).reshape(n, -1) if bits == 4 else zp_packed)
        zp = zp[:, :blocks].astype(np.float32)
    else:
        zp = np.full((n, blocks), 2 ** (bits - 1), dtype=np.float32)
    return ((codes - zp[..., None]) * scale[..., None]).reshape(n, -1)[:, :k]


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_is_onnxruntime_rtn(tiny_llama: Path, tmp_path: Path, symmetric: bool) -> None:
    """The reference computation: onnxruntime's MatMulNBitsQuantizer (RTN, as the builder calls it) wrote these
    codes, scales and zero points; their dequantized weights are what our fake quantization returns, for an
    int4 node (o_proj) and an int8 node (the LM head)."""
    # extra_options: the builder rounds the float weights itself (a plain build gets honed's streamed RTN codes)
    out = _build(tiny_llama, tmp_path, None, precision="int4", int4_is_symmetric=symmetric,
                 matmul_mixed_precision="last_matmul:int8", extra_options={"accuracy_level": 4})
    graph = _graph(out)
    net = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="float32")
    for node, module, bits in (("/model/layers.1/attn/o_proj/MatMul_Q4", "model.layers.1.self_attn.o_proj", 4),
                               ("/lm_head/MatMul_Q8", "lm_head", 8)):
        assert _bits(graph)[node] == bits
        ours = sens.fake_quant(net.get_submodule(module).weight, bits, 32, symmetric).numpy()
        np.testing.assert_allclose(ours, _dequantized(graph, node), rtol=0, atol=1e-6)


def test_fake_quant_pads_a_partial_block() -> None:
    """An input size that is not a whole number of blocks: the last block is quantized as if zero-padded."""
    torch.manual_seed(0)
    w = torch.randn(3, 40)
    padded = torch.nn.functional.pad(w, (0, 24))
    torch.testing.assert_close(sens.fake_quant(w, 4, 32, False), sens.fake_quant(padded, 4, 32, False)[:, :40])


@pytest.mark.parametrize("method", ["kl", "imatrix"])
def test_fragile_layer_ranks_first(tiny_llama: Path, tmp_path: Path, method: str) -> None:
    """Layer 1's q/k/v made fragile without changing the float model: one input feature per block is zeroed by
    the norm before them and their weights on it made huge, so int4's per-block step rounds every other weight
    of those blocks to zero. That group must top the measured ranking and be the first kept at int8 (a measure
    that ignores the rounding grid or the data would not single it out)."""
    handle = ModelHandle(kind="hf", path=str(tiny_llama))
    net = load_model(handle, dtype="float32")
    attn = net.get_submodule("model.layers.1.self_attn")
    with torch.no_grad():
        net.get_submodule("model.layers.1.input_layernorm").weight[::32] = 0
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:, ::32] = proj.weight.abs().max() * 100
    from honed.data.batches import calibration_samples
    from honed.data.config import DataConfig

    samples = calibration_samples(DataConfig(name="cal", load_dataset_config={"data_files": str(_rows(tmp_path))}),
                                  load_tokenizer(handle), 8)
    groups = sens.node_groups(net, fuse_gate_up=False)
    sens.price(net, groups, 32, True)
    before = attn.q_proj.weight.detach().clone()
    sens.measure(net, samples, groups, 32, True, method)  # type: ignore[arg-type]
    assert torch.equal(attn.q_proj.weight, before)  # weights restored after measuring
    ranked = sorted(groups, key=lambda g: g.score, reverse=True)
    assert ranked[0].name == "layers.1.qkv", [(g.name, g.score) for g in ranked]
    assert ranked[0].score > 10 * ranked[1].score
    chosen = sens.choose(groups, budget_bytes=ranked[0].extra_bytes)
    assert [g.name for g in chosen] == ["layers.1.qkv"]


@pytest.mark.parametrize(("method", "k"), [("kl", 8), ("imatrix", 2)])  # imatrix: inputs differ at the start
def test_masked_positions_are_the_only_ones_measured(tiny_llama: Path, tmp_path: Path, method: str, k: int) -> None:
    """In a causal LM the first k positions do not see the rest, so measuring with a mask that keeps the first k
    positions must give the scores of the rows cut to k tokens (a measure that ignored the mask would
    score the whole rows)."""
    from honed.data.batches import calibration_samples
    from honed.data.config import DataConfig

    handle = ModelHandle(kind="hf", path=str(tiny_llama))
    net = load_model(handle, dtype="float32")
    samples = calibration_samples(DataConfig(name="cal", load_dataset_config={"data_files": str(_rows(tmp_path))}),
                                  load_tokenizer(handle), 4)
    assert all(s.shape[-1] > k for s in samples)
    masks = [torch.arange(s.shape[-1]) < k for s in samples]
    masked, cut, whole = (sens.node_groups(net, fuse_gate_up=False) for _ in range(3))
    for groups in (masked, cut, whole):
        sens.price(net, groups, 32, True)
    sens.measure(net, samples, masked, 32, True, method, masks=masks)  # type: ignore[arg-type]
    sens.measure(net, [s[:, :k] for s in samples], cut, 32, True, method)  # type: ignore[arg-type]
    sens.measure(net, samples, whole, 32, True, method)  # type: ignore[arg-type]
    scale = max(c.score for c in cut)  # tiny scores are float noise: compare at the scale of the largest
    for m, c in zip(masked, cut, strict=True):
        assert m.score == pytest.approx(c.score, rel=1e-2, abs=1e-3 * scale), m.name
    assert max(abs(m.score / w.score - 1) for m, w in zip(masked, whole, strict=True) if w.score > 0) > 0.5


def test_node_groups_name_the_builders_nodes(tiny_llama: Path, tiny_phi3: Path) -> None:
    """Llama (separate q/k/v) and Phi-3 (fused qkv_proj and gate_up_proj in HF) map to the same builder names."""
    for path in (tiny_llama, tiny_phi3):
        net = load_model(ModelHandle(kind="hf", path=str(path)), dtype="float32")
        groups = sens.node_groups(net, fuse_gate_up=False)
        names = [n for g in groups for n in g.packed]
        assert names[:5] == ["/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.0/attn/o_proj/MatMul",
                             "/model/layers.0/mlp/gate_proj/MatMul", "/model/layers.0/mlp/up_proj/MatMul",
                             "/model/layers.0/mlp/down_proj/MatMul"]
        assert names[-1] == "/lm_head/MatMul" and len(names) == 11
        sens.price(net, groups, 32, True)
        assert sum(g.weights for g in groups) == sum(
            m.weight.numel() for n, m in net.named_modules() if isinstance(m, torch.nn.Linear))


@pytest.fixture(scope="module")
def measured(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    tmp = tmp_path_factory.mktemp("measured")
    return _build(tiny_llama, tmp, _rows(tmp), precision="int4", matmul_mixed_precision="measured",
                  mixed_precision_budget=5.0)


def test_graph_has_exactly_the_chosen_nodes_at_8_bits(measured: ModelHandle, tiny_llama: Path,
                                                       tmp_path: Path) -> None:
    """sensitivity.json's choice reached the builder: those nodes and the LM head, no others, are 8-bit
    MatMulNBits; the choice fits the budget, and the file grew over an int4 build with an int8 head by what the
    choice was priced at."""
    info = json.loads((Path(measured.path) / "sensitivity.json").read_text())
    by_name = {g["name"]: g for g in info["groups"]}
    assert info["int8"] and all(by_name[n]["int8"] for n in info["int8"])
    expected = {("/lm_head/MatMul" if n == "lm_head" else
                 f"/model/layers.{n.split('.')[1]}/{'attn' if n.endswith(('qkv', 'o_proj')) else 'mlp'}/"
                 f"{'qkv_proj' if n.endswith('qkv') else n.split('.')[2]}/MatMul") + "_Q8" for n in info["int8"]}
    assert "lm_head" not in info["int8"]
    expected.add("/lm_head/MatMul_Q8")
    bits = _bits(_graph(measured))
    assert {n for n, b in bits.items() if b == 8} == expected
    assert {b for n, b in bits.items() if n not in expected} == {4}
    assert info["spent_extra_mib"] <= info["budget_extra_mib"]
    all4 = _build(tiny_llama, tmp_path, None, precision="int4", int4_algo_config="rtn",
                  matmul_mixed_precision="last_matmul:int8")
    grew = sum(f.stat().st_size for f in Path(measured.path).glob("*.onnx*")) - sum(
        f.stat().st_size for f in Path(all4.path).glob("*.onnx*"))
    assert grew <= info["budget_extra_mib"] * 2**20 + 2048  # protobuf framing of the renamed initializers
    assert abs(grew - info["spent_extra_mib"] * 2**20) < 2048
    metrics = measured.attributes["metrics"]
    assert metrics["sensitivity_int8_groups"] == len(expected) - 1 and metrics["sensitivity_seconds"] > 0


def test_measured_build_generates(measured: ModelHandle) -> None:
    import onnxruntime_genai as og

    model = og.Model(measured.path)
    tok = load_tokenizer(ModelHandle(kind="hf", path=measured.path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([tok("the quick brown")["input_ids"]], dtype=np.int32))
    steps = 0
    while not gen.is_done() and steps < 8:
        gen.generate_next_token()
        steps += 1
    assert steps > 0 and len(gen.get_sequence(0)) > len(tok("the quick brown")["input_ids"])


def test_no_data_config_is_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        run_pass("ModelBuilder", tiny_llama, tmp_path, precision="int4", matmul_mixed_precision="measured")
    assert "\n" not in str(e.value) and "sensitivity_data_config" in str(e.value)


@pytest.mark.parametrize(("options", "expected"), [
    ({"mixed_precision_budget": 9}, "passes.mb.mixed_precision_budget"),
    ({"sensitivity_data_config": "nope"}, "nope"),
    ({"int4_algo_config": "k_quant"}, "int4_algo_config"),
])
def test_bad_options_are_one_line(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                  options: dict, expected: str) -> None:
    cfg = write_config(tmp_path / "wf.json", {
        "input_model": {"model_path": str(tiny_llama)},
        "data_configs": [{"name": "cal", "load_dataset_config": {"data_files": str(_rows(tmp_path))}}],
        "passes": {"mb": {"type": "ModelBuilder", "precision": "int4", "matmul_mixed_precision": "measured",
                          **options}},
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    })
    assert cli("run", "--config", str(cfg), "--dry-run") == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1 and expected in lines[0], err


def test_tied_model_shares_the_int8_head_with_its_embedding(tiny_llama: Path, tmp_path: Path) -> None:
    """A tied model (SmolLM2) keeps one int8 matrix for the head and the embedding, as the fixed mix does: no
    float vocab x hidden embedding beside it (which doubled SmolLM2's folder to 217 MiB)."""
    import shutil

    tied = tmp_path / "tied"
    shutil.copytree(tiny_llama, tied)
    cfg = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    built = _build(tied, tmp_path / "out", _rows(tmp_path), precision="int4", matmul_mixed_precision="measured",
                   mixed_precision_budget=5.0)
    ops = {n.name: n.op_type for n in _graph(built).graph.node}
    assert ops.get("/model/embed_tokens/GatherBlockQuantized") == "GatherBlockQuantized"
    assert "/model/embed_tokens/Gather" not in ops
