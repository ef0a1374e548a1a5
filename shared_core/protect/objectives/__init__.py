"""Protection objectives: one small module each, all run by the same PGD engine."""

from __future__ import annotations

from .advdm import FSGM, AdvDM
from .aspl import ASPL
from .base import InnerLoopObjective, Objective
from .encoder import EncoderAttack
from .mist import Mist
from .sds import SDS
from .udp import EUDP, UDP

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (EUDP, UDP, AdvDM, FSGM, SDS, EncoderAttack, Mist, ASPL)}


def make_objective(name: str, options: dict | None = None) -> Objective:
    """Instantiate an objective by name with its options, with errors that list what exists."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad option for method {name!r}: {exc}. See `unlearnable methods`.") from None


__all__ = ["ASPL", "EUDP", "OBJECTIVES", "UDP", "AdvDM", "EncoderAttack", "FSGM", "InnerLoopObjective", "Mist", "Objective", "SDS", "make_objective"]
