"""prepare and encode: ImageNet-layout JPEGs -> image shards -> latent shards + manifests."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dice_core.data import (
    DataError,
    ImageNetFolder,
    PixelEncoder,
    Shapes,
    VAEEncoder,
    encode_dataset,
    prepare_dataset,
    read_manifest,
    read_shard,
)
from dice_core.data.encode import encode_views
from dice_core.data.shards import SHARD_NAME, ShardSetBuilder
from helpers import save_tiny_vae

WNIDS = ["n01440764", "n01443537", "n02102040"]


def write_imagenet(root, per_class=4):
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        for i in range(per_class):
            path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (40 + 4 * i, 30)  # landscape, of several widths: the crop has work to do
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture
def prepared(tmp_path):
    source = ImageNetFolder(write_imagenet(tmp_path / "imagenet"))
    out = tmp_path / "prepared"
    prepare_dataset(source, out, splits=["train"], resolution=16, shard_size=5, progress=False)
    return out


def file_sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_writes_cropped_images_with_a_correct_manifest(prepared, tmp_path):
    manifest = read_manifest(prepared)
    assert manifest["kind"] == "images" and manifest["resolution"] == 16
    assert manifest["splits"]["train"]["count"] == 12
    assert manifest["splits"]["train"]["classes"] == {"0": 4, "1": 4, "2": 4}
    assert [r["count"] for r in manifest["shards"]] == [5, 5, 2]
    for record in manifest["shards"]:
        path = prepared / record["name"]
        assert record["size"] == path.stat().st_size
        assert record["sha256"] == file_sha256(path)
    key, label, arrays = read_shard(prepared / "shard-000000.tar", manifest["shards"][0])[0]
    assert (key, label) == (f"train/{WNIDS[0]}/{WNIDS[0]}_0", 0)
    assert arrays["image"].shape == (16, 16, 3) and arrays["image"].dtype == np.uint8
    original = Image.open(tmp_path / "imagenet" / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG")
    from dice_core.data import center_crop_resize
    np.testing.assert_array_equal(arrays["image"], center_crop_resize(original, 16))


@pytest.mark.parametrize("encoder_name", ["pixels", "vae"])
def test_encode_stores_the_moments_of_each_image_and_its_mirror(prepared, tmp_path,
                                                                tiny_vae_dir, encoder_name):
    encoder = PixelEncoder() if encoder_name == "pixels" else VAEEncoder(str(tiny_vae_dir))
    out = tmp_path / "latents"
    encode_dataset(encoder, prepared, out, batch_size=3, progress=False)
    manifest = read_manifest(out)
    images_manifest = read_manifest(prepared)
    assert manifest["kind"] == "latents" and manifest["encoder"] == encoder.name
    assert manifest["splits"]["train"]["classes"] == {"0": 4, "1": 4, "2": 4}
    expected_shape = [3, 16, 16] if encoder_name == "pixels" else [4, 8, 8]
    assert manifest["latent_shape"] == expected_shape
    assert manifest["scale_factor"] == (1.0 if encoder_name == "pixels" else 0.18215)
    assert manifest["stochastic"] == (encoder_name == "vae")
    assert len(manifest["params_hash"]) == 64
    for record, image_record in zip(manifest["shards"], images_manifest["shards"]):
        assert record["sha256"] == file_sha256(out / record["name"])
        stored = read_shard(out / record["name"], record)
        images = read_shard(prepared / image_record["name"], image_record)
        assert [s[0] for s in stored] == [s[0] for s in images]
        batch = np.stack([arrays["image"] for _, _, arrays in images])
        expected = encode_views(encoder, batch, np.float32)
        np.testing.assert_array_equal(np.stack([a["moments"] for _, _, a in stored]), expected)
    first = np.stack([a["image"] for _, _, a in read_shard(
        prepared / "shard-000000.tar", images_manifest["shards"][0])])[:1]
    mean, _ = encoder.moments(torch.from_numpy(np.ascontiguousarray(first[:, :, ::-1])))
    moments = read_shard(out / "shard-000000.tar", manifest["shards"][0])[0][2]["moments"]
    np.testing.assert_allclose(moments[1, 0], mean[0].numpy(), rtol=1e-5, atol=1e-6)


def test_pixel_moments_are_the_image_in_unit_range():
    image = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(1, 2, 2, 3) * 20
    moments = encode_views(PixelEncoder(), image, np.float32)
    assert moments.shape == (1, 2, 1, 3, 2, 2)
    np.testing.assert_allclose(moments[0, 0, 0], image[0].transpose(2, 0, 1) / 127.5 - 1,
                               atol=1e-6)
    np.testing.assert_allclose(moments[0, 1, 0], moments[0, 0, 0][:, :, ::-1])


def test_a_vae_that_cannot_be_found_names_the_local_path_option(tmp_path):
    with pytest.raises(DataError, match=r"encode\.vae.*local folder"):
        VAEEncoder(str(tmp_path / "no-such-vae"))
    with pytest.raises(DataError, match=r"encode\.vae"):
        VAEEncoder("someone/not-cached-vae")


def test_corrupt_images_are_skipped_and_counted_until_the_allowed_fraction(tmp_path):
    root = write_imagenet(tmp_path / "imagenet")
    broken = root / "train" / WNIDS[1] / f"{WNIDS[1]}_2.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])
    source = ImageNetFolder(root)
    manifest = prepare_dataset(source, tmp_path / "ok", splits=["train"], resolution=16,
                               shard_size=5, max_corrupt_fraction=0.1, progress=False)
    summary = manifest["splits"]["train"]
    assert summary["count"] == 11 and summary["skipped"] == 1
    assert summary["classes"] == {"0": 4, "1": 3, "2": 4}
    assert summary["skipped_examples"][0]["key"] == f"train/{WNIDS[1]}/{WNIDS[1]}_2"
    with pytest.raises(DataError, match=r"1 of 12 images could not be decoded.*"
                                        r"max_corrupt_fraction"):
        prepare_dataset(source, tmp_path / "strict", splits=["train"], resolution=16,
                        shard_size=5, max_corrupt_fraction=0.0, progress=False)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_an_empty_dataset_folder_is_refused(tmp_path):
    (tmp_path / "imagenet" / "train" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(DataError, match=r"prepare\.root"):
        prepare_dataset(ImageNetFolder(tmp_path / "imagenet"), tmp_path / "out",
                        splits=["train"], resolution=16, shard_size=5, progress=False)


def test_a_truncated_shard_is_refused_at_read_time(prepared):
    manifest = read_manifest(prepared)
    shard = prepared / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"shard-000001\.tar is truncated or changed.*dvc repro"):
        read_shard(shard, manifest["shards"][1])
    with pytest.raises(DataError, match=r"does not match its shards: shard-000001\.tar is 3000 "
                                        r"bytes"):
        read_manifest(prepared)


def test_a_manifest_that_does_not_match_its_shards_is_refused(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["shards"][0]["count"] += 1
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"holds 5 samples, its manifest says 6"):
        read_shard(prepared / "shard-000000.tar", manifest["shards"][0])
    (prepared / "shard-000002.tar").unlink()
    with pytest.raises(DataError, match=r"shard-000002\.tar is missing"):
        read_manifest(prepared)
    (prepared / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid manifest"):
        read_manifest(prepared)


class Interrupted(Exception):
    pass


def shapes_source():
    return Shapes(num_classes=3, image_size=16, count_per_class={"train": 8}, seed=1)


def test_a_stage_interrupted_mid_shard_resumes_to_identical_shards(tmp_path, monkeypatch):
    """The crash comes while shard 2 is half written: it must not appear under its final
    name (its partial file is removed), and the re-run keeps shards 0-1 and writes the rest."""
    reference = prepare_dataset(shapes_source(), tmp_path / "reference", splits=["train"],
                                resolution=16, shard_size=5, progress=False)
    from dice_core.data import shards as shards_module
    real_write = shards_module.write_shard

    def crash_in_shard_two(path, samples):
        if path.name == SHARD_NAME.format(2):
            def half_then_crash():
                for number, sample in enumerate(samples):
                    if number == 2:
                        raise Interrupted
                    yield sample
            return real_write(path, half_then_crash())
        return real_write(path, samples)

    monkeypatch.setattr(shards_module, "write_shard", crash_in_shard_two)
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        prepare_dataset(shapes_source(), out, splits=["train"], resolution=16, shard_size=5,
                        progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.tar",
                                                           "shard-000001.tar"]
    assert not (out / "manifest.json").exists()
    first_shard_time = (out / "shard-000000.tar").stat().st_mtime_ns

    monkeypatch.setattr(shards_module, "write_shard", real_write)
    resumed = prepare_dataset(shapes_source(), out, splits=["train"], resolution=16,
                              shard_size=5, progress=False)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first_shard_time  # kept, not redone
    assert not list(out.glob("*.partial"))
    assert resumed["shards"] == reference["shards"]
    assert read_manifest(out)["splits"] == reference["splits"]


def test_a_rerun_with_other_parameters_starts_afresh(tmp_path):
    out = tmp_path / "out"
    prepare_dataset(shapes_source(), out, splits=["train"], resolution=16, shard_size=5,
                    progress=False)
    manifest = prepare_dataset(shapes_source(), out, splits=["train"], resolution=16,
                               shard_size=12, progress=False)
    assert [r["count"] for r in manifest["shards"]] == [12, 12]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.tar",
                                                           "shard-000001.tar"]


def test_a_journal_entry_whose_shard_changed_is_redone(tmp_path):
    out = tmp_path / "out"
    prepare_dataset(shapes_source(), out, splits=["train"], resolution=16, shard_size=5,
                    progress=False)
    fingerprint = json.loads((out / "journal.jsonl").read_text().splitlines()[0])["fingerprint"]
    (out / "shard-000003.tar").write_bytes(b"damaged")
    builder = ShardSetBuilder(out, fingerprint)
    assert len(builder.records) == 3
    assert not (out / "shard-000003.tar").exists()
