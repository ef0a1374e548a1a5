"""Is the secret template in this image? Two detectors built from the key alone.

A model that memorised the template reproduces it imperfectly: blurred, shifted, rescaled,
colour-shifted, at low resolution. Both detectors therefore look at the template's *frame*
(everything but the panel, whose content varies) at low resolution, and both calibrate their
threshold on negatives they did not see, reporting the false-positive rate they measured there.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..errors import InputFileError
from .compose import compose
from .key import TraceKey
from .templates import Template, builtin_template, list_templates

WORK_SIZE = 48  # detectors compare at this resolution: memorised templates come back blurry


class Detector(Protocol):
    name: str
    threshold: float
    false_positive_rate: float

    def score(self, images: list[np.ndarray]) -> np.ndarray: ...

    def describe(self) -> dict: ...


def _to_batch(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """uint8 HxWx3 images resized (area) to `size` = (w, h), as [N, 3, h, w] floats in [0, 1]."""
    arrays = [np.asarray(Image.fromarray(np.ascontiguousarray(im)).convert("RGB").resize(size, Image.BOX)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def procedural_foregrounds(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Random natural-looking stand-ins: smooth colour fields with blobs and edges, from a seed."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        low = rng.uniform(0, 255, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        pixels = np.asarray(image).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(rng.integers(1, 5)):
            cx, cy, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 10, size / 3)]
            pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        pixels += rng.normal(0, 6, pixels.shape)
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a model's imperfect recall (and re-encoding) does: crop, shift, blur, colour, JPEG, low-res."""
    pil = Image.fromarray(image)
    w, h = pil.size
    scale = rng.uniform(0.82, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    pil = pil.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2.0) * w / 128))
    small = int(rng.choice([24, 32, 48, 64, w]))
    pil = pil.resize((small, small), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    array = np.asarray(pil).astype(np.float32)
    array = array * rng.uniform(0.75, 1.25, 3) + rng.uniform(-25, 25, 3)
    array += rng.normal(0, rng.uniform(0, 8), array.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(50, 95)))
    return np.asarray(Image.open(buffer).convert("RGB"))


def synthetic_sets(template: Template, n: int, seed: int, foregrounds: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(positives, negatives): the template with unseen foregrounds, degraded; and look-alikes without it.

    Negatives are the same foregrounds alone and inside the other built-in templates, so a
    detector must find *this* template, not "a frame" or "a photo".
    """
    rng = np.random.default_rng(seed)
    pool = list(foregrounds or []) + procedural_foregrounds(n, 64, seed)
    others = [builtin_template(name, size=128, seed=seed + 1) for name in list_templates() if name != template.name]
    positives, negatives = [], []
    for i in range(n):
        foreground = pool[int(rng.integers(len(pool)))]
        positives.append(degrade(compose(foreground, template, 64), rng))
        if i % 2:
            negatives.append(degrade(compose(foreground, others[i % len(others)], 64), rng))
        else:
            negatives.append(degrade(np.asarray(Image.fromarray(foreground).resize((64, 64))), rng))
    return positives, negatives


def calibrate(negative_scores: np.ndarray, target_fpr: float) -> tuple[float, float]:
    """Threshold from one half of the negatives, false-positive rate measured on the other half."""
    half = len(negative_scores) // 2
    fit, held_out = negative_scores[:half], negative_scores[half:]
    threshold = float(np.quantile(fit, 1 - target_fpr)) + 1e-6
    return threshold, float(np.mean(held_out > threshold))


class TemplateMatcher:
    """Training-free: normalised cross-correlation with the template's frame region.

    Images and template are compared at 48 px after a light blur; each colour channel is normalised
    over the frame (so global colour and brightness shifts do not matter), and the best score over a
    grid of scales (0.85-1.15) and shifts (+-8%) is kept (so a shifted, rescaled recall still matches).
    """

    name = "matcher"
    SCALES = (0.85, 0.92, 1.0, 1.08, 1.15)
    SHIFTS = (-0.08, -0.04, 0.0, 0.04, 0.08)

    def __init__(self, template: Template, threshold: float = 0.5, false_positive_rate: float = float("nan")):
        self.template = template
        self.threshold = threshold
        self.false_positive_rate = false_positive_rate
        tw, th = template.size
        self.size = (WORK_SIZE, max(8, round(WORK_SIZE * th / tw)))
        frame = ~template.panel_mask(self.size)
        frame = F.max_pool2d(torch.from_numpy(~frame).float()[None, None], 5, 1, 2)[0, 0] < 0.5  # keep off the panel edge
        self.frame = frame.flatten()
        reference = self._prepare(_to_batch([template.image], self.size))
        self.reference = self._normalise(reference.flatten(2)[:, :, self.frame])[0]

    @staticmethod
    def _prepare(batch: torch.Tensor) -> torch.Tensor:
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (kernel[:, None] * kernel[None, :]).repeat(3, 1, 1, 1)
        return F.conv2d(F.pad(batch, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)

    @staticmethod
    def _normalise(values: torch.Tensor) -> torch.Tensor:
        values = values - values.mean(-1, keepdim=True)
        return values / (values.norm(dim=-1, keepdim=True) + 1e-6)

    def score(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros(0)
        batch = self._prepare(_to_batch(images, self.size))
        best = torch.full((batch.shape[0],), -1.0)
        for scale in self.SCALES:
            for dx in self.SHIFTS:
                for dy in self.SHIFTS:
                    theta = torch.tensor([[1 / scale, 0, dx], [0, 1 / scale, dy]], dtype=torch.float32)
                    grid = F.affine_grid(theta.expand(batch.shape[0], 2, 3), list(batch.shape), align_corners=False)
                    warped = F.grid_sample(batch, grid, padding_mode="border", align_corners=False)
                    values = self._normalise(warped.flatten(2)[:, :, self.frame])
                    best = torch.maximum(best, (values * self.reference).sum(-1).mean(-1))
        return best.numpy()

    @classmethod
    def from_key(cls, key: TraceKey, calibration_negatives: list[np.ndarray] | None = None, target_fpr: float = 0.01, n_synthetic: int = 400, seed: int = 0):
        matcher = cls(key.template())
        negatives = list(calibration_negatives or []) + synthetic_sets(matcher.template, n_synthetic, seed + 7)[1]
        order = np.random.default_rng(seed).permutation(len(negatives))
        matcher.threshold, matcher.false_positive_rate = calibrate(matcher.score([negatives[i] for i in order]), target_fpr)
        return matcher

    def describe(self) -> dict:
        return {"name": self.name, "threshold": self.threshold, "false_positive_rate": self.false_positive_rate,
                "template_sha256": self.template.sha256, "work_size": list(self.size)}  # fmt: skip


class _SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for width in (16, 32, 64):
            layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.GroupNorm(8, width), torch.nn.SiLU(), torch.nn.MaxPool2d(2)]
            channels = width
        self.features = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(channels, 1)

    def forward(self, x):
        return self.head(self.features(x * 2 - 1)).squeeze(-1)


@dataclass
class CNNDetector:
    """A small CNN trained on synthetic positives (the template with random foregrounds, heavily
    degraded) against negatives (the same foregrounds alone and in other templates)."""

    network: _SmallCNN
    template_sha256: str
    threshold: float = 0.5
    false_positive_rate: float = float("nan")
    name: str = "cnn"

    def score(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros(0)
        self.network.eval()
        with torch.no_grad():
            return torch.sigmoid(self.network(_to_batch(images, (WORK_SIZE, WORK_SIZE)))).numpy()

    @classmethod
    def train(cls, key: TraceKey, foregrounds: list[np.ndarray] | None = None, steps: int = 300, n_images: int = 600,
              target_fpr: float = 0.01, seed: int = 0, progress=None) -> CNNDetector:  # fmt: skip
        template = key.template()
        positives, negatives = synthetic_sets(template, n_images, seed, foregrounds)
        held_pos, held_neg = synthetic_sets(template, 200, seed + 1000)  # unseen foregrounds and degradations
        x = _to_batch(positives + negatives, (WORK_SIZE, WORK_SIZE))
        y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            network = _SmallCNN()
        optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-4)
        network.train()
        for step in range(steps):
            index = torch.randint(len(x), (64,), generator=generator)
            loss = F.binary_cross_entropy_with_logits(network(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if progress:
                progress(step + 1, steps)
        detector = cls(network=network, template_sha256=template.sha256)
        detector.threshold, detector.false_positive_rate = calibrate(detector.score(held_neg), target_fpr)
        return detector

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {"threshold": str(self.threshold), "false_positive_rate": str(self.false_positive_rate), "template_sha256": self.template_sha256}
        save_file({k: v.contiguous() for k, v in self.network.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, key: TraceKey) -> CNNDetector:
        from ..lora.safetensors_header import load_tensors, read_safetensors_header

        _, meta = read_safetensors_header(path)
        if meta.get("template_sha256") != key.template_sha256:
            raise InputFileError(path, "this detector was trained for another template than the key's")
        network = _SmallCNN()
        try:
            network.load_state_dict(load_tensors(path))
        except RuntimeError as exc:
            raise InputFileError(path, f"not a detector of this version ({str(exc).splitlines()[0]})") from None
        return cls(network, key.template_sha256, float(meta["threshold"]), float(meta["false_positive_rate"]))

    def describe(self) -> dict:
        return {"name": self.name, "threshold": self.threshold, "false_positive_rate": self.false_positive_rate, "template_sha256": self.template_sha256}


def build_detector(key: TraceKey, kind: str = "matcher", **options) -> Detector:
    if kind == "matcher":
        return TemplateMatcher.from_key(key, **options)
    if kind == "cnn":
        return CNNDetector.train(key, **options)
    raise ValueError(f"unknown detector {kind!r}; choose matcher or cnn")

