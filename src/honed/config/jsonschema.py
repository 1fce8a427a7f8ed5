"""JSON Schema of honed's workflow files, with every registered pass's parameters.

Editors (VS Code's json.schemas / yaml.schemas) use it for completion and inline errors.
"""

from __future__ import annotations

from typing import Any

from honed.config.schema import WorkflowConfig
from honed.passes.base import all_passes


def workflow_schema() -> dict[str, Any]:
    """The workflow schema; ``passes`` values are one of the registered passes' schemas."""
    schema = WorkflowConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    choices = []
    for name, cls in all_passes().items():
        sub = cls.config_class.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        sub["properties"] = {"type": {"const": name, "description": cls.description}, **sub.get("properties", {})}
        sub["required"] = ["type", *sub.get("required", [])]
        sub["title"] = name
        defs[f"pass_{name}"] = sub
        choices.append({"$ref": f"#/$defs/pass_{name}"})
    schema["properties"]["passes"]["additionalProperties"] = {"oneOf": choices}
    defs.pop("PassEntry", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "honed workflow"
    return schema
