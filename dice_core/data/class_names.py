"""Classes as a user names them: ids, or the data's class names (Fashion-MNIST's ten, the shapes,
ImageNet's wnids) and, for ImageNet, the readable names of a class-index file beside it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dice_core.errors import InputError

# Kaggle's ImageNet ships the first ('n01440764 tench, Tinca tinca' a line); Keras the second
# ({"0": ["n01440764", "tench"], ...}); looked for in the ImageNet root
CLASS_INDEX_FILES = ("LOC_synset_mapping.txt", "imagenet_class_index.json")
LISTED = 12   # class names an error lists before it stops


def read_class_index(path: str | os.PathLike) -> dict[str, list[str]]:
    """wnid -> its readable names, from either file of CLASS_INDEX_FILES."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            return {wnid: [name.replace("_", " ")]
                    for wnid, name in json.loads(path.read_text()).values()}
        lines = (line.split(maxsplit=1) for line in path.read_text().splitlines())
        return {fields[0]: [name.strip() for name in fields[1].split(",")]
                for fields in lines if len(fields) == 2}
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the class index {path}: {error}") from None


def find_class_index(manifest: dict) -> Path | None:
    """The class-index file in the root the data was prepared from, if there is one."""
    root = manifest["source"].get("root")
    if root is None:
        return None
    return next((path for name in CLASS_INDEX_FILES if (path := Path(root) / name).is_file()),
                None)


def class_ids(requested: list[str], class_names: list[str],
              aliases: dict[str, list[str]] | None = None) -> list[int]:
    """The class id of each of ``requested``: an id, or a class name or alias (any case)."""
    lookup: dict[str, set[int]] = {}
    for index, name in enumerate(class_names):
        for alias in [name, *(aliases or {}).get(name, [])]:
            lookup.setdefault(alias.casefold(), set()).add(index)
    return [class_id(text, lookup, class_names) for text in requested]


def class_id(text: str, lookup: dict[str, set[int]], class_names: list[str]) -> int:
    count = len(class_names)
    if text.isdigit():
        if int(text) >= count:
            raise InputError(f"unknown class {text}: the data's class ids are 0-{count - 1}")
        return int(text)
    found = lookup.get(text.casefold(), set())
    if len(found) > 1:
        raise InputError(f"the class name {text!r} is ambiguous (classes {sorted(found)}): give "
                         "the id")
    if not found:
        listed = ", ".join(class_names[:LISTED]) + (", ..." if count > LISTED else "")
        raise InputError(f"unknown class {text!r}: give ids 0-{count - 1} or the data's class "
                         f"names ({listed})")
    return found.pop()
