"""The owner's mimicry self-check: does a LoRA trained on the protected images learn less than one trained on the clean ones?"""

from .check import FEATURE_SPACE, MimicryResult, MimicrySettings, check_protection, protect_for_check
from .report import write_mimicry_report

__all__ = ["FEATURE_SPACE", "MimicryResult", "MimicrySettings", "check_protection", "protect_for_check", "write_mimicry_report"]
