"""One plain settings object shared by the CLI, the nodes, the tab and the benchmark."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

#: what method "auto" (the default) runs, by the kind of model, as the photo mimicry benchmark chose (benchmarks/README.md,
#: "Decisions"): PhotoGuard's encoder attack where a VAE encodes the images (SD 1.x/2.x/SDXL: every host model), and EUDP
#: for pixel-space models, which have no encoder to attack
AUTO_METHODS = {"latent": "encoder", "pixel": "eudp"}


@dataclass
class ProtectSettings:
    """Everything that decides what a protected image looks like.

    Attributes:
        method: "auto" (the default: see AUTO_METHODS) or an objective name: eudp, udp, advdm,
            fsgm, sds, encoder, mist, aspl, metacloak, simac (fsgm fixes steps=1, step_size=budget and
            random_init=False: its definition is one signed step).
        budget: L-infinity radius in 0-255 pixel units (8 = at most 8 levels per channel).
        steps: PGD steps per image tile.
        step_size: PGD step in 0-255 units; default 2.5 * budget / steps (at least 0.25).
        prompt: conditioning text for text-to-image surrogates ("" is the unconditional prompt).
        timesteps: timestep schedule (see protect.timesteps.SCHEDULES); None = the method's default.
        t_min, t_max: timestep range the schedule is restricted to (None = the whole schedule).
        robust: robustness transforms optimised through (jpeg, resize, blur).
        random_init: start from uniform noise in the budget rather than from zero.
        noise_samples: Monte-Carlo draws of (t, noise) per PGD step.
        method_options: options of the chosen objective (see each objective's docstring).
        batch_size: tiles optimised together.
        tile_size: tile edge in pixels; None = the surrogate's native resolution.
        low_memory: gradient checkpointing in the denoiser.
        seed: makes a run reproducible.
    """

    method: str = "auto"
    budget: float = 8.0
    steps: int = 100
    step_size: float | None = None
    prompt: str = ""
    timesteps: str | None = None
    t_min: int = 0
    t_max: int | None = None
    robust: tuple[str, ...] = ()
    random_init: bool = True
    noise_samples: int = 1
    method_options: dict = field(default_factory=dict)
    batch_size: int = 4
    tile_size: int | None = None
    low_memory: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.robust = tuple(self.robust)
        self.budget = float(self.budget)  # 8 and 8.0 are one setting: one fingerprint, one provenance
        if self.method == "fsgm":
            self.steps, self.step_size, self.random_init = 1, self.budget if self.step_size is None else self.step_size, False
        if not 0 < self.budget <= 64:
            raise ValueError(f"budget {self.budget} is outside (0, 64] (0-255 pixel units; 8 is the usual choice)")
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")

    def for_model(self, latent: bool) -> ProtectSettings:
        """These settings with "auto" replaced by the method chosen for a latent (VAE) or a pixel-space model."""
        return replace(self, method=AUTO_METHODS["latent" if latent else "pixel"]) if self.method == "auto" else self

    @property
    def effective_step_size(self) -> float:
        """Step in 0-255 units."""
        if self.step_size is not None:
            return float(self.step_size)
        return max(2.5 * self.budget / self.steps, 0.25)

    def fingerprint(self, extra: dict | None = None) -> str:
        """A short hash of every setting that changes the output (batching and checkpointing do not)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "low_memory")}
        data.update(extra or {})
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)
