"""Is the secret template in this image? Two detectors built from the key alone.

A model that memorised the template reproduces it imperfectly: blurred, shifted, rescaled,
colour-shifted, often at 32-64 px. Both detectors therefore look at the template's *frame*
(everything but the panel, whose content varies) at low resolution, and both calibrate their
threshold on negatives they did not see, reporting the false-positive rate they measured there.

Every detector has `score(images) -> array` (higher = more template-like), `threshold`,
`false_positive_rate` (measured on held-out negatives at that threshold), `name` and `describe()`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputFileError, SettingsError
from .key import TraceKey
from .synthesis import resized, shuffled, synthetic_negatives, synthetic_positives, to_batch
from .templates import Template

WORK_SIZE = 48  # the matcher compares at this resolution (long side): memorised templates come back blurry

# Share of synthetic negatives a detector's threshold lets through. The verdict compares the model
# with itself (paired arms, placebo tokens), so this sets sensitivity, not the verdict's error rate:
# in the tracing benchmark 1 % missed a victim whose trigger images passed at 5 % 41 times in 56
# (its controls never), and 5 % caught every 1 % victim with no more keys wrongly flagged
# (benchmarks/README.md, "Detector threshold").
TARGET_FPR = 0.05

Progress = Callable[[int, int], None] | None


@runtime_checkable
class Detector(Protocol):
    name: str
    threshold: float
    false_positive_rate: float

    def score(self, images: list[np.ndarray]) -> np.ndarray: ...

    def describe(self) -> dict: ...


def calibrate(negative_scores: np.ndarray, target_fpr: float, margin: float = 0.0) -> tuple[float, float]:
    """Threshold from the first half of the negatives' scores, false-positive rate measured on the other half.

    The threshold is the (1 - target_fpr) quantile of the first half plus `margin`.
    """
    scores = np.asarray(negative_scores, dtype=np.float64)
    if len(scores) < 4:
        raise SettingsError(f"calibration needs at least 4 negative images, got {len(scores)}")
    if not 0 < target_fpr < 1:
        raise SettingsError(f"target false-positive rate {target_fpr} is outside (0, 1)")
    half = len(scores) // 2
    fit, held_out = scores[:half], scores[half:]
    threshold = float(np.quantile(fit, 1 - target_fpr, method="higher")) + margin + 1e-6
    return threshold, float(np.mean(held_out > threshold))


# -- the training-free detector ---------------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur(batch: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return batch
    kernel = _gaussian_kernel(sigma)
    c, r = batch.shape[1], kernel.numel() // 2
    batch = F.conv2d(F.pad(batch, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(batch, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _features(batch: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [0, 1] -> luminance and two colour-opponent channels."""
    r, g, b = batch.unbind(1)
    return torch.stack([(r + g + b) / 3, r - g, (r + g) / 2 - b], dim=1)


class TemplateMatcher:
    """Training-free: masked normalised cross-correlation with the template's frame region.

    Image and template are compared at 48 px (long side), lightly blurred, as luminance plus two
    colour-opponent channels. Each channel is normalised to zero mean and unit variance over the
    frame (the template minus its panel, whose content varies), so global brightness, contrast and
    colour-cast changes do not matter; the score is the channels' mean correlation (luminance
    weighted 1/2), maximised over scales 0.8-1.25 and shifts up to 10% of the image each way, so a
    rescaled, shifted recall still matches. 1.0 = the frame exactly; photos score around 0-0.4.
    """

    name = "matcher"
    SCALES = (0.8, 0.87, 0.94, 1.0, 1.07, 1.15, 1.25)
    MAX_SHIFT = 0.1
    BLUR = 1.0  # pixels at the work size
    WEIGHTS = (0.5, 0.25, 0.25)

    def __init__(self, template: Template, threshold: float = 0.5, false_positive_rate: float = float("nan"), work_size: int = WORK_SIZE):
        self.template = template
        self.threshold = float(threshold)
        self.false_positive_rate = float(false_positive_rate)
        self.calibration: dict = {}
        tw, th = template.size
        scale = work_size / max(tw, th)
        self.size = (max(8, round(tw * scale)), max(8, round(th * scale)))  # (w, h)
        self.pad = max(1, round(self.MAX_SHIFT * max(self.size)))
        panel = torch.from_numpy(template.panel_mask(self.size)).float()[None, None]
        self.frame = (F.max_pool2d(panel, 3, 1, 1)[0, 0] < 0.5).float()  # a pixel clear of the panel's edge
        reference = _features(_blur(to_batch([template.image], self.size), self.BLUR))[0]
        count = self.frame.sum()
        mean = (reference * self.frame).sum((-1, -2), keepdim=True) / count
        centred = (reference - mean) * self.frame
        norm = centred.pow(2).sum((-1, -2), keepdim=True).sqrt().clamp_min(1e-6)
        self.kernel = (centred / norm)[:, None]  # [3, 1, h, w]
        self.weights = torch.tensor(self.WEIGHTS).view(1, 3, 1, 1) * (norm.view(1, 3, 1, 1) > 1e-3)  # flat channels carry no evidence
        self.weights = self.weights / self.weights.sum()

    def _canvas(self, batch: torch.Tensor, scale: float) -> torch.Tensor:
        """The image resampled so the template would appear `scale` times larger, padded for the shifts."""
        w, h = self.size
        wc, hc = w + 2 * self.pad, h + 2 * self.pad
        theta = torch.tensor([[wc / (w * scale), 0, 0], [0, hc / (h * scale), 0]], dtype=torch.float32)
        grid = F.affine_grid(theta.expand(batch.shape[0], 2, 3), [batch.shape[0], 3, hc, wc], align_corners=False)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _correlations(self, batch: torch.Tensor) -> torch.Tensor:
        """[N, S] best correlation over shifts, per scale (correlations computed with FFTs)."""
        w, h = self.size
        span_y, span_x = 2 * self.pad + 1, 2 * self.pad + 1
        fft_size = (h + 2 * self.pad, w + 2 * self.pad)
        kernel_f = torch.fft.rfft2(self.kernel[:, 0], s=fft_size).conj()  # [3, ...]
        frame_f = torch.fft.rfft2(self.frame, s=fft_size).conj()
        count = self.frame.sum()
        best = []
        for scale in self.SCALES:
            canvas = _features(self._canvas(batch, scale))
            values_f = torch.fft.rfft2(torch.stack([canvas, canvas * canvas], dim=1), s=fft_size)  # [N, 2, 3, ...]
            product = torch.fft.irfft2(values_f[:, 0] * kernel_f, s=fft_size)[..., :span_y, :span_x]
            sums = torch.fft.irfft2(values_f * frame_f, s=fft_size)[..., :span_y, :span_x]
            total, squares = sums[:, 0], sums[:, 1]
            variance = (squares - total * total / count).clamp_min(0)
            ncc = product / (variance.sqrt() + 1e-3)
            best.append((ncc * self.weights).sum(1).flatten(1).max(1).values)
        return torch.stack(best, dim=1)

    def score(self, images: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Per image: the best frame correlation over scales and shifts, in [-1, 1]."""
        if len(images) == 0:
            return np.zeros(0)
        scores = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = _blur(to_batch(images[start : start + batch_size], self.size), self.BLUR)
                scores.append(self._correlations(batch).max(1).values)
        return torch.cat(scores).numpy().astype(np.float64)

    @classmethod
    def from_key(cls, key: TraceKey, calibration_negatives: list[np.ndarray] | None = None, target_fpr: float = TARGET_FPR,
                 n_synthetic: int = 300, seed: int = 0, margin: float = 0.02) -> TemplateMatcher:  # fmt: skip
        """A matcher for the key's template, its threshold calibrated on negatives.

        Negatives: `calibration_negatives` (e.g. the owner's unmarked images, or a clean model's
        generations) plus `n_synthetic` synthetic look-alikes (real photo crops when scikit-image is
        installed, procedural images, the other built-in scenes with foregrounds). The threshold is
        the (1 - target_fpr) quantile of half of them plus `margin`; `false_positive_rate` is measured
        on the other half.
        """
        return cls.from_template(key.template(), calibration_negatives, target_fpr, n_synthetic, seed, margin)

    @classmethod
    def from_template(cls, template: Template, calibration_negatives: list[np.ndarray] | None = None, target_fpr: float = TARGET_FPR,
                      n_synthetic: int = 300, seed: int = 0, margin: float = 0.02) -> TemplateMatcher:  # fmt: skip
        matcher = cls(template)
        supplied = list(calibration_negatives or [])
        synthetic = synthetic_negatives(template, n_synthetic, seed + 7) if n_synthetic else []
        negatives = shuffled(supplied + synthetic, seed)
        matcher.threshold, matcher.false_positive_rate = calibrate(matcher.score(negatives), target_fpr, margin)
        matcher.calibration = {"negatives": len(negatives), "supplied": len(supplied), "synthetic": len(synthetic),
                               "target_fpr": target_fpr, "margin": margin, "seed": seed}  # fmt: skip
        return matcher

    def describe(self) -> dict:
        return {"name": self.name, "threshold": self.threshold, "false_positive_rate": self.false_positive_rate,
                "template_sha256": self.template.sha256, "work_size": list(self.size), "scales": list(self.SCALES),
                "max_shift": self.MAX_SHIFT, "measure": "masked NCC, luminance + 2 opponent colour channels, frame only",
                "calibration": self.calibration}  # fmt: skip


# -- the trained detector ------------------------------------------------------------------------------


class _SmallCNN(torch.nn.Module):
    """Four stride-2 convolutions (size -> size/16) and a linear read-out of the whole map (layout matters)."""

    def __init__(self, size: int = 64, widths: tuple[int, ...] = (16, 32, 48, 64)):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1), torch.nn.GroupNorm(8, width), torch.nn.SiLU()]
            channels = width
        self.features = torch.nn.Sequential(*layers)
        cells = max(1, size // 2 ** len(widths))
        self.pool = torch.nn.AdaptiveAvgPool2d(cells)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(channels * cells * cells, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean((2, 3), keepdim=True)  # global colour cast removed; contrast kept
        return self.head(self.pool(self.features(x * 2))).squeeze(-1)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cheap on-line augmentation on top of the pre-degraded pool: zoom/shift, colour gain/offset, noise."""
    n = batch.shape[0]

    def uniform(low, high, *shape):
        return torch.rand(*shape, generator=generator) * (high - low) + low

    scale = torch.exp(uniform(-0.1, 0.1, n))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = uniform(-0.08, 0.08, n, 2)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    batch = batch * uniform(0.8, 1.2, n, 3, 1, 1) + uniform(-0.1, 0.1, n, 3, 1, 1)
    batch = batch + torch.randn(batch.shape, generator=generator) * uniform(0, 0.03, n, 1, 1, 1)
    return batch.clamp(0, 1)


@dataclass
class CNNDetector:
    """A small CNN trained on synthetic positives (the template with random foregrounds, heavily
    degraded) against negatives (photo crops, the same foregrounds alone and in other scenes).

    Saved as safetensors (weights) with its settings as JSON in the file's metadata: never pickle.
    """

    network: _SmallCNN
    template_sha256: str
    threshold: float = 0.5
    false_positive_rate: float = float("nan")
    name: str = "cnn"
    size: int = 64
    widths: tuple[int, ...] = (16, 32, 48, 64)
    training: dict = field(default_factory=dict)

    def score(self, images: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Per image: the network's probability that the template is there, in [0, 1]."""
        if len(images) == 0:
            return np.zeros(0)
        self.network.eval()
        scores = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = to_batch(images[start : start + batch_size], (self.size, self.size))
                scores.append(torch.sigmoid(self.network(batch).double()))
        return torch.cat(scores).numpy()

    @classmethod
    def train(cls, key: TraceKey, foregrounds: list[np.ndarray] | None = None, steps: int = 300, size: int = 64, seed: int = 0,
              progress: Progress = None, *, n_images: int = 400, batch_size: int = 32, target_fpr: float = TARGET_FPR,
              calibration_negatives: list[np.ndarray] | None = None, n_calibration: int = 300, lr: float = 3e-3) -> CNNDetector:  # fmt: skip
        """Train on `n_images` synthetic positives and as many negatives (built from `foregrounds`, e.g.
        the owner's own images, plus procedural ones), `steps` Adam steps of `batch_size` at `size` px;
        then calibrate the threshold on `n_calibration` fresh synthetic negatives (other seeds, other
        foregrounds) plus `calibration_negatives`. About 10-20 s on two CPU cores at the defaults.
        """
        return cls.train_for_template(key.template(), foregrounds, steps, size, seed, progress, n_images=n_images, batch_size=batch_size,
                                      target_fpr=target_fpr, calibration_negatives=calibration_negatives,
                                      n_calibration=n_calibration, lr=lr)  # fmt: skip

    @classmethod
    def train_for_template(cls, template: Template, foregrounds: list[np.ndarray] | None = None, steps: int = 300, size: int = 64,
                           seed: int = 0, progress: Progress = None, *, n_images: int = 400, batch_size: int = 32,
                           target_fpr: float = TARGET_FPR, calibration_negatives: list[np.ndarray] | None = None,
                           n_calibration: int = 300, lr: float = 3e-3) -> CNNDetector:  # fmt: skip
        if size < 16:
            raise SettingsError(f"detector size {size} is too small; use at least 16 pixels (64 is the default)")
        fg = [resized(f, (size, size)) for f in (foregrounds or [])]
        positives = synthetic_positives(template, n_images, seed, fg, size)
        negatives = synthetic_negatives(template, n_images, seed, fg, size)
        x = to_batch(positives + negatives, (size, size))
        y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            network = _SmallCNN(size)
        optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
        network.train()
        losses = []
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # dropout
            for step in range(steps):
                index = torch.randint(len(x), (batch_size,), generator=generator)
                loss = F.binary_cross_entropy_with_logits(network(_augment(x[index], generator)), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                if progress:
                    progress(step + 1, steps)
        detector = cls(network=network.eval(), template_sha256=template.sha256, size=size)
        held_out = list(calibration_negatives or []) + synthetic_negatives(template, n_calibration, seed + 1000)  # unseen foregrounds
        detector.threshold, detector.false_positive_rate = calibrate(detector.score(shuffled(held_out, seed)), target_fpr)
        detector.training = {"steps": steps, "n_images": n_images, "batch_size": batch_size, "seed": seed, "lr": lr,
                             "final_loss": float(np.mean(losses[-20:])) if losses else None,
                             "calibration_negatives": len(held_out), "target_fpr": target_fpr}  # fmt: skip
        return detector

    def save(self, path: str | Path) -> Path:
        """Weights as safetensors; settings (threshold, measured FPR, template hash, size) as JSON metadata."""
        from safetensors.torch import save

        from ..files import atomic_write_bytes

        path = Path(path)
        meta = {"unlearnable_detector": json.dumps({**self.describe(), "widths": list(self.widths)})}
        state = {k: v.detach().contiguous() for k, v in self.network.state_dict().items()}
        atomic_write_bytes(path, save(state, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path, key: TraceKey | None = None) -> CNNDetector:
        """A detector written by `save`; with `key`, checks it was trained for the key's template."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})["unlearnable_detector"])
                state = {name: handle.get_tensor(name) for name in handle.keys()}
        except FileNotFoundError:
            raise InputFileError(path, "no such file") from None
        except (KeyError, json.JSONDecodeError):
            raise InputFileError(path, "not a detector saved by unlearnable (no detector settings in its metadata)") from None
        except Exception as exc:  # safetensors raises its own error types for a file that is not safetensors
            raise InputFileError(path, f"not a safetensors detector file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if key is not None and meta.get("template_sha256") != key.template_sha256:
            raise InputFileError(path, "this detector was trained for another template than the key's")
        try:
            size, widths = int(meta["size"]), tuple(int(w) for w in meta["widths"])
            network = _SmallCNN(size, widths)
            network.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InputFileError(path, f"not a detector of this version ({str(exc).splitlines()[0]})") from None
        return cls(network=network.eval(), template_sha256=meta["template_sha256"], threshold=float(meta["threshold"]),
                   false_positive_rate=float(meta["false_positive_rate"]), size=size, widths=widths,
                   training=dict(meta.get("training") or {}))  # fmt: skip

    def describe(self) -> dict:
        return {"name": self.name, "threshold": self.threshold, "false_positive_rate": self.false_positive_rate,
                "template_sha256": self.template_sha256, "size": self.size, "training": self.training}  # fmt: skip


def build_detector(key: TraceKey, kind: str = "matcher", **options) -> Detector:
    """`kind`="matcher" (training-free, `TemplateMatcher.from_key`) or "cnn" (`CNNDetector.train`)."""
    if kind == "matcher":
        return TemplateMatcher.from_key(key, **options)
    if kind == "cnn":
        return CNNDetector.train(key, **options)
    raise SettingsError(f"unknown detector {kind!r}; choose matcher or cnn")
