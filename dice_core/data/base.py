"""What every image source yields, and how an item becomes a PIL image."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Union

import numpy as np
from PIL import Image

Payload = Union[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class SourceItem:
    """One image of a source: a unique key such as ``train/n01440764/n01440764_10026``, a class
    index, and either a file path or a uint8 array (HxW grey or HxWx3 RGB). Picklable, so it
    can cross a process pool; compared by identity, since arrays have no single truth value."""
    key: str
    label: int
    payload: Payload


class ImageSource(Protocol):
    name: str
    num_classes: int
    class_names: list[str]

    def items(self, split: str) -> Iterator[SourceItem]: ...

    def identity(self) -> dict: ...


def decode_image(payload: Payload) -> Image.Image:
    """The payload as an RGB image, fully decoded, so that a truncated file raises here."""
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or not (
                payload.ndim == 2 or (payload.ndim == 3 and payload.shape[2] == 3)):
            raise ValueError(f"expected a uint8 HxW or HxWx3 array, got {payload.dtype} "
                             f"{payload.shape}")
        return Image.fromarray(payload).convert("RGB")
    with Image.open(payload) as image:
        image.load()
        return image.convert("RGB")


def try_decode(item: SourceItem) -> tuple[Image.Image | None, str | None]:
    """``(image, None)``, or ``(None, reason)`` when the item cannot be decoded."""
    try:
        return decode_image(item.payload), None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return None, f"{item.key}: {type(error).__name__}: {error}"
