"""An evaluation streams its samples to disk and through the feature network a batch at a time:
its memory grows far less than linearly with the number of samples, so that 50,000 samples of
256x256 (9.8 GB) never sit in memory at once."""
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

import dice_core.evaluation.evaluate as evaluate_module
from dice_core.config import Params
from dice_core.data import PixelEncoder, read_manifest
from dice_core.evaluation.evaluate import Evaluator
from dice_core.evaluation.reference import reference_identity
from dice_core.evaluation.sampling import sample_images
from dice_core.metrics import FeatureSet, NetworkFeatures, save_reference
from dice_core.models import build_model
from helpers import training_params

UPSAMPLING = 8    # 8x8 samples decoded to 64x64: 12 kB each, far above what a sample's metrics keep


class LargeImages(PixelEncoder):
    """The pixel decoder, each pixel drawn as an 8x8 block."""

    def decode(self, latents):
        images = super().decode(latents)
        return images.repeat_interleave(UPSAMPLING, 1).repeat_interleave(UPSAMPLING, 2)


class MeanColour(nn.Module):
    """A feature network of three numbers per image, its mean colour."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        colour = images.float().mean(dim=(1, 2)) * self.scale
        return NetworkFeatures(pool=colour[:, :2], logits=colour, spatial=colour[:, 2:])


@pytest.fixture
def evaluator(tmp_path, tiny_shards, monkeypatch):
    """An evaluation of 8x8 pixel samples decoded large, 2 DDPM steps, 250 samples a batch."""
    def evaluate(count):
        raw = training_params(tmp_path, tiny_shards, None)
        raw["evaluate"].update(samples=count, steps=2, batch_size=250, cfg_scales=[1.0],
                               device="cpu", reference=str(tmp_path / "reference.npz"))
        config = Params.model_validate(raw).evaluate
        evaluator = Evaluator(manifest, config, seed=0)
        evaluator.decoder = LargeImages()
        return evaluator

    manifest = read_manifest(tiny_shards)
    save_reference(tmp_path / "reference.npz", FeatureSet(mu=np.zeros(2), sigma=np.eye(2)),
                   reference_identity(manifest, "effnet"))
    monkeypatch.setattr(evaluate_module, "feature_network", lambda config: MeanColour())
    return evaluate


def peak_bytes(evaluate, model, out_dir) -> int:
    tracemalloc.start()
    try:
        evaluate(model, out_dir)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluation_memory_grows_far_less_than_linearly_with_the_samples(evaluator, tmp_path):
    model = build_model("dit-t", in_channels=3, input_size=8, num_classes=2, depth=1,
                        hidden_size=16, num_heads=1).eval()      # sampling 2000 in a second
    evaluator(100)(model, tmp_path / "warm-up")          # one-off allocations
    small, large = evaluator(200), evaluator(2000)
    peaks = {count: peak_bytes(evaluate, model, tmp_path / str(count))
             for count, evaluate in ((200, small), (2000, large))}
    image_bytes = (8 * UPSAMPLING) ** 2 * 3
    extra_images = (2000 - 200) * image_bytes              # 22 MB
    assert peaks[2000] - peaks[200] < 0.1 * extra_images, peaks
    with np.load(tmp_path / "2000" / "samples.npz") as written:
        images, labels = written["arr_0"], written["arr_1"]
    assert images.shape == (2000, 64, 64, 3) and list(labels[:4]) == [0, 1, 0, 1]
    np.testing.assert_array_equal(images[:300], sample_images(
        model, LargeImages(), count=300, num_classes=2, seed=0, latent_shape=(3, 8, 8),
        steps=2, batch_size=64))      # the samples an all-in-memory evaluation would draw
