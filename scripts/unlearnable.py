"""Loaded by AUTOMATIC1111 / Forge from the extension's scripts/ folder; all the work is in a1111_extension."""

import a1111_extension

a1111_extension.register()
