"""Open a source by the name params.yaml gives it."""
from __future__ import annotations

from .base import ImageSource
from .errors import DataError
from .fashion_mnist import FashionMNIST
from .imagenet import ImageNetFolder
from .shapes import Shapes

SOURCE_NAMES = ("imagenet", "fashion-mnist", "shapes")


def open_source(name: str, root: str | None, **options) -> ImageSource:
    """``root`` is the ImageNet root (required), Fashion-MNIST's folder (optional) and unused
    by shapes; ``options`` go to the source's constructor."""
    if name == "imagenet":
        if root is None:
            raise DataError("the imagenet source needs its folder: set prepare.root in "
                            "params.yaml to the root holding train/ and val/")
        return ImageNetFolder(root, **options)
    if name == "fashion-mnist":
        return FashionMNIST(folder=root, **options)
    if name == "shapes":
        return Shapes(**options)
    raise DataError(f"unknown data source {name!r}: choose one of {list(SOURCE_NAMES)}")
