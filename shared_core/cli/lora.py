"""`unlearnable inspect-lora`: read a LoRA without running it, and test it for the owners' keys."""

from __future__ import annotations

import argparse
import json

from ..errors import UnlearnableError
from .common import EXIT_OK
from .trace import add_generation_arguments, verify_and_report


def cmd_inspect_lora(args) -> int:
    """Read a LoRA safely: format, base model, training metadata, and the owners' triggers.

    With --keys and --model BASE it also runs the generation test of `unlearnable verify` for
    every key on BASE + this LoRA.
    """
    from ..lora import inspect_lora
    from ..trace.key import load_keys, mask_triggers

    if args.model and not args.keys:
        raise UnlearnableError("--model runs the generation test of the keys' templates: give --keys too")
    loaded = load_keys(args.keys)[0] if args.keys else {}
    labels = {key.trigger: f"[trigger of {name}]" for name, (key, _) in loaded.items()}
    triggers = list(args.trigger or []) + list(labels)
    report = inspect_lora(args.file, triggers=triggers or None)
    text = json.dumps(report.to_dict(), indent=2) if args.json else report.to_text()
    print(mask_triggers(text, labels) if len(loaded) > 1 else text)  # several owners' keys: named, their triggers never printed
    if args.model and loaded:
        return verify_and_report(args, args.keys, args.file)
    if triggers and not args.json:
        keys = " ".join(args.keys) if args.keys else "KEY"
        print(f"generation-based check: unlearnable verify --keys {keys} --model BASE_MODEL --lora {args.file}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `inspect-lora` and its flags."""
    inspect = commands.add_parser("inspect-lora", help="read a LoRA safely: format, base model, metadata, triggers", description=cmd_inspect_lora.__doc__)
    inspect.add_argument("file", help=".safetensors (or .ckpt/.pt, read with weights_only=True)")
    inspect.add_argument("--keys", "--key", dest="keys", nargs="+", action="extend", default=[],
                         help="key files or folders whose triggers are searched for (several keys: shown by key name only)")
    inspect.add_argument("--trigger", action="append", help="a token to search for (repeatable)")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--model", default=None, help="base model: also run the generation test of every key on it with this LoRA")
    add_generation_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect_lora)
