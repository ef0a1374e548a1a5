"""`python -m shared_core` is the `unlearnable` command."""

from .cli import main

raise SystemExit(main())
