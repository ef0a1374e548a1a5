"""AUTOMATIC1111 / Forge face: the "Unlearnable" tab, its settings, and the loaded checkpoint as a surrogate.

A1111 loads `scripts/unlearnable.py` with the extension folder on sys.path; that file imports this
package and calls `register()`. `shared_core` is imported here, while that path is in place, so the
core's submodules stay importable after A1111 restores sys.path.
"""

from __future__ import annotations

import shared_core  # see the module docstring
import shared_core.ui  # noqa: F401 (see the module docstring)

from .host import on_ui_settings, on_ui_tabs, register

__all__ = ["on_ui_settings", "on_ui_tabs", "register"]
