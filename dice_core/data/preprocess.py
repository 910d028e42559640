"""Image preprocessing shared by every source."""
from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop (guided-diffusion ``center_crop_arr``), step for step so that the
    pixels match the baselines': halve with a box filter while the short side is at least
    ``2 * size``, resize the short side to ``size`` with bicubic, crop the centre. Returns a
    ``size`` x ``size`` x 3 uint8 array."""
    image = image.convert("RGB")
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    crop_y = (array.shape[0] - size) // 2
    crop_x = (array.shape[1] - size) // 2
    return np.ascontiguousarray(array[crop_y:crop_y + size, crop_x:crop_x + size])
