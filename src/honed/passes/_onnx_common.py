"""Helpers the ONNX passes share: saving with external data, finding the model file,
carrying tokenizer files along, and comparing a converted model's outputs with its source."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, StrictBool, field_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import trust_kwargs
from honed.passes.base import PassConfig, PassContext

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


def onnx_file(handle: ModelHandle) -> Path:
    """The .onnx file of an onnx/genai handle (its path, or the one model.onnx in its folder)."""
    p = Path(handle.path)
    if p.is_file():
        return p
    if p.is_dir():
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
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged = work_dir / "preprocessed" / "model.onnx"
    staged.parent.mkdir(parents=True, exist_ok=True)
    quant_pre_process(str(src), str(staged), skip_symbolic_shape=True, save_as_external_data=True,
                      external_data_location="model.onnx.data")
    return staged


def finish_onnx_output(
    src_handle: ModelHandle, src_file: Path, out_file: Path, cfg: OnnxSaveConfig, ctx: Any, **attributes: Any
) -> ModelHandle:
    """Rewrite ``out_file`` with the requested external-data layout, copy the tokenizer files
    beside it, record the size, and return its handle."""
    import onnx

    m = onnx.load(str(out_file))
    for f in out_file.parent.glob(out_file.name + ".data*"):
        f.unlink()
    save_onnx(m, out_file, cfg)
    copy_side_files(src_file.parent, out_file.parent)
    size = sum(f.stat().st_size for f in out_file.parent.glob(out_file.name + "*"))
    ctx.metrics["onnx_size_mb"] = round(size / 2**20, 3)
    return output_handle(src_handle, out_file, **attributes)


def calibration_texts(data_config: Any, limit: int) -> list[str]:
    """Up to ``limit`` texts from a DataConfig, formatted by its template or text columns."""
    from honed.data.sources import load_rows
    from honed.errors import DataError

    pre = data_config.pre_process_data_config
    ds = load_rows(data_config)  # local files stay off the network; errors name the file and line
    texts = []
    for row in ds.select(range(min(limit, len(ds)))):
        if pre.text_template:
            try:
                texts.append(pre.text_template.format(**row))
            except KeyError as e:
                raise DataError(
                    f"data config '{data_config.name}': text_template names column {e} that the rows lack "
                    f"(columns: {', '.join(ds.column_names)})"
                ) from e
        else:
            cols = pre.text_cols or [c for c in ds.column_names if isinstance(row[c], str)][:1]
            texts.append("\n".join(str(row[c]) for c in cols))
    return texts


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
    feeds = []
    for text in calibration_texts(data_config, limit):
        enc = tok(text, truncation=True, max_length=max_len, return_tensors="np")
        feeds.append(sess.feeds(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)))
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
    import torch

    from honed.models.loaders import load_model
    from honed.models.onnx_runtime import OnnxSession

    torch_model = load_model(src, dtype="float32")
    vocab = torch_model.config.vocab_size
    sess = OnnxSession(onnx_file(out), providers=["CPUExecutionProvider"])
    worst = scale = 0.0
    # The genai builder's attention assumes right padding; feed it unpadded batches.
    for ids, mask in sample_inputs(vocab, shapes or [(1, 5), (2, 9)], pad=out.kind == "onnx"):
        with torch.no_grad():
            kwargs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if sess.is_causal_lm:
                kwargs["position_ids"] = torch.from_numpy(sess.position_ids(mask))
            ref = torch_model(**kwargs)
        ref_out = ref.logits if getattr(ref, "logits", None) is not None else ref.last_hidden_state
        got = sess.run(ids, mask)[0]
        diff = np.abs(got.astype(np.float32) - ref_out.float().numpy())
        # Padded positions of a causal LM are meaningless; compare only real tokens.
        if diff.ndim == 3:
            diff = diff[mask.astype(bool)]
        worst = max(worst, float(diff.max()))
        scale = max(scale, float(ref_out.abs().max()))
    ctx.metrics["max_abs_diff"] = worst
    # The tolerance is absolute for outputs within [-1, 1] and relative to the largest output beyond.
    if tolerance is not None and worst > tolerance * max(1.0, scale):
        from honed.errors import HonedError

        raise HonedError(
            f"{ctx.pass_name}: ONNX outputs differ from the source model by {worst:.3g} (> {tolerance:g})"
        )
    return worst


def matmul_nbits(model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext, algo: Any, label: str,
                 **quantizer_args: Any) -> ModelHandle:
    """Run onnxruntime's MatMulNBitsQuantizer with ``algo`` (RTN, HQQ, ...) and write the pass output."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src = onnx_file(model)
    quiet_quantizer_logs()
    q = MatMulNBitsQuantizer(
        onnx.load(str(src)), block_size=config.block_size, nodes_to_exclude=config.nodes_to_exclude,
        nodes_to_include=config.nodes_to_include, algo_config=algo, **quantizer_args,
    )
    q.process()
    out = output_dir / "model.onnx"
    save_onnx(q.model.model, out, config)
    return finish_onnx_output(model, src, out, config, ctx, quantization=label)
