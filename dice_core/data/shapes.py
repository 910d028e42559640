"""Procedurally drawn coloured shapes: a small dataset that needs no files at all."""
from __future__ import annotations

import math
import zlib
from typing import Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw

from .base import SourceItem
from .errors import DataError

KINDS = ("circle", "square", "triangle", "cross", "diamond", "ring", "hexagon", "star")
DEFAULT_COUNT_PER_CLASS = {"train": 64, "val": 16}
# Part of identity(): bump it whenever a change to the drawing changes the images.
GENERATOR_VERSION = 2


class Shapes:
    """Class = kind of shape (the first ``num_classes`` of ``KINDS``); colour, size and
    position are random per image but derived from (seed, split, index) alone, so the same
    parameters always give byte-identical images.

    Item ``i`` of a split has label ``i % num_classes`` (so every prefix is balanced), key
    ``<split>/<i:06d>`` and an ``image_size`` x ``image_size`` x 3 uint8 payload.
    """

    name = "shapes"

    def __init__(self, num_classes: int = 4, image_size: int = 32,
                 count_per_class: Mapping[str, int] | None = None, seed: int = 0):
        if not 1 <= num_classes <= len(KINDS):
            raise DataError(f"shapes: num_classes={num_classes}, but there are only "
                            f"{len(KINDS)} kinds of shape {list(KINDS)}; choose 1 to "
                            f"{len(KINDS)}")
        if image_size < 8:
            raise DataError(f"shapes: image_size={image_size} is too small to draw; use 8 or "
                            "more")
        self.num_classes = num_classes
        self.class_names = list(KINDS[:num_classes])
        self.image_size = image_size
        self.count_per_class = dict(DEFAULT_COUNT_PER_CLASS if count_per_class is None
                                    else count_per_class)
        self.seed = seed

    def items(self, split: str) -> Iterator[SourceItem]:
        if split not in self.count_per_class:
            raise DataError(f"shapes has no split {split!r}: its splits are "
                            f"{list(self.count_per_class)} (count_per_class)")
        return (SourceItem(f"{split}/{index:06d}", index % self.num_classes,
                           self.draw(split, index, index % self.num_classes))
                for index in range(self.count_per_class[split] * self.num_classes))

    def draw(self, split: str, index: int, label: int) -> np.ndarray:
        # crc32, not hash(): Python salts str hashes per process
        rng = np.random.default_rng([self.seed, zlib.crc32(split.encode()), index])
        background = rng.integers(0, 256, 3)
        # at least 97 levels apart in every channel, so the shape always stands out
        colour = (background + rng.integers(97, 160, 3)) % 256
        size = self.image_size
        radius = rng.uniform(0.2, 0.4) * size
        cx, cy = rng.uniform(radius, size - radius, 2)   # inside the frame at any size
        image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
        _draw_shape(ImageDraw.Draw(image), KINDS[label], cx, cy, radius,
                    tuple(int(c) for c in colour))
        return np.asarray(image).copy()

    def identity(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes,
                "image_size": self.image_size, "count_per_class": self.count_per_class,
                "seed": self.seed, "generator_version": GENERATOR_VERSION}


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        h = 0.8 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif kind == "triangle":
        dx = r * math.sqrt(3) / 2
        draw.polygon([(cx, cy - r), (cx + dx, cy + r / 2), (cx - dx, cy + r / 2)], fill=fill)
    elif kind == "cross":
        t = 0.3 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(0.35 * r)))
    elif kind == "hexagon":
        draw.regular_polygon((cx, cy, r), 6, fill=fill)
    elif kind == "star":
        points = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                   cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5))
                  for k in range(10)]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"no drawing for shape kind {kind!r}")
