"""The `unlearnable` command. Thin: parses arguments, calls the core, prints the result.

Each command group declares its flags beside its handler, in a module of its own (`register` adds its
commands); this module only assembles them, in the order `--help` lists them.

Exit codes: 0 success, 1 some inputs failed (the rest were processed), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import UnlearnableError
from . import bench, info, lora, mimicry, optout, protect, trace, ui
from .common import EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnable",
                                     description="Protect images against diffusion-model training, and trace it.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"unlearnable {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (protect, info, trace, mimicry, lora, optout, ui, bench):
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by benchmarks that write their command
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UnlearnableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command again to resume", file=sys.stderr)
        return 130
