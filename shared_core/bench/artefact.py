"""What every benchmark JSON records beside its numbers: enough to rerun the measurement and to judge it."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from ..files import atomic_write_text


def device_name(device: torch.device) -> str:
    """The accelerator's or CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})"


def provenance(command: str, device: torch.device | str) -> dict:
    """The command, versions, device and machine load of a measurement (load: other work skews timings)."""
    device = torch.device(device)
    return {
        "command": command,
        "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "unlearnable": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "device_name": device_name(device),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1) if hasattr(os, "sysconf") else None,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_artefact(path: str | Path, command: str, device: torch.device | str, body: dict) -> None:
    """Writes provenance plus `body` as indented JSON, atomically (creating the folder)."""
    atomic_write_text(path, json.dumps({**provenance(command, device), **body}, indent=2) + "\n")
