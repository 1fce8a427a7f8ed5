"""ExtractAdapters: move the LoRA weights out of an ONNX or onnxruntime-genai graph into adapter files,
so one (int4) base serves many adapters (Olive's pass of the same name).

The LoRA branch of each adapted layer (``x @ A @ (B * alpha / r)`` added to the base MatMul, as the genai
model builder writes it for a PEFT input, or peft's TorchScript export) keeps its nodes; its weight
initializers become graph inputs (``make_inputs``), which ``onnxruntime_genai.Adapters`` and
``generator.set_active_adapter`` feed from an ``.onnx_adapter`` file (onnxruntime's LoRA adapter format,
``onnxruntime.AdapterFormat``, ORT >= 1.20).  With ``optional_inputs`` each input keeps a zero default
(rank 0 for float weights), so the model without an active adapter is the base model.

Further adapters (``adapter_paths``) are laid out by replaying the ModelBuilder build that made the input
with the other PEFT folder: weight names, the alpha / r scaling, Q/K/V and gate/up splits and int4
packing then match the base graph exactly, for any architecture the builder supports.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, copy_side_files, onnx_file, output_handle, save_onnx
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.paths import InputPath
from honed.util.runtime_flavour import import_runtime

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("honed")

SaveFormat = Literal["onnx_adapter", "numpy", "safetensors"]
SUFFIX = {"onnx_adapter": ".onnx_adapter", "numpy": ".npz", "safetensors": ".safetensors"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# The LoRA MatMuls: the genai builder's ".../q_proj/lora_A/MatMul[_Q4]" and peft's TorchScript export
# ".../lora_A/default/MatMul" (Olive's LORA_NAME_PATTERNS_TORCHSCRIPT).
_LORA_NODE = re.compile(r"[./](lora_[AB]|default(?:_0)?(?:_1)?)[./](MatMul|Gemm)(?:_Q\d+)?$")
# Initializers named after peft's modules (a dynamo export keeps the parameter names).
_LORA_INIT = re.compile(r"(?:^|[./])lora_([AB])(?:[./]|$)")
_LORA_OPS = ("MatMul", "MatMulNBits", "Gemm")
# Where a weight moved out with make_inputs: false points; the session must supply it.
PLACEHOLDER_LOCATION = "lora-weights-set-by-add_external_initializers.bin"


class ExtractAdaptersConfig(OnnxSaveConfig):
    """Olive's ExtractAdapters options, plus the adapters to lay out for the same base."""

    adapter_type: Literal["lora"] = Field(
        "lora", description="Adapter kind to extract. Only LoRA (Olive's DoRA and LoHa are not extracted)."
    )
    make_inputs: StrictBool = Field(
        True, description="Turn the LoRA weights into graph inputs (what onnxruntime-genai's Adapters API "
        "feeds). false: keep them as initializers whose data points to a file that does not exist, so a "
        "session must add them with SessionOptions.add_external_initializers (plain onnxruntime only)."
    )
    dynamic_lora_r: StrictBool = Field(
        True, description="With make_inputs, give float LoRA weights a symbolic rank dimension 'lora_r', so "
        "adapters of any rank fit. Quantized (MatMulNBits) LoRA weights keep their static shape."
    )
    optional_inputs: StrictBool = Field(
        True, description="With make_inputs, keep a zero default for every LoRA input (rank 0 for float "
        "weights, zeros of the full shape for quantized ones): without an active adapter the model is the "
        "base model, and an adapter may cover a subset of the adapted layers."
    )
    save_format: SaveFormat = Field(
        "onnx_adapter", description="Adapter file format: onnx_adapter (onnxruntime.AdapterFormat; the only "
        "one onnxruntime-genai loads), numpy (.npz) or safetensors. Names are the graph input names. Olive's 'pt' "
        "is not offered (a pickle)."
    )
    adapter_name: str = Field(
        "adapter_weights", description="File name (without suffix) of the adapter taken from the input "
        "model, written beside the model file (Olive: adapter_weights.onnx_adapter)."
    )
    adapter_paths: dict[str, InputPath] = Field(
        default_factory=dict, description="Further PEFT LoRA adapters for the same base, NAME: adapter folder; "
        "each is written as NAME.<format> beside the model. Needs a genai input the ModelBuilder pass built "
        "from a PEFT adapter: the build is replayed with each folder (same precision, quantization and "
        "options; one builder run on the base each), so weights are named, scaled, split and quantized "
        "exactly as the graph expects. Each must adapt the same layers (a subset with optional_inputs) with "
        "the same rank (any rank with dynamic_lora_r on float LoRA weights)."
    )

    @field_validator("adapter_name")
    @classmethod
    def _adapter_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be a file name of letters, digits, '_', '.', '-' (at most 100), e.g. 'tone'")
        return v

    @field_validator("adapter_paths")
    @classmethod
    def _adapter_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _NAME.match(k)]
        if bad:
            raise ValueError(f"adapter name(s) {bad} must be file names of letters, digits, '_', '.', '-' "
                             "(at most 100), e.g. 'tone'")
        return v

    @model_validator(mode="after")
    def _names_differ(self) -> ExtractAdaptersConfig:
        if self.adapter_name in self.adapter_paths:
            raise ValueError(f"adapter_paths names '{self.adapter_name}', which is adapter_name (the input "
                             "model's own adapter); choose another name")
        return self


@dataclass
class LoraWeight:
    """One LoRA initializer: its role and the dimension that is the LoRA rank when it may vary."""

    name: str
    role: Literal["A", "B"]
    rank_dim: int | None
    """1 for A / 0 for B when it is the float right-hand side of a MatMul; None: the shape is fixed."""
    nodes: list[str]
    """The LoRA nodes reading it (their outputs carry the rank)."""


def _role(text: str) -> Literal["A", "B"]:
    return "B" if re.search(r"lora_B|default(?:_0)?_1(?![0-9])", text) else "A"


def find_lora_weights(graph: Any) -> dict[str, LoraWeight]:
    """The LoRA weight initializers of an ONNX graph, in graph order.

    A weight is an initializer read (input index >= 1) by a MatMul/MatMulNBits/Gemm whose name marks a LoRA
    branch, or an initializer named after peft's lora_A/lora_B modules.  Initializers that are already
    graph inputs are skipped (an extracted model yields nothing).
    """
    inits = {t.name: t for t in graph.initializer}
    taken = {i.name for i in graph.input}
    uses: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            if name in inits:
                uses.setdefault(name, []).append((node, idx))
    found: dict[str, LoraWeight] = {}
    for t in graph.initializer:
        if t.name in taken:
            continue
        readers = uses.get(t.name, [])
        lora = [(n, i) for n, i in readers if n.op_type in _LORA_OPS and i >= 1 and _LORA_NODE.search(n.name)]
        named = _LORA_INIT.search(t.name)
        if not lora and not named:
            continue
        role = _role(lora[0][0].name) if lora else ("B" if named and named.group(1) == "B" else "A")
        float_matmul = readers and all(n.op_type == "MatMul" and i == 1 for n, i in readers) and len(t.dims) == 2
        found[t.name] = LoraWeight(
            name=t.name, role=role, rank_dim=(1 if role == "A" else 0) if float_matmul else None,
            nodes=[n.name for n, _ in (lora or readers)],
        )
    return found


def read_arrays(graph: Any, names: list[str]) -> dict[str, tuple[np.ndarray, int]]:
    """name -> (array, ONNX element type) for initializers whose data is loaded."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    return {n: (numpy_helper.to_array(inits[n]), inits[n].data_type) for n in names}


def save_weights(weights: dict[str, tuple[np.ndarray, int]], stem: Path, fmt: str) -> Path:
    """Write ``weights`` to ``stem`` + the format's suffix; returns the file."""
    import numpy as np

    path = stem.with_name(stem.name + SUFFIX[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx_adapter":
        ort = import_runtime("onnxruntime")

        # The onnx element type travels explicitly, so bfloat16/float16 weights keep their type.
        values = {k: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(a), t)
                  for k, (a, t) in weights.items()}
        adapter = ort.AdapterFormat()
        adapter.set_parameters(values)
        adapter.export_adapter(str(path))
        return path
    odd = sorted(k for k, (a, _) in weights.items() if a.dtype.kind not in "fiub")
    if odd:
        raise UserError(f"ExtractAdapters: save_format {fmt} cannot hold the {weights[odd[0]][0].dtype} weight "
                        f"'{odd[0]}'; use save_format: onnx_adapter")
    arrays = {k: np.ascontiguousarray(a) for k, (a, _) in weights.items()}
    if fmt == "numpy":
        np.savez(path, **arrays)
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    return path


def _zeros(name: str, data_type: int, shape: list[int], dtype: Any) -> Any:
    import numpy as np
    from onnx import helper

    return helper.make_tensor(name, data_type, shape, np.zeros(shape, dtype).tobytes(), raw=True)


def extract(model: Any, found: dict[str, LoraWeight], config: ExtractAdaptersConfig) -> dict[str, tuple[Any, int]]:
    """Rewrite ``model`` (an onnx ModelProto with its data loaded) in place; return the moved weights."""
    from onnx import TensorProto, helper

    graph = model.graph
    weights = read_arrays(graph, list(found))
    inits = {t.name: t for t in graph.initializer}
    dynamic_nodes: set[str] = set()
    for w in found.values():
        t, (arr, dtype) = inits[w.name], weights[w.name]
        if not config.make_inputs:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            t.external_data.add(key="location", value=PLACEHOLDER_LOCATION)
            continue
        dynamic = config.dynamic_lora_r and w.rank_dim is not None
        dims: list[Any] = list(arr.shape)
        if dynamic:
            dims[w.rank_dim] = "lora_r"
            dynamic_nodes.update(w.nodes)
        graph.input.append(helper.make_tensor_value_info(w.name, dtype, dims))
        if config.optional_inputs:
            shape = list(arr.shape)
            if dynamic:
                shape[w.rank_dim] = 0
            t.CopyFrom(_zeros(w.name, dtype, shape, arr.dtype))
        else:
            graph.initializer.remove(t)
    if dynamic_nodes:
        # Recorded shapes of the LoRA outputs name the old rank; let onnxruntime infer them.
        outputs = {o for n in graph.node if n.name in dynamic_nodes for o in n.output}
        keep = [v for v in graph.value_info if v.name not in outputs]
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return weights


def _decoder_file(model: ModelHandle) -> Path:
    """The ONNX file a genai folder's decoder runs (genai_config.json), else the folder's one .onnx."""
    folder = Path(model.path)
    cfg = folder / "genai_config.json"
    if model.kind == "genai" and cfg.is_file():
        name = json.loads(cfg.read_text()).get("model", {}).get("decoder", {}).get("filename")
        if name and (folder / name).is_file():
            return folder / name
    return onnx_file(model)


def _external_files(onnx_path: Path) -> set[str]:
    """Names of the external-data files an ONNX file refers to (left behind when it is rewritten)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    names = set()
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return names


def _check_peft_folder(key: str, path: Path) -> None:
    cfg = path / "adapter_config.json"
    if not cfg.is_file():
        raise UserError(f"{key}: {path} is not a PEFT adapter folder (no adapter_config.json); give the folder "
                        "a LoRA pass or peft's save_pretrained wrote")
    data = json.loads(cfg.read_text())
    if data.get("peft_type") != "LORA" or data.get("use_dora"):
        kind = "DoRA" if data.get("use_dora") else data.get("peft_type")
        raise UserError(f"{key}: {cfg} describes a {kind} adapter; only LoRA adapters can be laid out")


def _check_fits(key: str, base: dict[str, LoraWeight], base_w: dict[str, tuple[Any, int]],
                new_w: dict[str, tuple[Any, int]], config: ExtractAdaptersConfig) -> None:
    """UserError when the weights of a further adapter do not fit the base graph's LoRA inputs."""
    extra = sorted(set(new_w) - set(base))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UserError(f"{key}: the adapter adapts layers the base graph has no LoRA weights for ({extra[0]}"
                        f"{more}); train it on the same target_modules as the base's adapter (or a subset)")
    missing = sorted(set(base) - set(new_w))
    if missing and not (config.make_inputs and config.optional_inputs):
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{key}: the adapter lacks {missing[0]}{more}, which the model needs as inputs; set "
                        "optional_inputs: true or adapt the same layers as the base")
    for name, (arr, _) in new_w.items():
        want = base_w[name][0].shape
        dim = base[name].rank_dim if config.make_inputs and config.dynamic_lora_r else None
        same = len(arr.shape) == len(want) and all(
            a == b or i == dim for i, (a, b) in enumerate(zip(arr.shape, want, strict=True)))
        if not same:
            fix = ("retrain it with the base adapter's r" if dim is None and base[name].rank_dim is None
                   else "set dynamic_lora_r: true or retrain it with the base adapter's r")
            raise UserError(f"{key}: weight {name} has shape {list(arr.shape)} but the base graph expects "
                            f"{list(want)} (a different LoRA rank or layout); {fix}")


class ExtractAdapters(Pass):
    name = "ExtractAdapters"
    description = "Move LoRA weights out of an ONNX/genai model into .onnx_adapter files: one base, many adapters."
    config_class = ExtractAdaptersConfig
    requires = ("onnx", "onnxruntime")
    libraries = ("onnx", "onnxruntime", "onnxruntime-genai", "onnx-ir", "peft", "transformers", "torch")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")

    def run(self, model: ModelHandle, config: ExtractAdaptersConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import onnx

        key = f"passes.{ctx.pass_name}"
        if model.kind == "genai" and not config.make_inputs:
            raise UserError(f"{key}.make_inputs: false writes LoRA weights onnxruntime-genai cannot load (they "
                            "must be added with add_external_initializers); keep make_inputs: true for a genai model")
        src = _decoder_file(model)
        proto = onnx.load(str(src))
        found = find_lora_weights(proto.graph)
        if not found:
            raise UserError(f"{key}: {src} holds no LoRA weights (no MatMul named like .../lora_A/MatMul with a "
                            "weight initializer); build the model from a PEFT adapter (LoRA, then ModelBuilder)")
        recipe = model.attributes.get("model_builder")
        if config.adapter_paths and (model.kind != "genai" or not recipe):
            raise UserError(f"{key}.adapter_paths: needs a genai model that the ModelBuilder pass built from a "
                            f"PEFT adapter in this workflow; {model.path} is not one (run LoRA, then ModelBuilder)")
        quantized = [w for w in found.values() if w.rank_dim is None]
        if quantized and config.make_inputs and config.dynamic_lora_r and "dynamic_lora_r" in config.model_fields_set:
            log.warning("%s.dynamic_lora_r: %d quantized LoRA weights (e.g. %s) keep their static rank; build "
                        "the base with float LoRA weights for adapters of other ranks", key, len(quantized),
                        quantized[0].name)
        weights = extract(proto, found, config)

        folder = output_dir / "model"
        folder.mkdir(parents=True)
        skip = {src.name, *_external_files(src)}
        if model.kind == "genai":
            for f in Path(model.path).iterdir():
                if f.name not in skip and f.is_file():
                    shutil.copy2(f, folder / f.name)
            out_file = folder / src.name
        else:
            copy_side_files(src.parent, folder)
            out_file = folder / "model.onnx"
        save_onnx(proto, out_file, config)

        files = {config.adapter_name: save_weights(weights, folder / config.adapter_name, config.save_format)}
        for i, (name, path) in enumerate(config.adapter_paths.items()):
            files[name] = self._lay_out(
                f"{key}.adapter_paths.{name}", Path(path), recipe, src.name, found, weights, config,
                folder / name, ctx.work_dir / f"adapter-{i}",
            )

        ctx.metrics["lora_weights"] = len(found)
        ctx.metrics["adapter_size_mb"] = round(files[config.adapter_name].stat().st_size / 2**20, 3)
        attributes = {
            "adapters": {n: f.name for n, f in files.items()},
            "adapter_inputs" if config.make_inputs else "adapter_initializers": {
                n: [list(a.shape), str(a.dtype)] for n, (a, _) in weights.items()},
        }
        if model.kind == "genai":
            return ModelHandle(kind="genai", path=str(folder), task=model.task, load_kwargs=model.load_kwargs,
                               attributes={**model.attributes, **attributes})
        return output_handle(model, out_file, **attributes)

    @staticmethod
    def _lay_out(key: str, adapter: Path, recipe: dict[str, Any], filename: str, base: dict[str, LoraWeight],
                 base_w: dict[str, tuple[Any, int]], config: ExtractAdaptersConfig, stem: Path,
                 work: Path) -> Path:
        """Replay the base's ModelBuilder build with ``adapter`` and save its LoRA weights as ``stem``."""
        import onnx

        from honed.passes.model_builder import _staged_source, build_genai

        _check_peft_folder(key, adapter)
        source = Path(recipe["source"])
        if not (source / "config.json").is_file():
            raise UserError(f"{key}: the base model the genai model was built from, {source}, is gone; "
                            "laying out another adapter rebuilds from it")
        out = work / "model"
        shutil.rmtree(work, ignore_errors=True)
        try:
            build_genai(_staged_source(source, work), out, recipe["precision"], recipe["execution_provider"],
                        work / "builder_cache", {**recipe["options"], "adapter_path": str(adapter)})
            graph = onnx.load(str(out / filename)).graph
            found = find_lora_weights(graph)
            new_w = read_arrays(graph, list(found))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _check_fits(key, base, base_w, new_w, config)
        return save_weights(new_w, stem, config.save_format)


register_pass(ExtractAdapters)
