"""Unlearnable's host-free core: protection, tracing and LoRA inspection.

Nothing here imports ComfyUI, AUTOMATIC1111 or gradio; the host faces are thin adapters over it.
"""

__version__ = "0.1.0"
