"""Image sources of the data layer, all on data made here under tmp_path."""
import gzip
import hashlib
import pickle

import numpy as np
import pytest
from PIL import Image

from dice_core.data import (
    DataError,
    FashionMNIST,
    ImageNetFolder,
    Shapes,
    SourceItem,
    center_crop_resize,
    decode_image,
    fashion_mnist,
    open_source,
    try_decode,
)

WNIDS = ["n01440764", "n01443537", "n02102040"]  # sorted: their class indices are 0, 1, 2


def write_jpeg(path, colour, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


@pytest.fixture
def imagenet_root(tmp_path):
    """Three train classes, created out of order, with mixed suffixes and a stray file."""
    root = tmp_path / "imagenet"
    for wnid in reversed(WNIDS):
        for number in (3, 1, 2):
            write_jpeg(root / "train" / wnid / f"{wnid}_{number}.JPEG", (number * 40, 0, 0))
    write_jpeg(root / "train" / WNIDS[0] / f"{WNIDS[0]}_4.jpg", (0, 0, 0))
    (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    (root / "train" / "n09999999").mkdir()  # an empty class folder is allowed
    return root


def test_imagenet_train_labels_keys_and_order(imagenet_root):
    source = ImageNetFolder(imagenet_root)
    assert source.class_names == WNIDS + ["n09999999"]
    assert source.num_classes == 4 and source.name == "imagenet"
    items = list(source.items("train"))
    assert [item.key for item in items[:5]] == [
        f"train/{WNIDS[0]}/{WNIDS[0]}_1", f"train/{WNIDS[0]}/{WNIDS[0]}_2",
        f"train/{WNIDS[0]}/{WNIDS[0]}_3", f"train/{WNIDS[0]}/{WNIDS[0]}_4",
        f"train/{WNIDS[1]}/{WNIDS[1]}_1"]
    assert [item.label for item in items] == [0] * 4 + [1] * 3 + [2] * 3
    assert [item.key for item in source.items("train")] == [item.key for item in items]
    assert decode_image(items[0].payload).mode == "RGB"
    assert pickle.loads(pickle.dumps(items[0])).key == items[0].key


def test_imagenet_val_class_folders(imagenet_root):
    write_jpeg(imagenet_root / "val" / WNIDS[2] / "a.JPEG", (1, 2, 3))
    write_jpeg(imagenet_root / "val" / WNIDS[0] / "b.JPEG", (1, 2, 3))
    items = list(ImageNetFolder(imagenet_root).items("val"))
    assert [(item.key, item.label) for item in items] == [
        (f"val/{WNIDS[2]}/a", 2), (f"val/{WNIDS[0]}/b", 0)]


@pytest.mark.parametrize("label_file", ["LOC_val_solution.csv", "val/LOC_val_solution.csv",
                                        "val_labels.txt"])
def test_imagenet_flat_val_with_labels(imagenet_root, label_file):
    names = ["ILSVRC2012_val_00000002", "ILSVRC2012_val_00000001"]
    for name in names:
        write_jpeg(imagenet_root / "val" / f"{name}.JPEG", (5, 5, 5))
    if label_file.endswith(".csv"):
        text = ("ImageId,PredictionString\n"
                f"{names[0]},{WNIDS[1]} 1 2 3 4 {WNIDS[1]} 5 6 7 8\n"
                f"{names[1]},{WNIDS[2]} 1 2 3 4\n")
    else:
        text = f"{names[0]}.JPEG {WNIDS[1]}\n{names[1]}.JPEG {WNIDS[2]}\n"
    (imagenet_root / label_file).write_text(text)
    source = ImageNetFolder(imagenet_root)
    items = list(source.items("val"))
    assert [(item.key, item.label) for item in items] == [
        ("val/ILSVRC2012_val_00000001", 2), ("val/ILSVRC2012_val_00000002", 1)]
    assert source.identity()["split_sizes"] == {"train": 10, "val": 2}


def test_imagenet_flat_val_without_labels_fails(imagenet_root):
    write_jpeg(imagenet_root / "val" / "x.JPEG", (5, 5, 5))
    with pytest.raises(DataError, match="LOC_val_solution.csv"):
        ImageNetFolder(imagenet_root).items("val")


def test_imagenet_layout_errors(tmp_path, imagenet_root):
    with pytest.raises(DataError, match="prepare.root"):
        ImageNetFolder(tmp_path / "missing")
    with pytest.raises(DataError, match="prepare.root"):
        ImageNetFolder(tmp_path)  # exists, but has no train/
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        ImageNetFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="prepare.root"):
        ImageNetFolder(imagenet_root).items("val")  # no val/ folder
    for wnid in WNIDS:
        for path in (imagenet_root / "train" / wnid).iterdir():
            path.unlink()
    with pytest.raises(DataError, match="no images"):
        list(ImageNetFolder(imagenet_root).items("train"))
    with pytest.raises(DataError, match="'fashion-mnist'"):
        open_source("cifar", None)
    with pytest.raises(DataError, match="prepare.root"):
        open_source("imagenet", None)


def test_truncated_jpeg_is_reported_not_raised(tmp_path):
    path = tmp_path / "broken.JPEG"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    image, reason = try_decode(SourceItem("val/broken", 0, str(path)))
    assert image is None and "truncated" in reason
    with pytest.raises(OSError):
        decode_image(str(path))
    (tmp_path / "garbage.JPEG").write_bytes(b"not an image")
    assert try_decode(SourceItem("val/garbage", 0, str(tmp_path / "garbage.JPEG")))[0] is None


# Fashion-MNIST ------------------------------------------------------------------------------

def idx_bytes(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_fashion_files(folder, train=6, test=4):
    """Tiny IDX files: image i is filled with the value i + 1 (train) or 100 + i (t10k)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, offset in (("train", train, 1), ("t10k", test, 100)):
        images = np.stack([np.full((28, 28), offset + i) for i in range(count)])
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_bytes(images, 2051))
        labels = np.arange(count) % 10
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_bytes(labels, 2049))
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}


@pytest.fixture(autouse=True)
def no_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")


def test_fashion_mnist_from_folder(tmp_path):
    write_fashion_files(tmp_path / "fm")
    source = open_source("fashion-mnist", str(tmp_path / "fm"))
    assert source.num_classes == 10 and source.class_names[0] == "T-shirt/top"
    train, val = list(source.items("train")), list(source.items("val"))
    assert [item.key for item in train] == [f"train/{i:06d}" for i in range(6)]
    assert [item.label for item in val] == [0, 1, 2, 3]
    image = train[2].payload
    assert image.shape == (32, 32) and image.dtype == np.uint8
    assert (image[2:30, 2:30] == 3).all() and image.sum() == 3 * 28 * 28  # zero border
    assert val[0].payload[16, 16] == 100
    assert decode_image(image).size == (32, 32)
    assert source.identity()["split_sizes"] == {"train": 6, "val": 4}


def test_fashion_mnist_download_checks_md5(tmp_path):
    checksums = write_fashion_files(tmp_path / "server")
    url = (tmp_path / "server").as_uri()
    source = FashionMNIST(tmp_path / "dl", download_url=url, checksums=checksums)
    assert len(list(source.items("train"))) == 6
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(checksums)

    wrong = dict(checksums, **{"train-images-idx3-ubyte.gz": "0" * 32})
    source = FashionMNIST(tmp_path / "bad", download_url=url, checksums=wrong)
    with pytest.raises(DataError, match="md5"):
        source.items("train")
    assert not (tmp_path / "bad" / "train-images-idx3-ubyte.gz").exists()
    assert not (tmp_path / "bad" / "train-images-idx3-ubyte.gz.partial").exists()


def test_fashion_mnist_download_failure_names_the_three_ways(tmp_path):
    source = FashionMNIST(tmp_path / "dl", download_url=(tmp_path / "nowhere").as_uri())
    with pytest.raises(DataError) as error:
        _ = source.folder
    message = str(error.value)
    assert "dataset-fashion-mnist" in message and "prepare.root" in message
    assert "network" in message


def test_fashion_mnist_prefers_debian_package(tmp_path, monkeypatch):
    write_fashion_files(tmp_path / "debian", train=3)
    write_fashion_files(tmp_path / "configured", train=5)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    source = FashionMNIST(tmp_path / "configured")
    assert source.folder == tmp_path / "debian"
    assert len(list(source.items("train"))) == 3


def test_fashion_mnist_bad_files(tmp_path):
    write_fashion_files(tmp_path / "fm")
    labels = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(idx_bytes(np.zeros(6), 2051))
    with pytest.raises(DataError, match="magic.*Delete the file"):
        FashionMNIST(tmp_path / "fm").items("train")
    images = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-10]))
    with pytest.raises(DataError, match="truncated"):
        FashionMNIST(tmp_path / "fm").items("val")


# Shapes -------------------------------------------------------------------------------------

def test_shapes_deterministic_balanced_and_sized():
    def arrays(seed):
        source = Shapes(num_classes=5, image_size=24,
                        count_per_class={"train": 3, "val": 1}, seed=seed)
        return [item.payload for item in source.items("train")]
    first, again, other = arrays(0), arrays(0), arrays(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert first[0].shape == (24, 24, 3) and first[0].dtype == np.uint8

    source = Shapes(num_classes=5, count_per_class={"train": 3, "val": 1})
    items = list(source.items("train"))
    assert [item.label for item in items] == [i % 5 for i in range(15)]
    assert len(list(source.items("val"))) == 5
    train_first, val_first = items[0].payload, next(source.items("val")).payload
    assert not np.array_equal(train_first, val_first)
    assert source.class_names[:4] == ["circle", "square", "triangle", "cross"]


def test_shapes_errors():
    with pytest.raises(DataError, match="num_classes"):
        Shapes(num_classes=50)
    with pytest.raises(DataError, match="split"):
        Shapes().items("test")


# Preprocessing ------------------------------------------------------------------------------

def test_center_crop_resize_keeps_the_middle():
    image = Image.new("RGB", (16, 8), (255, 0, 0))
    image.paste((0, 0, 255), (8, 0, 16, 8))
    # short side 8 >= 2 * 4: box-halve to 8x4 (no scaling left), then crop columns 2..5
    out = center_crop_resize(image, 4)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[:, :2] == [255, 0, 0]).all() and (out[:, 2:] == [0, 0, 255]).all()


def test_center_crop_resize_any_shape_and_grey():
    grey = Image.fromarray(np.arange(50 * 30, dtype=np.uint8).reshape(30, 50) % 251)
    out = center_crop_resize(grey, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous
