"""Covering an image of any size with tiles of the surrogate's native resolution (never downscaled).

Images at most one tile large are padded (replicate) up to the model's size multiple; larger ones
are covered by overlapping tiles. Overlapping tiles share one image-level perturbation, so the
overlap is optimised for both tiles instead of one overwriting the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    height: int  # real pixels taken from the image
    width: int
    padded_height: int  # what the model sees (a multiple of the surrogate's size multiple)
    padded_width: int


def _axis_spans(length: int, tile: int, multiple: int) -> list[tuple[int, int, int]]:
    if length <= tile:
        return [(0, length, math.ceil(length / multiple) * multiple)]
    count = math.ceil(length / tile)
    return [(round(i * (length - tile) / (count - 1)), tile, tile) for i in range(count)]


def tile_layout(height: int, width: int, tile: int, multiple: int) -> list[Tile]:
    """Tiles covering the image; overlapping where the size is not a multiple of the tile."""
    tile = max(multiple, tile // multiple * multiple)
    return [
        Tile(y, x, h, w, ph, pw)
        for y, h, ph in _axis_spans(height, tile, multiple)
        for x, w, pw in _axis_spans(width, tile, multiple)
    ]


def crop(array: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's region of a [C, H, W] tensor, replicate-padded to the tile's padded size."""
    region = array[:, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    pad_h, pad_w = tile.padded_height - tile.height, tile.padded_width - tile.width
    if pad_h or pad_w:
        region = F.pad(region[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    return region


def paste(array: torch.Tensor, tile: Tile, values: torch.Tensor) -> None:
    """Write the tile's real (unpadded) pixels back into a [C, H, W] tensor."""
    array[:, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = values[:, : tile.height, : tile.width]
