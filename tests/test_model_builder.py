"""ModelBuilder: HF causal LM -> onnxruntime-genai folder (fp32 agreement, int4 size, errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator


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

    from honed.models.runtime import load_generator

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


# --- Olive's ModelBuilder options: extra_options, metadata_only, enable_GQA_on_CPU --------------------------


@pytest.mark.parametrize(("extra", "match"), [
    ({"int4_blocksize": 32}, "'int4_blocksize' is not an option of the installed onnxruntime-genai model builder; "
                             "did you mean 'block_size'"),
    ({"no_such_option": 1}, "not an option of the installed onnxruntime-genai model builder; the builder knows: "),
    ({"config_only": True}, "set metadata_only: true instead"),
    ({"block_size": 32, "int4_block_size": 64}, "repeats 'block_size'"),
    ({"filename": ["a", "b"]}, "takes one value, not a list"),
])
def test_unknown_extra_options_are_refused_in_one_line(extra: dict, match: str) -> None:
    cls = get_pass("ModelBuilder").config_class
    with pytest.raises(ValidationError, match=match) as e:
        cls.model_validate({"precision": "int4", "extra_options": extra})
    assert "\n" not in e.value.errors()[0]["msg"]  # the CLI prints it as one line with its key path


def test_builder_option_names_come_from_the_installed_builder() -> None:
    from honed.passes.model_builder import builder_option_names

    names = builder_option_names()
    assert names is not None
    assert {"block_size", "accuracy_level", "exclude_embeds", "exclude_lm_head", "filename",
            "op_types_to_quantize", "enable_cuda_graph"} <= names
    assert "int2" not in names  # a value of moe_quant_type, not an option


def test_extra_options_reach_the_builder(tiny_llama: Path, tmp_path: Path) -> None:
    """Olive's int4_-prefixed names are renamed (the builder ignores them silently), the rest pass through."""
    import json

    import onnx

    handle, ctx = _build(tiny_llama, tmp_path, precision="int4", int4_algo_config="default", extra_options={
        "int4_block_size": 16, "int4_accuracy_level": 1, "exclude_embeds": True, "filename": "decoder.onnx",
        "op_types_to_quantize": ["MatMul"],
    })
    folder = Path(handle.path)
    assert not (folder / "model.onnx").exists() and (folder / "decoder.onnx").is_file()
    assert json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "decoder.onnx"
    graph = onnx.load(str(folder / "decoder.onnx"), load_external_data=False).graph
    assert "inputs_embeds" in {i.name for i in graph.input} and "input_ids" not in {i.name for i in graph.input}
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nodes
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert (attrs["block_size"], attrs["accuracy_level"]) == (16, 1)
    assert ctx.metrics["onnx_size_mb"] > 0


@pytest.mark.parametrize("value", [True, False])
def test_enable_gqa_on_cpu_is_a_warned_no_op(value: bool, caplog: pytest.LogCaptureFixture) -> None:
    cls = get_pass("ModelBuilder").config_class
    with caplog.at_level("WARNING", logger="honed"):
        cfg = cls.model_validate({"precision": "int4", "enable_GQA_on_CPU": value})
    assert cfg.enable_GQA_on_CPU is value
    assert "enable_GQA_on_CPU" in caplog.text and ("no effect" if value else "GQA stays on") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="honed"):
        cls.model_validate({"precision": "int4"})
    assert "enable_GQA_on_CPU" not in caplog.text


def test_metadata_only_makes_an_onnx_export_runnable_by_genai(tiny_llama: Path, tmp_path: Path) -> None:
    """OnnxConversion's graph + the builder's genai_config/tokenizer: onnxruntime-genai's greedy tokens equal
    transformers'. The builder's config omits position_ids (its own CPU graph has none); honed matches it."""
    import json

    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    conv = get_pass("OnnxConversion")
    (tmp_path / "conv").mkdir()
    onnx_handle = conv().run(ModelHandle(kind="hf", path=str(tiny_llama)), conv.config_class(target_opset=17),
                             tmp_path / "conv", _ctx(tmp_path / "c"))
    cls = get_pass("ModelBuilder")
    (tmp_path / "out").mkdir()
    handle = cls().run(onnx_handle, cls.config_class(metadata_only=True, search={"max_length": 24, "top_k": 1}),
                       tmp_path / "out", _ctx(tmp_path))
    folder = Path(handle.path)
    assert handle.kind == "genai"
    assert (folder / "model.onnx").read_bytes() == (Path(onnx_handle.path) / "model.onnx").read_bytes()
    genai = json.loads((folder / "genai_config.json").read_text())
    inputs = genai["model"]["decoder"]["inputs"]
    assert inputs["position_ids"] == "position_ids" and inputs["past_key_names"] == "past_key_values.%d.key"
    assert genai["search"]["max_length"] == 24 and genai["search"]["top_k"] == 1
    assert "do_sample" in genai["search"]  # the builder's other defaults stay

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16, do_sample=False)
    gen = og.Generator(model, params)
    prompt = [5, 6, 7, 8]
    gen.append_tokens(prompt)
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=len(got), min_new_tokens=len(got),
                          do_sample=False)[0, len(prompt):].tolist()
    assert len(got) == 12 and got == ref


def test_metadata_only_needs_an_onnx_input_and_vice_versa(tiny_llama: Path, tmp_path: Path) -> None:
    cls = get_pass("ModelBuilder")
    with pytest.raises(UserError, match="metadata_only takes an ONNX model, not a hf model"):
        cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), cls.config_class(metadata_only=True), tmp_path,
                  _ctx(tmp_path))
    with pytest.raises(UserError, match="the input is an ONNX model; set metadata_only: true"):
        cls().run(ModelHandle(kind="onnx", path=str(tmp_path)), cls.config_class(), tmp_path, _ctx(tmp_path))
