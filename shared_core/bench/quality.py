"""How good and how faithful a victim's generations are, judged by a feature extractor trained here.

Pretrained Inception / CLIP weights cannot be used offline, and they would not see 8-16 px images
anyway, so the benchmark trains a small CNN classifier on the *clean* data only and uses its
penultimate layer as the feature space:

* domain FID: the Frechet distance between Gaussians fitted to real and generated features
  (Heusel et al. 2017, with this feature space instead of Inception's);
* precision / recall: the k-nearest-neighbour manifold estimate of Kynkaenniemi et al. 2019
  (precision = share of generated samples inside the real manifold, recall = the reverse);
* accuracy: share of generated samples the classifier assigns to the intended label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from ..training import images_to_tensor


class FeatureNet(torch.nn.Module):
    """A small CNN classifier; `features` is its 64-d global-pooled penultimate layer."""

    def __init__(self, classes: int, width: int = 32, size: int = 16):
        super().__init__()
        self.size = size
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.GroupNorm(8, width), torch.nn.SiLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), torch.nn.GroupNorm(8, 2 * width), torch.nn.SiLU(),
            torch.nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), torch.nn.GroupNorm(8, 2 * width), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )  # fmt: skip
        self.head = torch.nn.Linear(2 * width, classes)

    def _input(self, images: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        x = images_to_tensor(images)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, images) -> np.ndarray:
        x = self._input(images)
        return torch.cat([self.body(chunk) for chunk in x.split(512)]).double().numpy()

    @torch.no_grad()
    def predict(self, images) -> np.ndarray:
        x = self._input(images)
        return torch.cat([self(chunk).argmax(1) for chunk in x.split(512)]).numpy()


def train_feature_net(images: Sequence[np.ndarray], labels: Sequence[int], *, steps: int = 400, size: int = 16, seed: int = 0) -> FeatureNet:
    """Train the judge on clean labelled images, with light augmentation (shift, brightness)."""
    torch.manual_seed(seed)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    net = FeatureNet(int(labels_t.max()) + 1, size=size)
    data = net._input(images)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    net.train()
    for _ in range(steps):
        index = torch.randint(len(data), (64,), generator=generator)
        batch = data[index]
        shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
        batch = torch.roll(batch, shifts=shift, dims=(2, 3))
        batch = batch * (1 + 0.1 * torch.randn(len(batch), 1, 1, 1, generator=generator))
        loss = F.cross_entropy(net(batch), labels_t[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval().requires_grad_(False)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(C_r + C_f - 2 (C_r C_f)^(1/2)) between feature sets [N, D]."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = linalg.sqrtm(cov_r @ cov_f)
    if not np.isfinite(root).all():  # near-singular product: regularise both, as pytorch-fid does
        eye = np.eye(len(cov_r)) * 1e-6
        root = linalg.sqrtm((cov_r + eye) @ (cov_f + eye))
    return float(max(0.0, ((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root.real)))


def _knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    distances = np.linalg.norm(queries[:, None] - manifold[None], axis=-1)
    return float((distances <= radii[None]).any(axis=1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with k-NN balls in feature space."""
    precision = _coverage(real, _knn_radii(real, k), fake)
    recall = _coverage(fake, _knn_radii(fake, k), real)
    return precision, recall


@dataclass
class QualityJudge:
    """Scores generated images against the clean reference set of one domain."""

    net: FeatureNet
    reference: np.ndarray  # features of the clean target images

    @classmethod
    def fit(cls, train_images, train_labels, reference_images, *, steps: int = 400, size: int = 16, seed: int = 0) -> QualityJudge:
        net = train_feature_net(train_images, train_labels, steps=steps, size=size, seed=seed)
        return cls(net, net.features(reference_images))

    def score(self, images, label: int | None = None) -> dict:
        features = self.net.features(images)
        precision, recall = precision_recall(self.reference, features)
        result = {"fid": frechet_distance(self.reference, features), "precision": precision, "recall": recall}
        if label is not None:
            result["accuracy"] = float((self.net.predict(images) == label).mean())
        return result
