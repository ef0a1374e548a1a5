"""comfy_api.latest: the V3 node API (`io`)."""

from . import _io as io

__all__ = ["io"]
