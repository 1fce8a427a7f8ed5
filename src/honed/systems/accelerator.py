"""Where passes run (host) and what the model is built for (target)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Device = Literal["cpu", "gpu", "npu"]

EP_BY_DEVICE: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "npu": "QNNExecutionProvider",
}


class Accelerator(BaseModel):
    """A device and the onnxruntime execution provider used on it (Olive's spelling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Device = Field("cpu", description="Device kind: cpu, gpu or npu.")
    execution_provider: str = Field(
        "CPUExecutionProvider", description="onnxruntime execution provider, e.g. CUDAExecutionProvider."
    )

    @property
    def torch_device(self) -> str:
        """The torch device string passes load models onto."""
        return "cuda" if self.device == "gpu" else "cpu"

    @property
    def ep_short(self) -> str:
        """Short provider name as onnxruntime-genai's builder spells it (cpu, cuda, dml)."""
        name = self.execution_provider.removesuffix("ExecutionProvider").lower()
        return {"dml": "dml", "cuda": "cuda", "cpu": "cpu", "webgpu": "webgpu", "qnn": "qnn"}.get(name, name)
