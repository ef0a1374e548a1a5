"""One declaration per node, turned into a ComfyUI V3 class (comfy_api.latest) or a classic V1 class.

A node is declared once as a `NodeSpec`: its inputs (built lazily, so option lists that need the
core are only computed when ComfyUI asks for the schema), its outputs, and a plain `run(**inputs)`
function returning a `Result`. `build_mappings` makes V3 classes when the host has
`comfy_api.latest` with every type used here, and V1 classes (INPUT_TYPES / RETURN_TYPES /
FUNCTION) otherwise; both are listed in NODE_CLASS_MAPPINGS, which every ComfyUI version reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CATEGORY = "Unlearnable"
PREFIX = "Unlearnable"

#: ComfyUI socket types used by the pack -> the comfy_api.latest.io class of each
V3_TYPES = {
    "IMAGE": "Image",
    "MASK": "Mask",
    "MODEL": "Model",
    "VAE": "Vae",
    "CLIP": "Clip",
    "CONDITIONING": "Conditioning",
    "STRING": "String",
    "INT": "Int",
    "FLOAT": "Float",
    "BOOLEAN": "Boolean",
    "COMBO": "Combo",
}
WIDGETS = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}


@dataclass(frozen=True)
class Param:
    """One input socket or widget."""

    name: str
    kind: str  # a key of V3_TYPES
    tooltip: str = ""
    optional: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: Sequence[str] = ()  # COMBO choices
    multiline: bool = False
    seed: bool = False  # INT that the front-end can randomise after each run

    def __post_init__(self) -> None:
        if self.kind not in V3_TYPES:
            raise ValueError(f"unknown socket type {self.kind!r}")


@dataclass(frozen=True)
class Out:
    kind: str
    name: str
    tooltip: str = ""


@dataclass
class Result:
    """What a node returns: its output values, and text/images for the node's own panel."""

    values: tuple
    ui: dict | None = None


@dataclass(frozen=True)
class NodeSpec:
    node_id: str  # globally unique: PREFIX + name
    display_name: str
    description: str
    inputs: Callable[[], list[Param]]
    outputs: tuple[Out, ...]
    run: Callable[..., Result]
    output_node: bool = False
    category: str = CATEGORY
    extra: dict = field(default_factory=dict)


# -- V3 ------------------------------------------------------------------------------------


def _v3_input(io, p: Param):
    cls = getattr(io, V3_TYPES[p.kind]).Input
    common = {"optional": p.optional, "tooltip": p.tooltip or None}
    if p.kind == "COMBO":
        return cls(p.name, options=list(p.options), default=p.default, **common)
    if p.kind == "INT":
        return cls(p.name, default=p.default, min=p.min, max=p.max, step=p.step, control_after_generate=p.seed or None, **common)
    if p.kind == "FLOAT":
        return cls(p.name, default=p.default, min=p.min, max=p.max, step=p.step, **common)
    if p.kind == "STRING":
        return cls(p.name, default=p.default, multiline=p.multiline, **common)
    if p.kind == "BOOLEAN":
        return cls(p.name, default=p.default, **common)
    return cls(p.name, **common)


def _v3_class(spec: NodeSpec, io):
    def define_schema(cls):
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display_name,
            category=spec.category,
            description=spec.description,
            inputs=[_v3_input(io, p) for p in spec.inputs()],
            outputs=[getattr(io, V3_TYPES[o.kind]).Output(display_name=o.name, tooltip=o.tooltip or None) for o in spec.outputs],
            is_output_node=spec.output_node,
        )

    def execute(cls, **inputs):
        result = spec.run(**inputs)
        return io.NodeOutput(*result.values, ui=result.ui)

    return type(spec.node_id, (io.ComfyNode,), {
        "__doc__": spec.description,
        "__module__": __name__,
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    })  # fmt: skip


# -- V1 ------------------------------------------------------------------------------------


def _v1_input(p: Param) -> tuple:
    options: dict[str, Any] = {}
    if p.tooltip:
        options["tooltip"] = p.tooltip
    for key in ("default", "min", "max", "step"):
        if getattr(p, key) is not None:
            options[key] = getattr(p, key)
    if p.multiline:
        options["multiline"] = True
    if p.seed:
        options["control_after_generate"] = True
    if p.kind == "COMBO":
        return (list(p.options), options)
    return (p.kind, options)


def _v1_class(spec: NodeSpec):
    def input_types(cls):
        types: dict[str, dict] = {"required": {}, "optional": {}}
        for p in spec.inputs():
            types["optional" if p.optional else "required"][p.name] = _v1_input(p)
        return types

    def run(self, **inputs):
        result = spec.run(**inputs)
        if result.ui is not None:
            return {"ui": result.ui, "result": result.values}
        return result.values

    return type(spec.node_id, (), {
        "__doc__": spec.description,
        "__module__": __name__,
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.kind for o in spec.outputs),
        "RETURN_NAMES": tuple(o.name for o in spec.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in spec.outputs),
        "FUNCTION": "run",
        "CATEGORY": spec.category,
        "DESCRIPTION": spec.description,
        "OUTPUT_NODE": spec.output_node,
        "run": run,
    })  # fmt: skip


# -- mappings ------------------------------------------------------------------------------


def host_io():
    """comfy_api.latest.io when the host has it with every type this pack uses, else None."""
    try:
        from comfy_api.latest import io
    except ImportError:
        return None
    needed = [*V3_TYPES.values(), "ComfyNode", "Schema", "NodeOutput"]
    return io if all(hasattr(io, name) for name in needed) else None


def build_mappings(specs: list[NodeSpec], io=None, *, v3: bool | None = None) -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS for `specs` (V3 classes when possible)."""
    if v3 is None or v3:
        io = io or host_io()
    if v3 and io is None:
        raise ImportError("comfy_api.latest is not available")
    make = (lambda spec: _v3_class(spec, io)) if io is not None and v3 is not False else _v1_class
    classes = {spec.node_id: make(spec) for spec in specs}
    return classes, {spec.node_id: spec.display_name for spec in specs}
