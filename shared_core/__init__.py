"""Unlearnable's host-free core: protection, tracing and LoRA inspection.

Nothing here imports ComfyUI, AUTOMATIC1111 or gradio; the host faces are thin adapters over it.
"""

import logging

__version__ = "0.1.0"


class _TorchvisionFallbackFilter(logging.Filter):
    """Drop transformers' notice that an image processor falls back to PIL without torchvision.

    diffusers imports CLIP/SigLIP image processors it never runs here; without torchvision (a plain
    `pip install` of this package) transformers >= 5 prints that fallback on every import.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())
