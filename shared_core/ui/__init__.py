"""The one gradio UI, shared by the AUTOMATIC1111/Forge tab and `unlearnable ui`.

gradio is imported only when `build_ui` or `launch_app` is first used, so importing this package
(or the rest of shared_core) never needs gradio.
"""

from __future__ import annotations

from .hooks import StandaloneHooks, UIDefaults, UIHooks

__all__ = ["StandaloneHooks", "UIDefaults", "UIHooks", "build_ui", "launch_app"]


def __getattr__(name: str):
    if name in ("build_ui", "launch_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
