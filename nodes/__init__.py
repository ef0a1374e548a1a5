"""ComfyUI node declarations (thin wrappers over shared_core)."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
