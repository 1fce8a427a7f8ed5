"""Serializable descriptions of a model on disk.

A handle says what a model is (kind), where it lives and how to load it; it never holds
weights.  Handles are what flows between passes and what the cache stores as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ModelKind = Literal["hf", "peft", "onnx", "genai"]


class ModelHandle(BaseModel):
    """A model on disk: an HF folder or hub id, a PEFT adapter over a base, ONNX, or a genai folder."""

    model_config = ConfigDict(extra="forbid")

    kind: ModelKind
    path: str = Field(description="Folder or file of the model; for a hub model, its id.")
    base: ModelHandle | None = Field(None, description="Base model of a PEFT adapter.")
    task: str = "text-generation"
    load_kwargs: dict[str, Any] = Field(default_factory=dict, description="from_pretrained arguments.")
    id: str = Field("", description="Content identity: file hash for inputs, cache key for pass outputs.")
    attributes: dict[str, Any] = Field(default_factory=dict, description="Facts passes leave for later passes.")

    @property
    def local_path(self) -> Path:
        return Path(self.path)

    @property
    def is_hub_id(self) -> bool:
        return self.kind == "hf" and not Path(self.path).exists()

    def files(self) -> list[Path]:
        """Files that make up this model (not its base)."""
        p = Path(self.path)
        if p.is_file():
            # An ONNX file's external data sits beside it.
            return [p, *sorted(q for q in p.parent.glob(p.name + ".data*") if q.is_file())]
        if p.is_dir():
            return sorted(q for q in p.rglob("*") if q.is_file())
        return []

    def rebased(self, old: str, new: str) -> ModelHandle:
        """The same handle with path prefix ``old`` replaced by ``new`` (cache temp dir → entry)."""
        path = new + self.path[len(old):] if self.path.startswith(old) else self.path
        base = self.base.rebased(old, new) if self.base else None
        return self.model_copy(update={"path": path, "base": base})
