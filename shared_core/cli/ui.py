"""`unlearnable ui`: the standalone web app."""

from __future__ import annotations

import argparse

from ..errors import UnlearnableError
from .common import EXIT_OK


def cmd_ui(args) -> int:
    """Start the standalone web app (the same UI as the AUTOMATIC1111/Forge tab)."""
    try:
        from ..ui.app import launch_app
    except ImportError as exc:
        raise UnlearnableError(f"the web app needs gradio ({exc}): pip install 'unlearnable[ui]'") from None
    launch_app(host=args.host, port=args.port, share=args.share, outputs_dir=args.out, device=args.device,
               models=args.model or None, open_browser=not args.no_browser, allow_dirs=args.allow_dir,
               keys_dir=args.keys_dir, auth=args.auth, api=args.api)  # fmt: skip
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Declare `ui` and its flags."""
    ui = commands.add_parser("ui", help="start the web app on http://127.0.0.1:7860", description=cmd_ui.__doc__)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this computer only)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--share", action="store_true", help="also open a public gradio share link (needs --auth)")
    ui.add_argument("--auth", default=None, metavar="USER:PASS", help="log-in required by the app; needed with --share or a --host other than 127.0.0.1")
    ui.add_argument("--out", default=None, help="outputs folder (the only folder the app writes to)")
    ui.add_argument("--allow-dir", action="append", default=[], metavar="FOLDER",
                    help="a folder whose files may be named in the app's path boxes (repeatable; the outputs folder and uploads always are)")
    ui.add_argument("--keys-dir", default=None, help="where Mark writes trace keys (default $UNLEARNABLE_KEYS_DIR or ~/.unlearnable/keys; never served)")
    ui.add_argument("--api", action="store_true", help="also offer the buttons as named API endpoints")
    ui.add_argument("--model", action="append", help="model choices offered (repeatable; default builtin:tiny)")
    ui.add_argument("--device", default="auto")
    ui.add_argument("--no-browser", action="store_true")
    ui.set_defaults(func=cmd_ui)
