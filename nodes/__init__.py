"""ComfyUI node declarations (thin wrappers over shared_core).

Loaded relatively by the root `__init__.py` (ComfyUI imports the pack by file path); this package
is never put on sys.path, since ComfyUI has a top-level module of its own called `nodes`.
Heavy imports (the core, diffusers, comfy) happen when a node's schema is requested or it runs.
"""

from .declare import build_mappings
from .lora_nodes import INSPECT_LORA
from .mimicry_nodes import MIMICRY_TEST
from .protect_nodes import PROTECT_IMAGE, PROTECTION_REPORT, SAVE_PROTECTED_IMAGE
from .trace_nodes import MARK_WITH_TEMPLATE, VERIFY_MODEL

SPECS = [PROTECT_IMAGE, PROTECTION_REPORT, SAVE_PROTECTED_IMAGE, MARK_WITH_TEMPLATE, VERIFY_MODEL, INSPECT_LORA, MIMICRY_TEST]

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings(SPECS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "SPECS"]
