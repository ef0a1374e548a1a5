"""Run a node class the way ComfyUI's executor does, without a server.

`node_info` reads a V3 class through its schema (GET_SCHEMA -> get_v1_info, as /object_info does)
or a V1 class through INPUT_TYPES / RETURN_TYPES. `run_node` fills widget defaults as the
front-end sends them, validates required inputs, COMBO choices and number ranges as ComfyUI's
prompt validation does, and executes under `torch.inference_mode()` like every ComfyUI prompt.
"""

from __future__ import annotations

import torch


def is_v3(cls) -> bool:
    return hasattr(cls, "define_schema") and hasattr(cls, "GET_SCHEMA")


def node_info(cls) -> dict:
    if is_v3(cls):
        info = cls.GET_SCHEMA().get_v1_info(cls)
        return {"input": info.input, "output": list(info.output), "output_name": list(info.output_name), "output_node": info.output_node,
                "display_name": info.display_name, "category": info.category, "description": info.description}  # fmt: skip
    return {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "output_node": getattr(cls, "OUTPUT_NODE", False), "category": cls.CATEGORY, "description": getattr(cls, "DESCRIPTION", "")}  # fmt: skip


def _validate(name: str, spec: tuple, value) -> None:
    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
    if isinstance(kind, list):
        assert value in kind, f"{name}: {value!r} is not one of {kind}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)), f"{name}: {value!r} is not a number"
        if "min" in options:
            assert value >= options["min"], f"{name}: {value} < min {options['min']}"
        if "max" in options:
            assert value <= options["max"], f"{name}: {value} > max {options['max']}"
    elif kind == "STRING":
        assert isinstance(value, str), f"{name}: {value!r} is not a string"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{name}: {value!r} is not a boolean"


def run_node(cls, **inputs) -> tuple[tuple, dict | None]:
    """(outputs, ui) of one execution."""
    info = node_info(cls)
    values = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            widget = isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")
            if name in inputs:
                values[name] = inputs[name]
            elif widget and section == "required":
                options = spec[1] if len(spec) > 1 else {}
                values[name] = options.get("default", spec[0][0] if isinstance(spec[0], list) else None)
            elif section == "required":
                raise AssertionError(f"required input {name!r} is missing")
            if name in values and widget:
                _validate(name, spec, values[name])
    unknown = set(inputs) - set(values)
    assert not unknown, f"inputs the node does not declare: {unknown}"
    with torch.inference_mode():
        if is_v3(cls):
            output = cls.EXECUTE_NORMALIZED(**values)
            result, ui = output.args, output.ui
        else:
            output = getattr(cls(), cls.FUNCTION)(**values)
            result, ui = (output["result"], output.get("ui")) if isinstance(output, dict) else (output, None)
    assert len(result) == len(info["output"]), f"{len(result)} outputs for {len(info['output'])} declared"
    return tuple(result), ui
