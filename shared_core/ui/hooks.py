"""What the shared UI needs from the program hosting it (A1111/Forge or the standalone app).

A host hands `build_ui` one `UIHooks`: how to get a surrogate for the chosen model, which models
to offer, how to run long work exclusively (A1111's GPU queue lock; a plain lock standalone),
how to cancel, and where outputs go. Nothing here imports gradio or a host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import SettingsError

T = TypeVar("T")

DEFAULT_METHOD = "auto"
DEFAULT_BUDGET = 8.0
DEFAULT_STEPS = 100


def default_keys_dir() -> Path:
    """$UNLEARNABLE_KEYS_DIR, else ~/.unlearnable/keys: trace keys are secret, so never under a folder a web UI serves."""
    return Path(os.environ.get("UNLEARNABLE_KEYS_DIR") or Path.home() / ".unlearnable" / "keys").expanduser()


@dataclass
class UIDefaults:
    """Initial values of the Protect controls (A1111 reads them from its settings)."""

    method: str = DEFAULT_METHOD
    budget: float = DEFAULT_BUDGET
    steps: int = DEFAULT_STEPS
    model: str | None = None  # None = the first of `model_choices()`


@dataclass
class UIHooks:
    """Host hooks for `build_ui`.

    Attributes:
        get_surrogate: model choice (an entry of `model_choices()` or a path typed by the user) -> Surrogate.
        model_choices: the models offered in the dropdown, best first.
        run_exclusive: runs a zero-argument function while holding the host's GPU lock, returns its result.
        is_interrupted: true once the user pressed Cancel (or the host's Interrupt) during a run.
        interrupt: asks the running job to stop at the next PGD step.
        outputs_dir: folder (or a function returning it) under which each run gets a new folder.
        defaults: initial values of the Protect controls.
        host: "standalone", "a1111" or "forge": only changes wording.
        is_demo_model: whether a choice is an untrained demo model (the UI says so next to it).
        make_generators: for Verify, (model choice, options) -> (generate, control_generate or None, model info),
            or None to use the model's diffusers pipeline; options: lora, lora_strength, steps, guidance, resolution.
        allowed_dirs: folders a path typed into the UI may point into (reads), with writes only under the
            outputs folder; None leaves paths to the host's own rules (A1111/Forge).
        keys_dir: where Mark writes trace keys (mode 0600), outside every folder the UI serves; None: `default_keys_dir()`.
        api_endpoints: whether the buttons are also named API endpoints (A1111's and the app's --api).
    """

    get_surrogate: Callable[[str], Any]
    model_choices: Callable[[], list[str]]
    run_exclusive: Callable[[Callable[[], T]], T] = field(default=lambda fn: fn())
    is_interrupted: Callable[[], bool] = field(default=lambda: False)
    interrupt: Callable[[], None] = field(default=lambda: None)
    outputs_dir: Path | str | Callable[[], Path | str] = Path("outputs") / "unlearnable"
    defaults: UIDefaults = field(default_factory=UIDefaults)
    host: str = "standalone"
    is_demo_model: Callable[[str], bool] = field(default=lambda choice: str(choice).startswith("builtin:"))
    make_generators: Callable[[str, dict], tuple | None] = field(default=lambda choice, options: None)
    allowed_dirs: tuple[Path, ...] | None = None
    keys_dir: Path | str | None = None
    api_endpoints: bool = False

    def resolve_outputs_dir(self) -> Path:
        folder = self.outputs_dir() if callable(self.outputs_dir) else self.outputs_dir
        return Path(folder).expanduser()

    def resolve_keys_dir(self) -> Path:
        return Path(self.keys_dir).expanduser() if self.keys_dir else default_keys_dir()

    def readable(self, path: Path, what: str) -> Path:
        """`path` with `..` and symlinks resolved, if it lies inside an allowed folder; else a SettingsError."""
        if self.allowed_dirs is None:
            return path
        real = path.resolve()
        roots = [Path(root).resolve() for root in self.allowed_dirs]
        if any(real.is_relative_to(root) for root in roots):
            return real
        raise SettingsError(
            f"{what} {path} is outside the folders this app may read ({', '.join(map(str, roots))}); "
            "start it with --allow-dir FOLDER to allow another"
        )

    def writable(self, path: Path, what: str) -> Path:
        """`path` resolved, if it lies inside the outputs folder (the only place the app writes); else a SettingsError."""
        if self.allowed_dirs is None:
            return path
        real, outputs = path.resolve(), self.resolve_outputs_dir().resolve()
        if real.is_relative_to(outputs):
            return real
        raise SettingsError(f"{what} {path} is outside the outputs folder {outputs}: this app writes only there")


class StandaloneHooks(UIHooks):
    """Hooks of `unlearnable ui`: surrogates loaded with `load_surrogate` and kept while reused.

    Runs are serialised by a lock (one surrogate in memory at a time) and Cancel sets an event
    that the next PGD step sees.
    """

    def __init__(self, outputs_dir: Path | str = Path("outputs") / "unlearnable", device: str = "auto",
                 models: list[str] | None = None, defaults: UIDefaults | None = None, *,
                 allowed_dirs: tuple[Path, ...] | None = None, keys_dir: Path | str | None = None, api_endpoints: bool = False):
        self._device = device
        self._extra_models = list(models or [])
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._cached: tuple[str, Any] | None = None
        super().__init__(
            get_surrogate=self._get_surrogate,
            model_choices=self._model_choices,
            run_exclusive=self._run_exclusive,
            is_interrupted=self._cancel.is_set,
            interrupt=self._cancel.set,
            outputs_dir=Path(outputs_dir),
            defaults=defaults or UIDefaults(),
            host="standalone",
            allowed_dirs=allowed_dirs,
            keys_dir=keys_dir,
            api_endpoints=api_endpoints,
        )

    def _model_choices(self) -> list[str]:
        from ..surrogates import BUILTIN_MODELS

        return self._extra_models + [name for name in BUILTIN_MODELS if name not in self._extra_models]

    def _get_surrogate(self, choice: str):
        if self._cached and self._cached[0] == choice:
            return self._cached[1]
        from ..surrogates import load_surrogate

        self._cached = None  # free the previous model before loading the next
        surrogate = load_surrogate(choice, self._device)
        self._cached = (choice, surrogate)
        return surrogate

    def _run_exclusive(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._cancel.clear()
            try:
                return fn()
            finally:
                self._cancel.clear()
