"""Awq: scale folding that keeps the float model, codes that are the pass's own math, an error below plain
round-to-nearest, and the chain to onnxruntime-genai through the pass, the CLI and an Olive config.

Each test names the fault it catches: a fold that multiplies where it should divide, codes rounded from the
unscaled weight or a scale that is not the searched one, a search that makes things worse than RTN, a format
the builder cannot read, a CLI or Olive name that does not reach the pass.
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
from honed.models.quantized import dequantized_state_dict
from honed.passes.awq import AwqConfig, awq_model
from tests.helpers import cli, run_pass
from tests.test_gptq import rtn_reference

GROUP = 32


def _rows(tmp_path: Path) -> Path:
    rows = tmp_path / "cal.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}: the quick brown fox jumps over {i * 7} lazy dogs"}) + "\n"
                            for i in range(16)))
    return rows


def _ctx(tmp_path: Path):
    from honed.data.config import DataConfig
    from honed.passes.base import PassContext
    from honed.util.accelerator import Accelerator

    return PassContext(pass_name="awq", host=Accelerator(), target=Accelerator(),
                       data_configs={"cal": DataConfig(name="cal", load_dataset_config={
                           "data_files": str(_rows(tmp_path))})},
                       work_dir=tmp_path / "work", cache_dir=tmp_path / "cache")


def _awq(model: Path, tmp_path: Path, **options) -> ModelHandle:
    from honed.passes.base import get_pass

    cls = get_pass("Awq")
    return cls().run(ModelHandle(kind="hf", path=str(model)),
                     cls.config_class(data_config="cal", q_group_size=GROUP, **options), tmp_path / "awq",
                     _ctx(tmp_path))


def _samples(model: Path, tmp_path: Path) -> list[torch.Tensor]:
    """The calibration token ids the pass sees (the data config's 16 rows, tokenized)."""
    from honed.data.batches import calibration_samples
    from honed.models.loaders import load_tokenizer

    ctx = _ctx(tmp_path)
    return calibration_samples(ctx.data_configs["cal"], load_tokenizer(ModelHandle(kind="hf", path=str(model))), 128)


def _layer_inputs(net, samples: list[torch.Tensor]) -> list[list[tuple[tuple, dict]]]:
    """Per decoder layer of ``net``, the (args, kwargs) it is called with on each sample."""
    layers = net.model.layers
    seen: list[list[tuple[tuple, dict]]] = [[] for _ in layers]
    hooks = [layer.register_forward_pre_hook(lambda m, a, k, i=i: seen[i].append((a, k)), with_kwargs=True)
             for i, layer in enumerate(layers)]
    with torch.no_grad():
        for ids in samples:
            net(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return seen


def _out(out) -> torch.Tensor:
    """A decoder layer's hidden states (transformers returns a tensor or a tuple led by it)."""
    return out[0] if isinstance(out, tuple) else out


def _rtn_dequantized(w: np.ndarray, sym: bool = False) -> np.ndarray:
    codes, scale, zero = rtn_reference(w, 4, GROUP, sym)
    g = codes.reshape(w.shape[0], -1, GROUP)
    return ((g - zero[..., None]) * scale[..., None]).reshape(w.shape)


def test_scaled_float_model_computes_the_same_logits(tiny_llama: Path, tmp_path: Path) -> None:
    """Folding 1/s into the norms (and up_proj) and s into the linears' columns changes no output; the scales are
    not all 1, so a fold that multiplies instead of divides shows."""
    net = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="float32")
    norms = [layer.input_layernorm.weight.detach().clone() for layer in net.model.layers]
    ids = torch.tensor([[5, 9, 14, 22, 31, 40, 7, 8, 60, 61]])
    with torch.no_grad():
        before = net(ids).logits
    assert awq_model(net, _samples(tiny_llama, tmp_path), AwqConfig(data_config="d", q_group_size=GROUP),
                     quantize=False) == {}
    with torch.no_grad():
        after = net(ids).logits
    assert not any(torch.allclose(n, layer.input_layernorm.weight) for n, layer in zip(norms, net.model.layers,
                                                                                         strict=True))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


def test_codes_are_the_searched_scale_then_round_to_nearest(tiny_llama: Path, tmp_path: Path) -> None:
    """q_proj of layer 0 (not clipped, nothing rescales its rows): its written codes dequantize exactly to
    round-to-nearest (GPTQ's grid, written independently in test_gptq) of ``W * s``, where ``s`` is what the
    written input_layernorm was divided by; and ``s`` is the candidate mean|x|^a / mean|w|^(1-a) with the
    lowest quantized output error on the calibration inputs, recomputed here in numpy."""
    out = _awq(tiny_llama, tmp_path)
    state = dequantized_state_dict(out.path)
    src = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="float32")
    attn = src.model.layers[0].self_attn
    s = (src.model.layers[0].input_layernorm.weight.detach() / state["model.layers.0.input_layernorm.weight"]).numpy()
    wq = attn.q_proj.weight.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(state["model.layers.0.self_attn.q_proj.weight"].numpy(),
                               _rtn_dequantized(wq * s[None, :]), rtol=1e-5, atol=1e-6)

    # the scale search, independently: x = layer 0's normed inputs, w = q/k/v stacked
    xs: list[np.ndarray] = []
    hook = attn.q_proj.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1]).numpy()))
    with torch.no_grad():
        for ids in _samples(tiny_llama, tmp_path):
            src(input_ids=ids, use_cache=False)
    hook.remove()
    x = np.concatenate(xs).astype(np.float64)
    w = np.concatenate([m.weight.detach().numpy() for m in (attn.q_proj, attn.k_proj, attn.v_proj)]).astype(np.float64)
    x_mean = np.abs(x).mean(0)
    g = np.abs(w).reshape(-1, GROUP)
    w_mean = (g / g.max(1, keepdims=True)).reshape(w.shape).mean(0)
    want = x @ w.T
    candidates, losses = [], []
    for i in range(20):
        c = np.maximum(x_mean ** (i / 20) / np.maximum(w_mean ** (1 - i / 20), 1e-4), 1e-4)
        c = c / np.sqrt(c.max() * c.min())
        candidates.append(c)
        losses.append(((x @ (_rtn_dequantized(w * c) / c).T - want) ** 2).mean())
    chosen = [i for i, c in enumerate(candidates) if np.allclose(c, s, rtol=1e-4)]
    assert chosen, "the folded scale is none of the candidates"
    assert losses[chosen[0]] <= min(losses) * (1 + 1e-3), (chosen, losses)


def test_awq_error_is_below_round_to_nearest(tiny_llama: Path, tmp_path: Path) -> None:
    """The point of the method: on the calibration inputs, a decoder layer of the AWQ model (dequantized, with
    its scaled norms) is closer to the float layer than the same layer with its weights rounded to nearest on
    the same grid."""
    out = _awq(tiny_llama, tmp_path)
    src = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="float32")
    awq = load_model(out)
    rtn = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="float32")
    with torch.no_grad():
        for p in rtn.model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.tensor(_rtn_dequantized(p.numpy().astype(np.float64)), dtype=p.dtype))
    inputs = _layer_inputs(src, _samples(tiny_llama, tmp_path))
    errors = []
    with torch.no_grad():
        for i, calls in enumerate(inputs):
            want = [_out(src.model.layers[i](*a, **k)) for a, k in calls]
            errors.append(tuple(sum(float((_out(net.model.layers[i](*a, **k)) - w).pow(2).mean())
                                    for (a, k), w in zip(calls, want, strict=True)) for net in (awq, rtn)))
    assert any(a <= r for a, r in errors), errors
    assert all(a > 0 for a, _ in errors)  # it did quantize


def test_model_builder_builds_the_awq_checkpoint(tiny_llama: Path, tmp_path: Path) -> None:
    """The Awq output is Olive's format (algorithm awq); ModelBuilder builds it to an int4 genai folder that
    onnxruntime-genai loads and generates from."""
    import onnxruntime_genai as og

    out = _awq(tiny_llama, tmp_path)
    qc = json.loads((Path(out.path) / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "olive", "bits": 4, "group_size": GROUP, "symmetric": False, "lm_head": False,
                  "embeds": False, "overrides": None, "modules_to_not_convert": [], "algorithm": "awq"}
    genai = run_pass("ModelBuilder", out, tmp_path / "mb", precision="int4")
    model = og.Model(genai.path)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=12)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([[5, 9, 14, 22]], dtype=np.int32))
    new = 0
    while not gen.is_done():
        gen.generate_next_token()
        new += 1
    assert new >= 3


def test_fused_projections_are_a_one_line_error(tiny_phi3: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"fused projections \(self_attn.qkv_proj, mlp.gate_up_proj\); .* use the "
                                        r"Gptq pass") as e:
        _awq(tiny_phi3, tmp_path)
    assert "\n" not in str(e.value)


def test_cli_quantize_awq_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    """``honed quantize --algorithm awq``: --group-size reaches Awq's q_group_size, and the result is a genai
    folder built from AWQ codes."""
    out = tmp_path / "out"
    assert cli("quantize", "-m", str(tiny_llama), "--algorithm", "awq", "--precision", "int4", "--group-size",
               str(GROUP), "--num-samples", "4", "-d", str(_rows(tmp_path)), "--text-template", "{text}",
               "-o", str(out), "--save-config", str(tmp_path / "wf.json")) == 0
    assert (out / "genai_config.json").is_file()
    passes = json.loads((tmp_path / "wf.json").read_text())["passes"]
    assert passes["quantization"] == {"type": "Awq", "w_bit": 4, "data_config": "calibration",
                                      "q_group_size": GROUP, "num_samples": 4}
    assert passes["builder"] == {"type": "ModelBuilder", "precision": "int4"}


def test_olive_auto_awq_quantizer_runs_as_awq() -> None:
    """Olive's AutoAWQQuantizer keeps its option names; its keys honed does not use are warnings."""
    from honed.config.olive import translate

    t = translate({"passes": {"awq": {"type": "AutoAWQQuantizer", "w_bit": 4, "q_group_size": 64,
                                      "zero_point": False, "duo_scaling": False, "version": "gemm",
                                      "pack_model_for_onnx_conversion": True, "data_config": "cal"}}})
    assert t.config["passes"]["awq"] == {"type": "Awq", "w_bit": 4, "q_group_size": 64, "zero_point": False,
                                         "duo_scaling": False, "data_config": "cal"}
    said = "\n".join(t.warnings)
    assert "AutoAWQQuantizer runs as Awq" in said
    assert "passes.awq.version" in said and "passes.awq.pack_model_for_onnx_conversion" in said
    AwqConfig(**{k: v for k, v in t.config["passes"]["awq"].items() if k != "type"})
