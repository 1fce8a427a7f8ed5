"""Helpers the ONNX passes share: saving with external data, finding the model file,
carrying tokenizer files along, and comparing a converted model's outputs with its source.

A graph pass may take an onnxruntime-genai folder (``genai``, e.g. ModelBuilder's output, as Olive's recipes
chain it): it rewrites the decoder graph genai_config.json names, keeps that file name, and carries the rest of
the folder (genai_config.json, tokenizer, other graphs) over, so the output is a genai folder again
(``onnx_file``, ``output_file``, ``finish_onnx_output``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import trust_kwargs
from honed.passes.base import PassConfig, PassContext
from honed.util.runtime_flavour import import_runtime

# Files a tokenizer / generation config consists of; copied next to every ONNX output.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "generation_config.json", "config.json", "genai_config.json",
    "processor_config.json", "preprocessor_config.json",
)

def quiet_quantizer_logs() -> None:
    """onnxruntime's MatMulNBits quantizer (and neural_compressor's k-quant) log every node; keep errors.

    The quantizer also logs "Gather only supports 4 bits" at ERROR for int8 builds that succeed.
    """
    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.CRITICAL)
    logging.getLogger("neural_compressor").setLevel(logging.WARNING)
    # The builder reloads its graph mid-way with tied embeddings renamed; onnx_ir warns about the
    # dangling names even though the saved model is complete (the evaluation loads it).
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)


# onnx.save writes one protobuf; above this it must put weights in external data.
_PROTOBUF_LIMIT = 2_000_000_000 - 64_000_000


class OnnxSaveConfig(PassConfig):
    """How an ONNX output is written (Olive's field names)."""

    save_as_external_data: StrictBool = Field(
        False, description="Store weights in a separate file beside model.onnx (forced above 2 GB)."
    )
    all_tensors_to_one_file: StrictBool = Field(True, description="Put all external weights into one file.")
    external_data_name: str | None = Field(
        None,
        description="Name of the external data file beside model.onnx (a file name, no folder); "
        "default '<model file>.data'.",
    )
    size_threshold: int = Field(1024, ge=0, description="Tensors smaller than this (bytes) stay inline.")

    @field_validator("external_data_name")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or v in (".", "..") or any(c in v for c in "/\\\0") or len(v.encode()) > 255):
            raise ValueError("must be a file name (no folder, at most 255 bytes), e.g. 'model.onnx.data'")
        return v


class Int8QuantConfig(OnnxSaveConfig):
    """The options onnxruntime's dynamic and static int8 quantizers share (Olive's names)."""

    weight_type: Literal["QInt8", "QUInt8"] = Field("QInt8", description="Data type of quantized weights.")
    per_channel: StrictBool = Field(False, description="One weight scale per output channel instead of per tensor.")
    reduce_range: StrictBool = Field(False, description="7-bit weights, for old CPUs without VNNI.")
    op_types_to_quantize: list[str] | None = Field(
        None, description="Operator types to quantize (default: all that onnxruntime supports)."
    )
    nodes_to_quantize: list[str] | None = Field(None, description="Quantize only these node names.")
    nodes_to_exclude: list[str] | None = Field(None, description="Node names left in float.")
    quant_preprocess: StrictBool = Field(
        True, description="Run shape inference and graph optimization first (onnxruntime's quant_pre_process)."
    )


def onnx_file(handle: ModelHandle) -> Path:
    """The .onnx file of an onnx/genai handle (its path, or the one model.onnx in its folder)."""
    p = Path(handle.path)
    if p.is_file():
        return p
    if p.is_dir():
        decoder = genai_decoder(p) if handle.kind == "genai" else None
        if decoder is not None:
            return decoder
        if (p / "model.onnx").is_file():
            return p / "model.onnx"
        found = sorted(p.glob("*.onnx"))
        if len(found) == 1:
            return found[0]
        if found:
            raise UserError(
                f"{p} holds several .onnx files ({', '.join(f.name for f in found)}); point the model path at one"
            )
    raise UserError(f"no ONNX model at {p}; give a .onnx file or a folder with model.onnx")


def genai_decoder(folder: Path) -> Path | None:
    """The decoder graph that ``folder``'s genai_config.json names (``model.decoder.filename``); None when the
    folder has no genai_config.json. Raises UserError when the file is unreadable or names a missing graph."""
    cfg_file = folder / "genai_config.json"
    if not cfg_file.is_file():
        return None
    try:
        name = json.loads(cfg_file.read_text(encoding="utf-8"))["model"]["decoder"]["filename"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{cfg_file}: cannot read model.decoder.filename ({type(e).__name__}: {e}); "
                        "rebuild the folder with ModelBuilder") from e
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"{cfg_file}: model.decoder.filename {name!r} is not a file name in the folder; "
                        "set it to the decoder's .onnx file, e.g. 'model.onnx'")
    if not (folder / name).is_file():
        raise UserError(f"{cfg_file} names the decoder '{name}', which is not in {folder}; "
                        "set model.decoder.filename to the folder's .onnx file")
    return folder / name


def output_file(model: ModelHandle, src: Path, output_dir: Path) -> Path:
    """Where a graph pass writes its output: ``model.onnx``, or for a genai folder the decoder's own file name
    (genai_config.json names it, and other graphs of the folder may sit beside it)."""
    return output_dir / (src.name if model.kind == "genai" else "model.onnx")


def external_files(onnx_path: Path) -> set[str]:
    """Names of the external-data files an ONNX file's initializers point at (its weights beside it)."""
    import onnx

    found: set[str] = set()
    for t in load_graph_only(onnx_path).graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found |= {e.value for e in t.external_data if e.key == "location"}
    return found


def _graph_io(onnx_path: Path) -> tuple[set[str], set[str]]:
    graph = load_graph_only(onnx_path).graph
    return {v.name for v in graph.input}, {v.name for v in graph.output}


def _match_genai_config(cfg_file: Path, decoder: Path, src_io: tuple[set[str], set[str]], pass_name: str) -> None:
    """Keep genai_config.json true to the rewritten decoder: its filename, and its inputs/outputs sections
    when the pass dropped a graph input/output (use_gqa removes position_ids). A graph input or output the
    source lacked is a UserError: onnxruntime-genai would not feed or read it."""
    ins, outs = _graph_io(decoder)
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    dec = cfg["model"]["decoder"]
    dec["filename"] = decoder.name
    for section, now, before in (("inputs", ins, src_io[0]), ("outputs", outs, src_io[1])):
        added = sorted(now - before)
        if added:
            raise UserError(
                f"{pass_name}: the rewritten decoder has {section} the source lacked ({', '.join(added[:5])}), "
                "which onnxruntime-genai would not " + ("feed" if section == "inputs" else "read")
                + "; run this pass before ModelBuilder or leave the graph's interface as it is"
            )
        entries = dec.get(section) or {}
        for key, value in list(entries.items()):
            name = value % 0 if isinstance(value, str) and "%d" in value else value
            if name in before and name not in now:
                del entries[key]
    cfg_file.write_text(json.dumps(cfg, indent=4), encoding="utf-8")


def _finish_genai(src_handle: ModelHandle, src_file: Path, out_file: Path, ctx: Any,
                  attributes: dict[str, Any]) -> ModelHandle:
    """Carry a genai folder over to ``out_file``'s folder: every file and folder but the source decoder and its
    external weights (and tuned session settings, which were measured on the old graph); then make
    genai_config.json match the new decoder."""
    from honed.models.onnx_runtime import SETTINGS_FILE

    src_dir, out_dir = src_file.parent, out_file.parent
    skip = {src_file.name, *external_files(src_file), SETTINGS_FILE}
    for f in sorted(src_dir.iterdir()):
        dst = out_dir / f.name
        if f.name in skip or dst.exists():
            continue
        if f.is_dir():
            shutil.copytree(f, dst)
        elif f.is_file():
            shutil.copy2(f, dst)
    _match_genai_config(out_dir / "genai_config.json", out_file, _graph_io(src_file), ctx.pass_name)
    return ModelHandle(kind="genai", path=str(out_dir), task=src_handle.task, load_kwargs=trust_kwargs(src_handle),
                       attributes={**src_handle.attributes, **attributes})


def code_files(folder: Path) -> list[str]:
    """The Python files of a folder's custom code: the modules ``auto_map`` in its config.json and
    tokenizer_config.json names (run only with trust_remote_code; they travel with the tokenizer)."""
    import json

    found: set[str] = set()
    for cfg in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((folder / cfg).read_text()).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
        for ref in refs:
            module = ref.split("--")[-1].rsplit(".", 1)[0]
            if (folder / f"{module}.py").is_file():
                found.add(f"{module}.py")
    return sorted(found)


def copy_side_files(src_dir: Path, dst_dir: Path, names: tuple[str, ...] = TOKENIZER_FILES) -> list[str]:
    """Copy tokenizer/config files (and the custom code they name) from ``src_dir`` to ``dst_dir``."""
    copied = []
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in (*names, *code_files(src_dir)):
        f = src_dir / name
        if f.is_file() and not (dst_dir / name).exists():
            shutil.copy2(f, dst_dir / name)
            copied.append(name)
    return copied


def save_onnx(model: Any, out_file: Path, cfg: OnnxSaveConfig | None = None) -> Path:
    """Save an onnx ModelProto, with external data when asked or when it would not fit a protobuf."""
    import onnx

    out_file.parent.mkdir(parents=True, exist_ok=True)
    external = bool(cfg and cfg.save_as_external_data) or model.ByteSize() > _PROTOBUF_LIMIT
    if external:
        location = (cfg.external_data_name if cfg else None) or out_file.name + ".data"
        onnx.save_model(
            model, str(out_file), save_as_external_data=True,
            all_tensors_to_one_file=cfg.all_tensors_to_one_file if cfg else True,
            location=location, size_threshold=cfg.size_threshold if cfg else 1024,
        )
    else:
        onnx.save_model(model, str(out_file))
    return out_file


def output_handle(src: ModelHandle, out_file: Path, **attributes: Any) -> ModelHandle:
    """An onnx handle for ``out_file``, keeping the source's task and attributes."""
    return ModelHandle(
        kind="onnx", path=str(out_file.parent if out_file.name == "model.onnx" else out_file),
        task=src.task, load_kwargs=trust_kwargs(src), attributes={**src.attributes, **attributes},
    )


def prepare_input(src: Path, work_dir: Path, preprocess: bool) -> Path:
    """The model to quantize: ``src``, or onnxruntime's quant_pre_process of it (shape inference
    plus graph optimization, which lets the quantizer see more MatMuls) written to ``work_dir``."""
    if not preprocess:
        return src
    import_runtime("onnxruntime")  # missing: a UserError naming the extra
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged = work_dir / "preprocessed" / "model.onnx"
    staged.parent.mkdir(parents=True, exist_ok=True)
    quant_pre_process(str(src), str(staged), skip_symbolic_shape=True, save_as_external_data=True,
                      external_data_location="model.onnx.data")
    # Calibration reads the head size of a genai graph's past key/values (symbolic there) from these.
    copy_side_files(src.parent, staged.parent, ("genai_config.json", "config.json"))
    return staged


def finish_onnx_output(
    src_handle: ModelHandle, src_file: Path, out_file: Path, cfg: OnnxSaveConfig, ctx: Any, **attributes: Any
) -> ModelHandle:
    """Rewrite ``out_file`` with the requested external-data layout, copy the tokenizer files
    beside it, record the size, and return its handle: onnx, or genai (the rest of the source folder carried
    over, genai_config.json matched to the new graph) when the source is a genai folder."""
    import onnx

    m = onnx.load(str(out_file))
    for f in out_file.parent.glob(out_file.name + ".data*"):
        f.unlink()
    save_onnx(m, out_file, cfg)
    size = sum(f.stat().st_size for f in out_file.parent.glob(out_file.name + "*"))
    ctx.metrics["onnx_size_mb"] = round(size / 2**20, 3)
    if src_handle.kind == "genai":
        return _finish_genai(src_handle, src_file, out_file, ctx, attributes)
    copy_side_files(src_file.parent, out_file.parent)
    return output_handle(src_handle, out_file, **attributes)


def calibration_feeds(onnx_path: Path, handle: ModelHandle, data_config: Any, limit: int) -> list[dict[str, Any]]:
    """Session feeds (one per sample) for calibrating ``onnx_path`` on a data config's texts."""
    import numpy as np

    from honed.models.loaders import load_tokenizer_dir, trusts_remote_code
    from honed.models.onnx_runtime import OnnxSession

    tok_dir = onnx_path.parent if (onnx_path.parent / "tokenizer_config.json").exists() else Path(handle.path)
    if tok_dir.is_file():
        tok_dir = tok_dir.parent
    tok = load_tokenizer_dir(tok_dir, trust_remote_code=trusts_remote_code(handle))
    max_len = min(data_config.pre_process_data_config.max_seq_len, 512)
    sess = OnnxSession(onnx_path, providers=["CPUExecutionProvider"])
    from honed.data.batches import calibration_texts, token_samples

    given = token_samples(data_config, limit, tok)  # rows a user_script's pre_process_data tokenized
    if given is not None:
        return [sess.feeds(np.array([ids[:max_len]], dtype=np.int64), np.ones((1, len(ids[:max_len])), dtype=np.int64))
                for ids in given]
    feeds = []
    for text in calibration_texts(data_config, limit, tok):
        pair = text if isinstance(text, tuple) else (text,)
        enc = tok(*pair, truncation=True, max_length=max_len, return_tensors="np")
        feed = sess.feeds(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))
        if "token_type_ids" in feed and "token_type_ids" in enc:  # a text pair's segments
            feed["token_type_ids"] = enc["token_type_ids"].astype(np.int64)
        feeds.append(feed)
    return feeds


def sample_inputs(
    vocab_size: int, shapes: list[tuple[int, int]], seed: int = 0, pad: bool = True
) -> list[tuple[Any, Any]]:
    """(input_ids, attention_mask) numpy pairs for the given (batch, seq) shapes; the last row of
    each batch is left-padded by one token so masks are exercised."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for b, s in shapes:
        ids = rng.integers(3, vocab_size, size=(b, s), dtype=np.int64)
        mask = np.ones((b, s), dtype=np.int64)
        if pad and b > 1 and s > 2:
            mask[-1, 0] = 0
        out.append((ids, mask))
    return out


def check_against_source(
    src: ModelHandle, out: ModelHandle, ctx: Any, tolerance: float | None,
    shapes: list[tuple[int, int]] | None = None,
) -> float:
    """Max abs difference between the source (PyTorch) and ONNX outputs on sample inputs;
    recorded in ``ctx.metrics['max_abs_diff']``; raises when above ``tolerance * max(1, max |output|)``."""
    import numpy as np

    from honed.models.onnx_runtime import OnnxSession
    from honed.models.runtime import HFRuntime

    source = HFRuntime(src, dtype="float32", tokenizer=False)  # the same forward the runtimes compare with
    vocab = source.model.config.vocab_size
    sess = OnnxSession(onnx_file(out), providers=["CPUExecutionProvider"])
    worst = scale = 0.0
    # The genai builder's attention assumes right padding; feed it unpadded batches.
    for ids, mask in sample_inputs(vocab, shapes or [(1, 5), (2, 9)], pad=out.kind == "onnx"):
        ref_out = source.forward_masked(ids, mask, position_ids=sess.is_causal_lm)
        got = sess.run(ids, mask)[0]
        diff = np.abs(got.astype(np.float32) - ref_out)
        # Padded positions of a causal LM are meaningless; compare only real tokens.
        if diff.ndim == 3:
            diff = diff[mask.astype(bool)]
        worst = max(worst, float(diff.max()))
        scale = max(scale, float(np.abs(ref_out).max()))
    ctx.metrics["max_abs_diff"] = worst
    # The tolerance is absolute for outputs within [-1, 1] and relative to the largest output beyond.
    if tolerance is not None and worst > tolerance * max(1.0, scale):
        from honed.errors import HonedError

        raise HonedError(
            f"{ctx.pass_name}: ONNX outputs differ from the source model by {worst:.3g} (> {tolerance:g})"
        )
    return worst


def matmul_nbits(model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext, algo: Any, label: str,
                 pass_type: str, op_types: tuple[str, ...] = ("MatMul",), **quantizer_args: Any) -> ModelHandle:
    """Run onnxruntime's MatMulNBitsQuantizer with ``algo`` (RTN, HQQ, ...) and write the pass output.

    Raises UserError (naming the pass) when no ``op_types`` node has a float constant weight, or when the
    quantizer wrote no MatMulNBits/GatherBlockQuantized node."""
    import onnx
    import_runtime("onnxruntime")  # missing: a UserError naming the extra
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src = onnx_file(model)
    proto = onnx.load(str(src))
    require_quantizable(proto, op_types, pass_type, ctx)
    before = quantized_counts(proto)
    exclude = list(config.nodes_to_exclude or [])
    if config.nodes_to_include:
        # onnxruntime quantizes nodes_to_include *in addition to* every node of the op types; Olive's RTN (and
        # this option's description) quantizes only them, so the other nodes of those types are excluded.
        nodes = list(iter_nodes(proto.graph))
        unknown = sorted(set(config.nodes_to_include) - {n.name for n in nodes})
        if unknown:
            logging.getLogger("honed").warning("%s: nodes_to_include names no node %s", ctx.pass_name,
                                               ", ".join(unknown[:5]))
        exclude += [n.name for n in nodes if n.op_type in op_types and n.name not in config.nodes_to_include]
    quiet_quantizer_logs()
    q = MatMulNBitsQuantizer(
        proto, block_size=config.block_size, nodes_to_exclude=exclude,
        nodes_to_include=config.nodes_to_include, algo_config=algo, **quantizer_args,
    )
    q.process()
    out = output_file(model, src, output_dir)
    save_onnx(q.model.model, out, config)
    require_quantized(before, out, pass_type, ctx)
    return finish_onnx_output(model, src, out, config, ctx, quantization=label)


# --- what a graph holds: op types, weight precisions, what a quantizer can still take -------------------------

QUANTIZED_OP_TYPES = frozenset({
    "MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "QGemm",
    "ConvInteger", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM", "QLinearAdd", "QLinearMul",
})
"""Op types onnxruntime's quantizers write (QOperator, QDQ, dynamic and MatMulNBits forms)."""

# Which input of an op carries the weight a quantizer replaces; other types: any initializer input.
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0, "Attention": 1}
_FLOAT_TYPES = (1, 10, 16)  # TensorProto FLOAT, FLOAT16, BFLOAT16


def iter_nodes(graph: Any) -> Any:
    """Every node of ``graph`` and of the subgraphs inside If/Loop/Scan nodes."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def load_graph_only(path: Path) -> Any:
    """An ONNX file's graph without its external weights (dims and dtypes are all the counts need)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def op_counts(model: Any) -> dict[str, int]:
    """Node count per op type (subgraphs included), most frequent first."""
    from collections import Counter

    return dict(Counter(n.op_type for n in iter_nodes(model.graph)).most_common())


def quantized_counts(model: Any) -> dict[str, int]:
    """Node count per quantized op type (see ``QUANTIZED_OP_TYPES``)."""
    return {op: n for op, n in op_counts(model).items() if op in QUANTIZED_OP_TYPES}


def eligible_weight_ops(model: Any, op_types: tuple[str, ...], any_matmul: bool = False) -> int:
    """Nodes of ``op_types`` whose weight input is a float initializer (or Constant): what a weight quantizer
    can still quantize. A MatMul whose B is computed (attention scores) or already integer does not count,
    unless ``any_matmul`` (onnxruntime's MatMulConstBOnly false quantizes those too)."""
    import onnx

    const: dict[str, int] = {t.name: t.data_type for t in model.graph.initializer}
    for node in iter_nodes(model.graph):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    const[node.output[0]] = attr.t.data_type
    count = 0
    for node in iter_nodes(model.graph):
        if node.op_type not in op_types:
            continue
        if any_matmul and node.op_type == "MatMul":
            count += 1
            continue
        idx = _WEIGHT_INPUT.get(node.op_type)
        names = [node.input[idx]] if idx is not None and idx < len(node.input) else list(node.input)
        if any(const.get(n) in _FLOAT_TYPES for n in names):
            count += 1
    return count


def _summary(counts: dict[str, int]) -> str:
    return " (it already has " + ", ".join(f"{n} {op}" for op, n in counts.items()) + ")" if counts else ""


def require_quantizable(model: Any, op_types: tuple[str, ...], pass_type: str, ctx: PassContext,
                        any_matmul: bool = False) -> int:
    """The number of nodes the quantizer can take; refuses (UserError, exit 2, naming the pass) when there are
    none, e.g. int4 over a model whose MatMuls are already MatMulNBits: the output would be the input
    relabelled as quantized."""
    n = eligible_weight_ops(model, op_types, any_matmul)
    ctx.metrics["eligible_ops"] = n
    if n:
        return n
    raise UserError(
        f"passes.{ctx.pass_name} ({pass_type}): nothing to quantize: no {'/'.join(op_types)} node has a float "
        f"constant weight{_summary(quantized_counts(model))}; remove the pass or give it a float model"
    )


def require_quantized(before: dict[str, int], after_path: Path, pass_type: str, ctx: PassContext) -> None:
    """Fail when the quantizer ran but added no quantized op to the input's ``before`` (``quantized_counts``):
    every eligible node was excluded or skipped, and a model labelled quantized must be quantized."""
    after = quantized_counts(load_graph_only(after_path))
    added = sum(after.values()) - sum(before.values())
    ctx.metrics["quantized_ops_added"] = added
    if added <= 0:
        raise UserError(
            f"passes.{ctx.pass_name} ({pass_type}): quantized nothing: the output has no quantized op the input "
            f"lacked{_summary(before)}; check nodes_to_quantize/nodes_to_include/nodes_to_exclude and the op types"
        )


def _nbits_weights(model: Any) -> dict[str, int]:
    """Initializer names holding packed n-bit weights -> bits (MatMulNBits B, GatherBlockQuantized data)."""
    import onnx

    found: dict[str, int] = {}
    for node in iter_nodes(model.graph):
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized") and node.input:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            found[node.input[0] if node.op_type == "GatherBlockQuantized" else node.input[1]] = int(attrs.get("bits", 4))
    return found


def _tensor_bytes(t: Any) -> int:
    """Bytes of a TensorProto's data from its dims and dtype (external data is not read)."""
    import math

    import onnx

    n = math.prod(t.dims)
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    bits = 4 if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else np_type.itemsize * 8
    return (n * bits + 7) // 8


def weight_bytes(model: Any) -> dict[str, int]:
    """Bytes of weights (initializers and Constant tensors) per precision: 'float32', 'float16', 'int8', ...;
    MatMulNBits/GatherBlockQuantized weights count as 'int<bits>' although stored packed in uint8."""
    import onnx

    packed = _nbits_weights(model)
    tensors = [(t.name, t) for t in model.graph.initializer]
    for node in iter_nodes(model.graph):
        if node.op_type == "Constant":
            tensors += [(node.output[0], a.t) for a in node.attribute
                        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    out: dict[str, int] = {}
    for name, t in tensors:
        if name in packed:
            kind = f"int{packed[name]}"
        else:
            kind = onnx.helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto.").lower()
            kind = {"float": "float32", "double": "float64"}.get(kind, kind)
        out[kind] = out.get(kind, 0) + _tensor_bytes(t)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --- onnxruntime quantizer extra_options ----------------------------------------------------------------------

_ORT_DYNAMIC_DOCUMENTED = (
    "extra.Sigmoid.nnapi", "ActivationSymmetric", "ActivationRestrictedAsymmetric", "WeightSymmetric",
    "EnableSubgraph", "ForceQuantizeNoInputCheck", "MatMulConstBOnly",
)
_ORT_STATIC_DOCUMENTED = (
    *_ORT_DYNAMIC_DOCUMENTED, "AddQDQPairToWeight", "OpTypesToExcludeOutputQuantization", "DedicatedQDQPair",
    "QDQOpTypePerChannelSupportToAxis", "CalibTensorRangeSymmetric", "CalibStridedMinMax", "CalibMovingAverage",
    "CalibMovingAverageConstant", "CalibMaxIntermediateOutputs", "QuantizeBias", "SmoothQuant", "SmoothQuantAlpha",
    "SmoothQuantFolding", "UseQDQContribOps", "MinimumRealRange", "TensorQuantOverrides",
    "QDQKeepRemovableActivations", "QDQDisableWeightAdjustForInt32Bias",
)
# Read by onnxruntime though missing from its docstrings: DefaultTensorType (its own error message tells users to
# set it), CalibPercentile (quantize_static passes it to the Percentile calibrator).
ORT_DYNAMIC_EXTRA_OPTIONS = frozenset({*_ORT_DYNAMIC_DOCUMENTED, "DefaultTensorType"})
ORT_STATIC_EXTRA_OPTIONS = frozenset({*_ORT_STATIC_DOCUMENTED, "DefaultTensorType", "CalibPercentile"})
"""The ``extra_options`` keys onnxruntime 1.2x documents for quantize_dynamic / quantize_static (and
StaticQuantConfig); a test compares them with the installed onnxruntime's docstrings."""
_ORT_BOOL_OPTIONS = frozenset({
    "extra.Sigmoid.nnapi", "ActivationSymmetric", "ActivationRestrictedAsymmetric", "WeightSymmetric",
    "EnableSubgraph", "ForceQuantizeNoInputCheck", "MatMulConstBOnly", "AddQDQPairToWeight", "DedicatedQDQPair",
    "CalibTensorRangeSymmetric", "CalibMovingAverage", "QuantizeBias", "SmoothQuant", "SmoothQuantFolding",
    "UseQDQContribOps", "QDQKeepRemovableActivations", "QDQDisableWeightAdjustForInt32Bias",
})


def check_ort_extra_options(options: dict[str, Any], known: frozenset[str], mode: str) -> dict[str, Any]:
    """Validate quantizer ``extra_options``: onnxruntime ignores a misspelt key silently, and reads any
    non-empty string (even "false") as true, so both are errors here (ValueError, for pydantic)."""
    import difflib

    for key, value in options.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            other = " (a static-quantization option)" if key in ORT_STATIC_EXTRA_OPTIONS else ""
            hint = f"did you mean '{close[0]}'?" if close and not other else f"known: {', '.join(sorted(known))}"
            raise ValueError(f"'{key}' is not an onnxruntime {mode} quantization option{other}; {hint}")
        if key in _ORT_BOOL_OPTIONS and not isinstance(value, bool):
            raise ValueError(f"'{key}' must be true or false, got {value!r}")
    return options
