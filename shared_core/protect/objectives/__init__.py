"""Protection objectives: one small module each, all run by the same PGD engine."""

from __future__ import annotations

from .advdm import FSGM, AdvDM
from .aspl import ASPL
from .base import InnerLoopObjective, Objective
from .encoder import EncoderAttack
from .metacloak import MetaCloak
from .mist import Mist
from .sds import SDS
from .simac import SimAC
from .udp import EUDP, UDP

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (EUDP, UDP, AdvDM, FSGM, SDS, EncoderAttack, Mist, ASPL, MetaCloak, SimAC)}


#: what a method menu offers: "auto" (ProtectSettings' default, resolved per model by `ProtectSettings.for_model`) first
METHOD_CHOICES = ["auto", *OBJECTIVES]
AUTO_DESCRIPTION = "the method the mimicry benchmark chose for the model: PhotoGuard's encoder attack on latent (VAE) models such as SD 1.x/2.x/SDXL, EUDP on pixel-space models"


def make_objective(name: str, options: dict | None = None) -> Objective:
    """Instantiate an objective by name with its options, with errors that list what exists."""
    if name == "auto":
        raise ValueError('method "auto" depends on the model: resolve it with ProtectSettings.for_model(latent) first')
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad option for method {name!r}: {exc}. See `unlearnable methods`.") from None


__all__ = ["ASPL", "AUTO_DESCRIPTION", "EUDP", "METHOD_CHOICES", "OBJECTIVES", "UDP", "AdvDM", "EncoderAttack", "FSGM", "InnerLoopObjective", "MetaCloak", "Mist", "Objective", "SDS", "SimAC", "make_objective"]
