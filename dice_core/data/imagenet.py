"""ImageNet-1k from a folder in the usual layout."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator

from .base import SourceItem
from .errors import DataError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLITS = ("train", "val")
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt")

LAYOUT = ("root/train/<wnid>/*.JPEG, and for validation either root/val/<wnid>/*.JPEG or a "
          "flat root/val/*.JPEG with LOC_val_solution.csv or val_labels.txt (lines "
          "'<filename> <wnid>') in root or root/val")


def _layout_error(problem: str) -> DataError:
    return DataError(f"{problem}. Expected the ImageNet layout {LAYOUT}; set prepare.root in "
                     "params.yaml to that root.")


def _image_names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries
                      if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries
                      if entry.is_dir() and not entry.name.startswith("."))


class ImageNetFolder:
    """Class index = position of the wnid among the sorted train class folders.

    Order: train by (class index, file name); val by file name (then wnid for class folders).
    Keys are ``<split>/<wnid>/<file stem>`` for class folders and ``val/<file stem>`` for a
    flat validation folder.
    """

    name = "imagenet"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise _layout_error(f"ImageNet root {self.root} does not exist")
        train = self.root / "train"
        if not train.is_dir():
            raise _layout_error(f"ImageNet root {self.root} has no train/ folder")
        self.class_names = _subfolders(train)
        if not self.class_names:
            raise _layout_error(f"{train} has no class folders")
        self.num_classes = len(self.class_names)
        self._index = {wnid: i for i, wnid in enumerate(self.class_names)}

    def items(self, split: str) -> Iterator[SourceItem]:
        folder = self._split_folder(split)
        if split == "val" and _image_names(folder):
            return self._flat_items(folder, self._val_labels())
        return self._class_folder_items(split, folder)

    def identity(self) -> dict:
        sizes = {split: sum(1 for _ in self.items(split))
                 for split in SPLITS if (self.root / split).is_dir()}
        return {"name": self.name, "root": str(self.root.resolve()),
                "num_classes": self.num_classes, "split_sizes": sizes}

    def _split_folder(self, split: str) -> Path:
        if split not in SPLITS:
            raise DataError(f"unknown ImageNet split {split!r}: choose one of {list(SPLITS)}")
        folder = self.root / split
        if not folder.is_dir():
            raise _layout_error(f"ImageNet root {self.root} has no {split}/ folder")
        return folder

    def _class_folder_items(self, split: str, folder: Path) -> Iterator[SourceItem]:
        wnids = _subfolders(folder)
        unknown = [wnid for wnid in wnids if wnid not in self._index]
        if unknown:
            raise _layout_error(f"{folder} has class folders that are not in train/: "
                                f"{unknown[:5]}")
        # wnids are sorted, so this is already (class index, file name) order, as train wants
        files = ((wnid, name) for wnid in wnids for name in _image_names(folder / wnid))
        if split == "val":
            files = iter(sorted(files, key=lambda pair: (pair[1], pair[0])))
        return self._checked(split, folder, (
            SourceItem(f"{split}/{wnid}/{Path(name).stem}", self._index[wnid],
                       str(folder / wnid / name))
            for wnid, name in files))

    def _flat_items(self, folder: Path, labels: dict[str, int]) -> Iterator[SourceItem]:
        for name in _image_names(folder):
            stem = Path(name).stem
            if stem not in labels:
                raise DataError(f"validation image {folder / name} has no label in "
                                f"{self._val_label_file()}: add it, or remove the image")
            yield SourceItem(f"val/{stem}", labels[stem], str(folder / name))

    def _checked(self, split: str, folder: Path,
                 items: Iterator[SourceItem]) -> Iterator[SourceItem]:
        count = 0
        for item in items:
            count += 1
            yield item
        if count == 0:
            raise _layout_error(f"the {split} split in {folder} has no images "
                                f"(suffixes {sorted(IMAGE_SUFFIXES)})")

    def _val_label_file(self) -> Path | None:
        for name in VAL_LABEL_FILES:
            for folder in (self.root / "val", self.root):
                if (folder / name).is_file():
                    return folder / name
        return None

    def _val_labels(self) -> dict[str, int]:
        """Validation labels by file stem, from the first label file found."""
        path = self._val_label_file()
        if path is None:
            raise _layout_error(f"{self.root / 'val'} holds images directly but no "
                                f"{' or '.join(VAL_LABEL_FILES)} was found")
        pairs = _read_kaggle_labels(path) if path.suffix == ".csv" else _read_text_labels(path)
        labels = {}
        for name, wnid in pairs:
            if wnid not in self._index:
                raise DataError(f"{path}: {name} has the wnid {wnid!r}, which is not a class "
                                f"folder in {self.root / 'train'}; fix the file or the folder")
            labels[Path(name).stem] = self._index[wnid]
        return labels


def _read_kaggle_labels(path: Path) -> list[tuple[str, str]]:
    """``ImageId,PredictionString`` rows; the wnid is the first token of the prediction."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise DataError(f"{path}: expected the header 'ImageId,PredictionString' of "
                            "Kaggle's LOC_val_solution.csv")
        pairs = []
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise DataError(f"{path}, line {reader.line_num}: empty PredictionString")
            pairs.append((row["ImageId"], tokens[0]))
        return pairs


def _read_text_labels(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}, line {number}: expected '<filename> <wnid>', got {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs
