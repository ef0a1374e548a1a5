"""A subset of comfy_api.latest.io (ComfyUI v0.3.64) with the same class names and signatures.

Types: Image, Mask, Model, Vae, Clip, Conditioning, Latent (sockets) and Boolean, Int, Float, String,
Combo (widgets); Schema (validate + finalize, get_v1_info); ComfyNode (GET_SCHEMA, VALIDATE_CLASS,
EXECUTE_NORMALIZED); NodeOutput.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any


def prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, extra_dict=None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self):
        return prune_dict({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip, "lazy": self.lazy}) | prune_dict(self.extra_dict)

    def get_io_type(self):
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: Any = None,
                 socketless: bool = None, widget_type: str = None, force_input: bool = None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self):
        return super().as_dict() | prune_dict({"default": self.default, "socketless": self.socketless, "widgetType": self.widget_type,
                                               "forceInput": self.force_input})


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def get_io_type(self):
        return self.io_type


def _socket(io_type: str):
    class Type:
        class Input(Input):
            pass

        class Output(Output):
            pass

    Type.io_type = Type.Input.io_type = Type.Output.io_type = io_type
    return Type


Image = _socket("IMAGE")
Mask = _socket("MASK")
Model = _socket("MODEL")
Vae = _socket("VAE")
Clip = _socket("CLIP")
Conditioning = _socket("CONDITIONING")
Latent = _socket("LATENT")


class Boolean:
    io_type = "BOOLEAN"

    class Input(WidgetInput):
        io_type = "BOOLEAN"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: bool = None,
                     label_on: str = None, label_off: str = None, socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on = label_on
            self.label_off = label_off

    class Output(Output):
        io_type = "BOOLEAN"


class Int:
    io_type = "INT"

    class Input(WidgetInput):
        io_type = "INT"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: int = None,
                     min: int = None, max: int = None, step: int = None, control_after_generate: bool = None, display_mode=None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self):
            return super().as_dict() | prune_dict({"min": self.min, "max": self.max, "step": self.step,
                                                   "control_after_generate": self.control_after_generate})

    class Output(Output):
        io_type = "INT"


class Float:
    io_type = "FLOAT"

    class Input(WidgetInput):
        io_type = "FLOAT"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: float = None,
                     min: float = None, max: float = None, step: float = None, round: float = None, display_mode=None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round

        def as_dict(self):
            return super().as_dict() | prune_dict({"min": self.min, "max": self.max, "step": self.step, "round": self.round})

    class Output(Output):
        io_type = "FLOAT"


class String:
    io_type = "STRING"

    class Input(WidgetInput):
        io_type = "STRING"

        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, multiline=False,
                     placeholder: str = None, default: str = None, dynamic_prompts: bool = None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def as_dict(self):
            return super().as_dict() | prune_dict({"multiline": self.multiline, "placeholder": self.placeholder})

    class Output(Output):
        io_type = "STRING"


class Combo:
    io_type = "COMBO"

    class Input(WidgetInput):
        io_type = "COMBO"

        def __init__(self, id: str, options: list = None, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default=None, control_after_generate: bool = None, upload=None, image_folder=None, remote=None,
                     socketless: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.multiselect = False
            self.options = options
            self.control_after_generate = control_after_generate

        def as_dict(self):
            return super().as_dict() | prune_dict({"multiselect": self.multiselect, "options": self.options})

    class Output(Output):
        io_type = "COMBO"


@dataclass
class NodeInfoV1:
    input: dict
    output: list
    output_name: list
    name: str
    display_name: str
    category: str
    description: str
    output_node: bool


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        input_ids = [i.id for i in self.inputs or []]
        output_ids = [o.id for o in self.outputs or []]
        issues = []
        if len(set(input_ids)) != len(input_ids):
            issues.append(f"Input ids must be unique, but {[i for i, c in Counter(input_ids).items() if c > 1]} are not.")
        if len(set(output_ids)) != len(output_ids):
            issues.append(f"Output ids must be unique, but {[i for i, c in Counter(output_ids).items() if c > 1]} are not.")
        if set(input_ids) & set(output_ids):
            issues.append("Ids must be unique between inputs and outputs.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self):
        for index, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"

    def get_v1_info(self, cls) -> NodeInfoV1:
        inputs = {"required": {}}
        for i in self.inputs or []:
            key = "optional" if i.optional else "required"
            options = i.as_dict()
            inputs.setdefault(key, {})[i.id] = (options.pop("options"), options) if i.io_type == "COMBO" else (i.get_io_type(), options)
        outputs = self.outputs or []
        return NodeInfoV1(input=inputs, output=[o.io_type for o in outputs], output_name=[o.display_name or o.io_type for o in outputs],
                          name=self.node_id, display_name=self.display_name, category=self.category, description=self.description,
                          output_node=self.is_output_node)


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None


class ComfyNode:
    SCHEMA = None
    hidden = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def VALIDATE_CLASS(cls):
        for name in ("define_schema", "execute"):
            if getattr(cls, name).__func__ is getattr(ComfyNode, name).__func__:
                raise Exception(f"No {name} function was defined for node class {cls.__name__}.")

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        cls.VALIDATE_CLASS()
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:
        result = cls.execute(*args, **kwargs)
        if result is None:
            return NodeOutput()
        if isinstance(result, tuple):
            return NodeOutput(*result)
        if not isinstance(result, NodeOutput):
            raise Exception(f"Invalid return type from node: {type(result)}")
        return result
