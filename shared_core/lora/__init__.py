"""Reading downloaded LoRA files safely: format, base model, training metadata, trigger search."""

from .apply import AppliedLora, apply_lora
from .inspect import LoraReport, TriggerHit, inspect_lora
from .safetensors_header import read_safetensors_header

__all__ = ["AppliedLora", "LoraReport", "TriggerHit", "apply_lora", "inspect_lora", "read_safetensors_header"]
