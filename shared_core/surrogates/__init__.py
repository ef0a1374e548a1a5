"""Surrogate models: the protocol the engine needs and its diffusers adapters."""

from .base import Surrogate
from .loading import BUILTIN_MODELS, load_surrogate, resolve_device

__all__ = ["BUILTIN_MODELS", "Surrogate", "load_surrogate", "resolve_device"]
