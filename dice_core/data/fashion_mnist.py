"""Fashion-MNIST from its four IDX files: the Debian package, a folder, or a download."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .base import SourceItem
from .errors import DataError

# Module constant rather than a literal in the code so that tests can point it elsewhere.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES = [name for pair in FILES.values() for name in pair]
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IMAGE_SIDE, PAD = 28, 2  # padded to 32x32, a size every model's downsampling divides


class FashionMNIST:
    """Splits ``train`` (60,000 images) and ``val`` (the 10,000 t10k images), in file order.

    Items are 32x32 grey uint8 arrays keyed ``<split>/<index:06d>``. The files are looked up
    in ``DEBIAN_DIR`` when all four are there, else in ``folder`` (by default
    ``.cache/fashion-mnist`` under the working directory), where missing ones are downloaded
    from ``download_url`` and checked against ``checksums`` (file name -> md5).
    """

    name = "fashion-mnist"
    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, folder: str | os.PathLike | None = None,
                 download_url: str | None = None, checksums: dict[str, str] | None = None):
        self._folder = folder
        self._url = download_url or OFFICIAL_URL
        self._checksums = OFFICIAL_MD5 if checksums is None else checksums
        self._resolved: Path | None = None

    @property
    def folder(self) -> Path:
        """The folder the files are read from; the first access may download them."""
        if self._resolved is None:
            self._resolved = self._find_or_download()
        return self._resolved

    def items(self, split: str) -> Iterator[SourceItem]:
        images, labels = self.arrays(split)
        return (SourceItem(f"{split}/{index:06d}", int(labels[index]), images[index])
                for index in range(len(labels)))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All images of a split, (N, 32, 32) uint8, and their labels, (N,) int64."""
        if split not in FILES:
            raise DataError(f"unknown Fashion-MNIST split {split!r}: choose one of "
                            f"{list(FILES)}")
        images_name, labels_name = FILES[split]
        images = read_idx(self.folder / images_name, IMAGES_MAGIC)
        labels = read_idx(self.folder / labels_name, LABELS_MAGIC)
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise _file_error(self.folder / images_name,
                              f"images are {images.shape[1:]}, not 28x28")
        if len(images) != len(labels):
            raise _file_error(self.folder / labels_name,
                              f"{len(labels)} labels for {len(images)} images")
        if labels.size and labels.max() >= self.num_classes:
            raise _file_error(self.folder / labels_name, f"label {labels.max()} out of range")
        padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
        return padded, labels.astype(np.int64)

    def identity(self) -> dict:
        sizes = {split: len(read_idx(self.folder / labels, LABELS_MAGIC))
                 for split, (_, labels) in FILES.items()}
        return {"name": self.name, "folder": str(self.folder.resolve()),
                "num_classes": self.num_classes, "split_sizes": sizes}

    def _find_or_download(self) -> Path:
        if all((DEBIAN_DIR / name).is_file() for name in ALL_FILES):
            return DEBIAN_DIR
        folder = Path(self._folder) if self._folder else Path.cwd() / ".cache" / "fashion-mnist"
        for name in ALL_FILES:
            if not (folder / name).is_file():
                self._download(name, folder)
        return folder

    def _download(self, name: str, folder: Path) -> None:
        """Fetch into ``<name>.partial``; the final name appears only once the md5 matched."""
        url = self._url.rstrip("/") + "/" + name
        final, partial = folder / name, folder / (name + ".partial")
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"could not download Fashion-MNIST ({url}: {error}). Provide it in one of "
                f"three ways: install the Debian package {DEBIAN_PACKAGE} (files in "
                f"{DEBIAN_DIR}); or set prepare.root in params.yaml to a folder holding "
                f"{', '.join(ALL_FILES)}; or allow network access to {self._url}") from error
        if digest.hexdigest() != self._checksums[name]:
            partial.unlink()
            raise DataError(f"{url} has md5 {digest.hexdigest()}, expected "
                            f"{self._checksums[name]}: the download is corrupt or not "
                            "Fashion-MNIST; try again, or check the download URL")
        os.replace(partial, final)


def _file_error(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. Delete the file to download it again, or fix the "
                     "folder set as prepare.root in params.yaml.")


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise _file_error(path, f"not a readable gzip file ({error})") from error


def _parse_header(path: Path, data: bytes, magic: int) -> tuple[int, ...]:
    """The dimensions of an IDX file: a big-endian magic (0x08 = uint8, then the number of
    dimensions), then one big-endian uint32 per dimension."""
    if len(data) < 4:
        raise _file_error(path, "too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _file_error(path, f"IDX magic number {found}, expected {magic}")
    ndim = found & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise _file_error(path, "truncated IDX header")
    return tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of a gzipped IDX file whose magic number must be ``magic``."""
    data = _read_gzip(path)
    dims = _parse_header(path, data, magic)
    offset = 4 + 4 * len(dims)
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise _file_error(path, f"{len(data) - offset} bytes of data, expected {expected} "
                                f"for shape {dims} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
