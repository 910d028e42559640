"""The embedded latent space: the autoencoder stage, its folder, and what refuses it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dice_core.config import load_params
from dice_core.data import (
    DataError,
    Shapes,
    VAEEncoder,
    encode_dataset,
    prepare_dataset,
    prepared_images,
    read_manifest,
    read_shard,
)
from dice_core.data.autoencoder import (
    data_identity,
    holdout_split,
    image_tensor,
    read_metadata,
    save_autoencoder,
    train_autoencoder,
)
from dice_core.data.encoders import decoder_for

PROJECT = Path(__file__).resolve().parents[1]
# 30 steps at a high rate: about a second, enough to spread the latents to a std of about 2
# (so that the scale factor matters) and to reconstruct better than a flat grey image
TINY = load_params(PROJECT / "params.yaml").autoencoder.model_copy(update=dict(
    block_out_channels=[8, 16], steps=30, lr=1e-2, batch_size=8, holdout=8, device="cpu"))


def grey_images(count=40, size=16, seed=0):
    """Grey images stored as three equal channels, as prepare writes Fashion-MNIST."""
    grey = np.random.default_rng(seed).integers(0, 256, (count, size, size, 1), dtype=np.uint8)
    return np.repeat(grey, 3, axis=3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae-data")
    source = Shapes(num_classes=2, image_size=16, count_per_class={"train": 12}, seed=0)
    prepare_dataset(source, root / "prepared", splits=["train"], resolution=16, shard_size=8,
                    progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory, prepared):
    from dice_core.data import prepared_images
    images, _ = prepared_images(prepared, "train")
    vae, stats = train_autoencoder(images, TINY, seed=0, progress=False)
    folder = tmp_path_factory.mktemp("autoencoder")
    save_autoencoder(vae, folder, data_identity(read_manifest(prepared), 1), stats)
    return folder


def test_grey_images_enter_as_one_channel_and_colour_as_three():
    images = grey_images(4)
    one = image_tensor(images, 1)
    assert one.shape == (4, 1, 16, 16)
    torch.testing.assert_close(one[:, 0], torch.from_numpy(images[..., 0]).float() / 127.5 - 1)
    assert image_tensor(images, 3).shape == (4, 3, 16, 16)


def test_the_folder_holds_a_diffusers_vae_with_its_scale_and_the_data_it_was_made_for(
        autoencoder_dir, prepared):
    meta = read_metadata(autoencoder_dir)
    assert meta["source"]["name"] == "shapes" and meta["resolution"] == 16
    assert meta["image_channels"] == 1
    assert meta["heldout_images"] == 4     # at most a fifth of the 24 images is held out
    config = json.loads((autoencoder_dir / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(meta["scale_factor"])
    encoder = VAEEncoder(str(autoencoder_dir))
    assert encoder.scale_factor == pytest.approx(meta["scale_factor"])
    assert encoder.latent_shape(16) == (4, 8, 8)


def test_the_recorded_reconstruction_error_is_the_held_out_images_and_beats_flat_grey(
        autoencoder_dir, prepared):
    images, _ = prepared_images(prepared, "train")
    _, held = holdout_split(len(images), TINY.holdout, seed=0)
    pixels = image_tensor(images[held], 1)
    vae = VAEEncoder(str(autoencoder_dir)).vae
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    mse = read_metadata(autoencoder_dir)["reconstruction_mse"]
    assert mse == pytest.approx((decoded - pixels).square().mean().item(), rel=1e-5)
    assert mse < 0.95 * pixels.square().mean().item()    # a flat grey image's error


def test_the_scale_factor_gives_the_latents_unit_spread(autoencoder_dir, prepared, tmp_path):
    """The factor is 1 / std of latent samples of the held-out images; the samples of all the
    images (what training draws) then have a std of 1 up to how far the few held-out images
    stand for the rest. A factor off by sqrt(2) or more (1 / var, std, none) is outside."""
    manifest = encode_dataset(VAEEncoder(str(autoencoder_dir)), prepared, tmp_path / "latents",
                              batch_size=8, progress=False)
    assert manifest["encoder_identity"] == read_metadata(autoencoder_dir)["weights_sha256"]
    assert manifest["latent_shape"] == [4, 8, 8]
    moments = np.stack([arrays["moments"] for record in manifest["shards"]
                        for _, _, arrays in read_shard(tmp_path / "latents" / record["name"],
                                                       record)])
    mean, logvar = moments[:, :, 0], moments[:, :, 1]      # (images, views, C, h, w)
    noise = np.random.default_rng(0).standard_normal(mean.shape)
    latents = (mean + np.exp(logvar / 2) * noise) * manifest["scale_factor"]
    assert latents.std() == pytest.approx(1.0, abs=0.1)
    decoded = decoder_for(manifest, "cpu").decode(torch.zeros(2, 4, 8, 8))
    assert decoded.shape == (2, 16, 16, 1) and decoded.dtype == torch.uint8


def test_encode_refuses_a_missing_autoencoder_naming_the_stage(tmp_path):
    with pytest.raises(DataError, match="dvc repro autoencoder"):
        VAEEncoder(str(tmp_path / "data" / "autoencoder"))


def test_a_pretrained_autoencoder_is_adopted_and_a_missing_one_named(tmp_path, capsys):
    from diffusers import AutoencoderKL

    from helpers import save_tiny_vae
    from pipelines.cli import main as dice_main
    source = save_tiny_vae(tmp_path / "sd-vae")
    assert dice_main(["autoencoder", "--pretrained", str(source),
                      "--output", str(tmp_path / "adopted")]) == 0
    adopted = AutoencoderKL.from_pretrained(tmp_path / "adopted").state_dict()
    original = AutoencoderKL.from_pretrained(source).state_dict()
    assert adopted.keys() == original.keys()
    assert all(torch.equal(adopted[key], original[key]) for key in original)
    assert dice_main(["autoencoder", "--pretrained", str(tmp_path / "missing"),
                      "--output", str(tmp_path / "other")]) == 2
    assert "autoencoder.pretrained: no folder" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_encode_refuses_an_autoencoder_made_for_other_data(autoencoder_dir, tmp_path):
    source = Shapes(num_classes=2, image_size=24, count_per_class={"train": 4}, seed=0)
    prepare_dataset(source, tmp_path / "prepared", splits=["train"], resolution=24,
                    shard_size=8, progress=False)
    with pytest.raises(DataError, match=r"made for .*resolution.*16.*dvc repro autoencoder"):
        encode_dataset(VAEEncoder(str(autoencoder_dir)), tmp_path / "prepared",
                       tmp_path / "latents", batch_size=8, progress=False)


def test_evaluation_refuses_latents_of_an_autoencoder_retrained_since(autoencoder_dir,
                                                                      prepared, tmp_path):
    manifest = encode_dataset(VAEEncoder(str(autoencoder_dir)), prepared, tmp_path / "latents",
                              batch_size=8, progress=False)
    with pytest.raises(DataError, match="dvc repro encode"):
        decoder_for({**manifest, "encoder_identity": "0" * 64}, "cpu")
