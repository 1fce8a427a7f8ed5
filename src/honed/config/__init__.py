"""Workflow configs: honed's schema, Olive translation, loading and JSON Schema export."""

from honed.config.load import Workflow, load_workflow, validate

__all__ = ["Workflow", "load_workflow", "validate"]
