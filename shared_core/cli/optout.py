"""The machine-readable opt-out on the command line.

The flags that `protect` and `mark` share, and `inspect-image`, which reads the opt-out back.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputFileError, UnlearnableError
from .common import EXIT_OK, EXIT_PARTIAL


def optout_from(args):
    """The OptOut asked for with --optout (checked before any work), or None."""
    if not args.optout:
        given = [f"--{name.replace('_', '-')}" for name in ("creator", "copyright", "contact", "tdm_policy", "c2pa_cert", "c2pa_key")
                 if getattr(args, name)]  # fmt: skip
        if given:
            raise UnlearnableError(f"{', '.join(given)} only take effect with --optout")
        return None
    from ..optout import OptOut

    optout = OptOut(data_mining=args.data_mining, tdm_policy=args.tdm_policy or "", creator=args.creator or "",
                    copyright=args.copyright or "", contact=args.contact or "", c2pa_cert=args.c2pa_cert or "",
                    c2pa_key=args.c2pa_key or "", c2pa_alg=args.c2pa_alg)  # fmt: skip
    optout.check()
    return optout


def add_optout_arguments(parser: argparse.ArgumentParser) -> None:
    from ..optout import C2PA_ALGORITHMS, DATA_MINING_VALUES

    group = parser.add_argument_group("machine-readable opt-out (see README, 'Machine-readable opt-out')")
    group.add_argument("--optout", action="store_true", help="write the XMP/IPTC data-mining prohibition and TDMRep reservation into every output")
    group.add_argument("--data-mining", default="prohibited", choices=list(DATA_MINING_VALUES),
                       help="PLUS Data Mining value (default prohibited: all text and data mining)")
    group.add_argument("--tdm-policy", default=None, help="URL of your TDMRep policy (written as tdm:policy)")
    group.add_argument("--creator", default=None, help="creator name (IPTC Creator, dc:creator)")
    group.add_argument("--copyright", default=None, help="copyright notice, e.g. '(c) 2026 Ann Artist' (IPTC Copyright Notice, dc:rights)")
    group.add_argument("--contact", default=None, help="e-mail or web address (IPTC Creator's Contact Info)")
    group.add_argument("--c2pa-cert", default=None, help="PEM certificate chain (signer first) to sign a C2PA training-mining manifest")
    group.add_argument("--c2pa-key", default=None, help="PEM private key of --c2pa-cert")
    group.add_argument("--c2pa-alg", default="es256", choices=list(C2PA_ALGORITHMS), help="signing algorithm of the key (default es256)")


def cmd_inspect_image(args) -> int:
    """Which machine-readable opt-out each image carries (XMP/IPTC, TDMRep, C2PA) and its protection record."""
    from ..optout import describe_inspection, inspect_image

    reports, failed = [], False
    for file in args.files:
        try:
            reports.append(inspect_image(file))
        except InputFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n".join(describe_inspection(report) for report in reports))
    return EXIT_PARTIAL if failed else EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `inspect-image` and its flags."""
    inspect_image = commands.add_parser("inspect-image", help="show the opt-out and protection record an image carries",
                                        description=cmd_inspect_image.__doc__)
    inspect_image.add_argument("files", nargs="+", help="image files")
    inspect_image.add_argument("--json", action="store_true")
    inspect_image.set_defaults(func=cmd_inspect_image)
