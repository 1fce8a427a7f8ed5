"""ModelBuilder: HF causal LM -> onnxruntime-genai folder (fp32 agreement, int4 size, errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.systems.accelerator import Accelerator


def _ctx(tmp: Path) -> PassContext:
    return PassContext(pass_name="builder", host=Accelerator(), target=Accelerator(), data_configs={},
                       work_dir=tmp / "work", cache_dir=tmp / "cache")


def _build(src: Path, tmp: Path, **options) -> tuple[ModelHandle, PassContext]:
    cls = get_pass("ModelBuilder")
    ctx = _ctx(tmp)
    out = tmp / "out"
    out.mkdir(parents=True)
    return cls().run(ModelHandle(kind="hf", path=str(src)), cls.config_class(**options), out, ctx), ctx


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"precision": "int4"}, True),
        ({"precision": "int4", "int4_block_size": 64, "int4_accuracy_level": 4}, True),
        ({"precision": "fp16", "extra_options": {"enable_cuda_graph": True}}, True),
        ({"precision": "int3"}, False),
        ({"precision": "int4", "int4_block_size": 48}, False),
        ({"precision": "int4", "unknown": 1}, False),
    ],
)
def test_config_validation(options: dict, ok: bool) -> None:
    cls = get_pass("ModelBuilder").config_class
    if ok:
        assert cls.model_validate(options).precision == options["precision"]
    else:
        with pytest.raises(ValidationError):
            cls.model_validate(options)


def test_all_onnx_passes_registered() -> None:
    for name in ("ModelBuilder", "OnnxConversion", "OnnxDynamicQuantization", "OnnxStaticQuantization",
                 "OnnxBlockWiseRtnQuantization", "OnnxHqqQuantization", "OnnxFloatToFloat16",
                 "OrtTransformersOptimization"):
        assert get_pass(name) is not None, name


def test_fp32_greedy_matches_hf(tiny_causal_lm: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.models.onnx_runtime import load_generator

    handle, ctx = _build(tiny_causal_lm, tmp_path, precision="fp32", check_outputs=True, check_tolerance=1e-4)
    assert handle.kind == "genai"
    folder = Path(handle.path)
    for name in ("model.onnx", "genai_config.json", "tokenizer.json"):
        assert (folder / name).is_file(), name
    assert ctx.metrics["max_abs_diff"] < 1e-4

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    hf = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()
    gen = load_generator(folder)
    for prompt in ("the quick brown fox", "### Text: My old dog died"):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
        assert gen.generate_ids(ids, 10) == ref


def test_int4_has_matmulnbits_and_is_small(tmp_path: Path) -> None:
    """A hidden-256 model, so the quantized matrices dominate the file (the fixtures' embeddings do)."""
    import onnx
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.tiny_models import build_tokenizer

    src = tmp_path / "llama256"
    tok = build_tokenizer(src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)

    sizes = {}
    for precision in ("fp32", "int4"):
        handle, _ = _build(src, tmp_path / precision, precision=precision)
        folder = Path(handle.path)
        sizes[precision] = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
        ops = {n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}
        assert ("MatMulNBits" in ops) == (precision == "int4")
    assert sizes["int4"] < 0.35 * sizes["fp32"], sizes


def test_unsupported_architecture_is_a_user_error(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"BertForSequenceClassification.*LlamaForCausalLM.*OnnxConversion"):
        _build(tiny_bert, tmp_path, precision="fp32")


def test_seed_inference_loop_runs_on_output(tiny_llama: Path, tmp_path: Path) -> None:
    """The onnxruntime-genai loop users copy from the docs, unchanged, on the builder's folder."""
    import onnxruntime_genai as og

    handle, _ = _build(tiny_llama, tmp_path, precision="int4")
    model = og.Model(handle.path)
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("### Text: I passed the exam\n### The tone is:\n"))
    text, n = "", 0
    while not generator.is_done():
        generator.generate_next_token()
        text += stream.decode(generator.get_next_tokens()[0])
        n += 1
    assert n > 0
    assert isinstance(text, str)


@pytest.mark.parametrize(("block", "accuracy", "symmetric"), [(16, 1, True), (64, 4, False)])
def test_int4_options_reach_the_graph(tiny_llama: Path, tmp_path: Path, block: int, accuracy: int,
                                      symmetric: bool) -> None:
    """The builder ignores its old `int4_*` option names silently; check each option lands in the graph."""
    import onnx

    handle, _ = _build(tiny_llama, tmp_path, precision="int4", int4_block_size=block,
                       int4_accuracy_level=accuracy, int4_is_symmetric=symmetric, int4_algo_config="default")
    graph = onnx.load(str(Path(handle.path) / "model.onnx"), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nodes
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["block_size"] == block and attrs["accuracy_level"] == accuracy
        assert (len(n.input) > 3 and n.input[3] != "") == (not symmetric)  # zero points only when asymmetric


def _matmul_bits(folder: str) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False).graph
    return {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["bits"]
            for n in graph.node if n.op_type == "MatMulNBits"}


@pytest.mark.parametrize(("options", "head_bits"), [
    ({}, 8),  # the default: RTN with the LM head and sensitive layers at 8 bits
    ({"int4_algo_config": "k_quant_mixed"}, 8),
    ({"matmul_mixed_precision": "none"}, 4),
    ({"int4_algo_config": "default"}, 4),  # Olive's plain RTN
])
def test_mixed_precision_sets_the_lm_head_width(tiny_llama: Path, tmp_path: Path, options: dict[str, str],
                                                head_bits: int) -> None:
    handle, _ = _build(tiny_llama, tmp_path, precision="int4", **options)
    bits = _matmul_bits(handle.path)
    assert [b for name, b in bits.items() if name.startswith("/lm_head/")] == [head_bits]
    assert 4 in bits.values()
