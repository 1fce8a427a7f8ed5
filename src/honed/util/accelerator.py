"""Where passes run (host) and what the model is built for (target)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Device = Literal["cpu", "gpu", "npu"]

EP_BY_DEVICE: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "npu": "QNNExecutionProvider",
}

EXECUTION_PROVIDERS: tuple[str, ...] = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider",
    "MIGraphXExecutionProvider", "ROCMExecutionProvider", "OpenVINOExecutionProvider", "DnnlExecutionProvider",
    "VitisAIExecutionProvider", "QNNExecutionProvider", "NnapiExecutionProvider", "VSINPUExecutionProvider",
    "JsExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider", "RknpuExecutionProvider",
    "WebNNExecutionProvider", "WebGpuExecutionProvider", "XnnpackExecutionProvider", "CANNExecutionProvider",
    "AzureExecutionProvider", "ArmNNExecutionProvider", "ACLExecutionProvider", "TvmExecutionProvider",
)
"""Every provider name onnxruntime knows (``onnxruntime.get_all_providers()`` across its builds), without
importing onnxruntime to validate a config; a test checks the installed onnxruntime names no other."""


def execution_provider_problem(name: object) -> str | None:
    """Why ``name`` is not an onnxruntime execution provider, with the closest valid name; None if it is one."""
    import difflib

    if not isinstance(name, str):
        return f"must be an execution provider name (a string), got {type(name).__name__}"
    if name in EXECUTION_PROVIDERS:
        return None
    close = difflib.get_close_matches(name, EXECUTION_PROVIDERS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown execution provider '{name}'; {hint}valid names: {', '.join(EXECUTION_PROVIDERS)}"


class Accelerator(BaseModel):
    """A device and the onnxruntime execution provider used on it (Olive's spelling)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    device: Device = Field("cpu", description="Device kind: cpu, gpu or npu.")
    execution_provider: str = Field(
        "CPUExecutionProvider",
        description="onnxruntime execution provider, e.g. CUDAExecutionProvider (one of EXECUTION_PROVIDERS).",
    )

    @field_validator("execution_provider")
    @classmethod
    def _known(cls, v: str) -> str:
        problem = execution_provider_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @property
    def torch_device(self) -> str:
        """The torch device string passes load models onto."""
        return "cuda" if self.device == "gpu" else "cpu"

    @property
    def ep_short(self) -> str:
        """Short provider name as onnxruntime-genai's builder spells it (cpu, cuda, dml)."""
        name = self.execution_provider.removesuffix("ExecutionProvider").lower()
        return {"dml": "dml", "cuda": "cuda", "cpu": "cpu", "webgpu": "webgpu", "qnn": "qnn"}.get(name, name)
