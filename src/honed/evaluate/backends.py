"""The evaluators' view of a model: the runtimes of ``honed.models.runtime`` (one per model kind:
HF/PEFT in torch, ONNX in onnxruntime with the target's execution provider, onnxruntime-genai folders),
under the names the evaluators and lm-eval use.

A backend *is* its runtime (scores, greedy generation with the shared end-of-sequence rule, class
logits); the one difference is ``forward``, which here is the single timed inference call that
latency measures (``Runtime.prefill``) rather than the logits (``Runtime.forward``).
"""

from __future__ import annotations

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.runtime import GenaiRuntime, HFRuntime, OnnxRuntime, Runtime
from honed.util.accelerator import Accelerator


class Backend(Runtime):
    """A loaded model plus its tokenizer (a ``Runtime``); ``forward`` is one timed inference call."""

    def forward(self, batch: list[list[int]]) -> None:  # type: ignore[override]
        """One inference call on a batch of equal-length sequences (what latency times)."""
        self.prefill(batch)


class HFBackend(Backend, HFRuntime):
    """``HFRuntime`` for the evaluators."""

    def __init__(self, handle: ModelHandle, device: str = "cpu") -> None:
        HFRuntime.__init__(self, handle, device=device)


class OnnxBackend(Backend, OnnxRuntime):
    """``OnnxRuntime`` for the evaluators, on the target's execution provider."""

    def __init__(self, handle: ModelHandle, target: Accelerator) -> None:
        OnnxRuntime.__init__(self, handle, target)


class GenaiBackend(Backend, GenaiRuntime):
    """``GenaiRuntime`` for the evaluators."""

    def __init__(self, handle: ModelHandle, target: Accelerator) -> None:
        GenaiRuntime.__init__(self, handle, target)


def open_backend(handle: ModelHandle, target: Accelerator | None = None) -> Backend:
    """The backend for a handle's kind, on the target's device / execution provider."""
    target = target or Accelerator()
    if handle.kind in ("hf", "peft"):
        return HFBackend(handle, device=target.torch_device)
    if handle.kind == "onnx":
        return OnnxBackend(handle, target)
    if handle.kind == "genai":
        return GenaiBackend(handle, target)
    raise UserError(f"cannot evaluate a model of kind '{handle.kind}'")
