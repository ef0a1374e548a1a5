"""The one interface the protection engine needs from a diffusion model, whatever host holds it.

A host adapter (diffusers, ComfyUI, A1111) answers five questions: how pixels enter the model's
space (`encode`), the forward process (`alphas_cumprod`), what the network predicts (`predict`,
`prediction_type`), how prompts become conditioning (`encode_prompts`), and which weights an inner
training loop may adapt (`trainable_parameters`). The training loss is derived here once, so every
objective and every host compute it the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SettingsError


class Surrogate(ABC):
    """A differentiable diffusion model used to craft perturbations.

    Attributes set by adapters:
        name: what the user asked for (path or builtin name), for reports.
        device: where the model runs.
        compute_dtype: autocast dtype on accelerators (float32 disables autocast).
        alphas_cumprod: [T] float32 on `device`, the forward process abar_t.
        prediction_type: "epsilon", "v_prediction" or "sample".
        latent_factor: pixels per latent cell (8 for a VAE, 1 for pixel models).
        size_multiple: input height and width must be multiples of this many pixels.
        native_resolution: the pixel size the model was trained at (the tile size).
        demo_only: True for untrained built-in models; reports say so.
        denoiser: the denoising network module (UNet), in the host's own dtype. Inner training
            loops attach float32 adapters to it by forward hooks during a call; it is never modified.
    """

    name: str
    device: torch.device
    compute_dtype: torch.dtype = torch.float32
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    latent_factor: int = 1
    size_multiple: int = 8
    native_resolution: int = 512
    demo_only: bool = False
    denoiser: torch.nn.Module

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable map from pixels [B, 3, H, W] in [0, 1] to the model's clean input z0."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Any:
        """Conditioning for a batch (one prompt per sample); opaque, passed back to `predict`."""

    @abstractmethod
    def predict(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Any,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Network output for z_t at integer timesteps [B]; `params` overrides weights by name."""

    @abstractmethod
    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Denoiser weights an inner loop may adapt (on copies: the shared model is never changed)."""

    def enable_low_memory(self) -> None:
        """Gradient checkpointing in the denoiser; adapters that cannot offer it say why."""
        raise SettingsError(f"--low-memory is not available for {type(self).__name__} models")

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self._abar(timesteps, z0)
        return abar.sqrt() * z0 + (1 - abar).sqrt() * noise

    def training_target(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            abar = self._abar(timesteps, z0)
            return abar.sqrt() * noise - (1 - abar).sqrt() * z0
        if self.prediction_type == "sample":
            return z0
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def denoising_loss(
        self,
        z0: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        conditioning: Any,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Per-sample diffusion training loss [B]: the quantity a victim's training minimises."""
        noisy = self.add_noise(z0, noise, timesteps)
        output = self.predict(noisy, timesteps, conditioning, params)
        target = self.training_target(z0, noise, timesteps)
        return F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1)

    def score_distillation_loss(
        self,
        z0: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        conditioning: Any,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`denoising_loss`'s value with the score-distillation gradient (DreamFusion's SDS; Xue et al., ICLR 2024).

        d/dz0 = 2 (output - target) / n, the network's Jacobian taken as the identity: the denoiser
        runs forward only (no graph kept), which roughly halves a step's time and memory.
        """
        with torch.no_grad():
            output = self.predict(self.add_noise(z0, noise, timesteps), timesteps, conditioning, params)
            residual = output.float() - self.training_target(z0, noise, timesteps).float()
        value = residual.pow(2).flatten(1).mean(1)
        linear = (2 * residual * z0.float()).flatten(1).mean(1)
        return value + linear - linear.detach()

    def _abar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(like.device)[timesteps.long()].float()
        return abar.view(-1, *([1] * (like.dim() - 1)))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": type(self).__name__,
            "device": str(self.device),
            "prediction_type": self.prediction_type,
            "denoiser_dtype": str(next(self.denoiser.parameters()).dtype).replace("torch.", ""),
            "native_resolution": self.native_resolution,
            "latent_factor": self.latent_factor,
            "demo_only": self.demo_only,
        }
