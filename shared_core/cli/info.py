"""`unlearnable info`: versions, built-in models and devices, as a bug report needs them."""

from __future__ import annotations

import argparse
import ast

from .. import __version__
from .common import EXIT_OK
from .source import assigned_value, source_tree


def cmd_info(args) -> int:
    """Versions and built-in models at once; devices last, as only torch can tell them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    print(f"unlearnable {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(", ".join(f"{name} {installed(name)}" for name in ("torch", "diffusers", "transformers", "peft", "pillow", "gradio")))
    print("built-in models:")
    for name, text in ast.literal_eval(assigned_value(source_tree("surrogates.loading"), "BUILTIN_MODELS")).items():
        print(f"  {name}: {text}")
    print("devices (importing torch)...", flush=True)
    import torch

    print(f"cuda available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB")
    mps = getattr(torch.backends, "mps", None)
    print(f"mps available: {bool(mps and mps.is_available())}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `info`."""
    commands.add_parser("info", help="print versions and devices").set_defaults(func=cmd_info)
