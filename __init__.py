"""ComfyUI entry point of the Unlearnable node pack.

ComfyUI imports this file as a package from `custom_nodes/`; the nodes are imported relatively,
so no folder of this pack is ever put on sys.path (ComfyUI has its own top-level `nodes`).
Imported any other way (pytest collecting the repository root, a plain `import`), it exports
empty mappings and imports nothing heavy.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = None

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
