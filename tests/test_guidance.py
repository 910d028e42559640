"""Classifier-free guidance (dice_core.diffusion.guidance) in every sampler and in evaluations,
against hand computations and DiT's released forward_with_cfg; and sampling whose every random
draw is keyed by the sample's index, so that the batch size changes nothing."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from dice_core.config import EvaluateParams, ParamsError, load_params
from dice_core.data import read_manifest
from dice_core.diffusion import create_diffusion, guided, sample_with_scheduler
from dice_core.errors import InputError
from dice_core.evaluation.classifier import SmallClassifier
from dice_core.evaluation.evaluate import Evaluator
from dice_core.evaluation.reference import build_reference
from dice_core.evaluation.sampling import sample_images
from dice_core.metrics import cfg_suffix
from dice_core.models import build_model
from dice_core.reporting.collect import ModelResults
from dice_core.reporting.tables import table1
from helpers import tiny_latents

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
NUM_CLASSES = 3
SHAPE = (3, 4, 8, 8)
LABELS = torch.tensor([0, 2, 1])


def small_dit(in_channels: int = 4, input_size: int = 8) -> nn.Module:
    """A one-block DiT in float64 whose zero-initialised layers are perturbed, so that its
    output depends on the class (as a trained model's does)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("dit-t", in_channels=in_channels, input_size=input_size,
                            num_classes=NUM_CLASSES, depth=1, hidden_size=32, num_heads=2)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn(parameter.shape))
    return model.double().eval()


class ElementwiseModel(nn.Module):
    """eps = x / 2 + the class's offset, v = tanh(x): each sample's output depends on that
    sample alone, bit for bit, whatever batch it is in (a real network's matrix products round
    differently at another batch size)."""

    in_channels, num_classes = 4, NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.offsets = nn.Parameter(torch.randn(NUM_CLASSES + 1, 4,
                                                generator=torch.Generator().manual_seed(0)))

    def forward(self, x, t, y):
        return torch.cat([x / 2 + self.offsets[y][:, :, None, None], torch.tanh(x)], dim=1)


class Identity:
    """A decoder that hands the latents back, so that samples compare as floats."""

    bounded = False

    def decode(self, latents):
        return latents


def null_labels(y: torch.Tensor) -> torch.Tensor:
    return torch.full_like(y, NUM_CLASSES)


def inputs(dtype=torch.float64):
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return x, torch.tensor([999, 500, 3]), LABELS


# -- scale 1 is no guidance --------------------------------------------------------------------

NOISE = inputs()[0]
SAMPLING = {
    "ddpm": lambda model, g: create_diffusion("4").p_sample_loop(
        model, SHAPE, noise=NOISE, model_kwargs={"y": LABELS}, generator=g),
    **{kind: (lambda model, g, kind=kind: sample_with_scheduler(
        model, create_diffusion(), kind, 4, SHAPE, noise=NOISE, model_kwargs={"y": LABELS},
        generator=g)) for kind in ("ddim", "dpm-solver")},
}


@pytest.mark.parametrize("sampler", list(SAMPLING))
def test_at_scale_one_every_sampler_gives_the_unguided_samples_bit_for_bit(sampler):
    model, sample = small_dit(), SAMPLING[sampler]
    unguided = sample(model, torch.Generator().manual_seed(5))
    assert torch.equal(sample(guided(model, 1.0), torch.Generator().manual_seed(5)), unguided)
    assert torch.equal(sample(guided(model, 1.0, channels=3), torch.Generator().manual_seed(5)),
                       unguided)
    assert not torch.allclose(sample(guided(model, 2.0), torch.Generator().manual_seed(5)),
                              unguided)


# -- one guided step by hand -------------------------------------------------------------------

def hand_guided_output(model, x, t, y, scale, channels):
    """The conditional and null passes run apart; eps guided on ``channels``, the rest
    (other eps channels, variance) the conditional pass's."""
    cond, null = model(x, t, y), model(x, t, null_labels(y))
    eps = null[:, :channels] + scale * (cond[:, :channels] - null[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


def hand_ddpm_mean_log_variance(betas, i, x, output):
    """IDDPM's p(x_{i-1} | x_i) from the betas alone: the posterior mean of the eps's x_0, and
    the log-variance frac log beta + (1 - frac) log posterior variance (at i = 0 the i = 1
    one), frac = (v + 1) / 2."""
    alphas_cumprod = np.cumprod(1 - betas)
    beta, abar = betas[i], alphas_cumprod[i]
    abar_prev = alphas_cumprod[i - 1] if i > 0 else 1.0
    j = max(i, 1)
    posterior_variance = betas[j] * (1 - alphas_cumprod[j - 1]) / (1 - alphas_cumprod[j])
    eps, v = output.chunk(2, dim=1)
    frac = (v + 1) / 2
    log_variance = frac * math.log(beta) + (1 - frac) * math.log(posterior_variance)
    x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    mean = (beta * math.sqrt(abar_prev) / (1 - abar) * x0
            + (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar) * x)
    return mean, log_variance


def step_generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(10 + i) for i in range(SHAPE[0])]


@pytest.mark.parametrize("channels", [None, 3])
def test_a_guided_ddpm_step_is_the_hand_computed_one(channels):
    """Two respaced steps (original timesteps 999 and 0): an ancestral step with the guided eps
    and the conditional pass's variance, then the final mean."""
    model, scale = small_dit(), 3.0
    diffusion = create_diffusion("2")
    assert diffusion.timestep_map.tolist() == [0, 999]
    noise, _, y = inputs()
    sampled = diffusion.p_sample_loop(guided(model, scale, channels), SHAPE, noise=noise,
                                       model_kwargs={"y": y}, generator=step_generators())

    x, draws = noise, step_generators()
    for i, original_t in ((1, 999), (0, 0)):
        output = hand_guided_output(model, x, torch.full((len(y),), original_t), y, scale,
                                    channels or SHAPE[1])
        mean, log_variance = hand_ddpm_mean_log_variance(diffusion.betas, i, x, output)
        z = torch.stack([torch.randn(SHAPE[1:], generator=g, dtype=x.dtype) for g in draws])
        x = mean + torch.exp(0.5 * log_variance) * z if i > 0 else mean
    torch.testing.assert_close(sampled, x, atol=1e-6, rtol=0)
    unguided = diffusion.p_sample_loop(model, SHAPE, noise=noise, model_kwargs={"y": y},
                                       generator=step_generators())
    assert (sampled - unguided).abs().max() > 1e-2     # the guidance is not lost in rounding


# -- the three-channel option ------------------------------------------------------------------

def dit_forward_with_cfg(model, x, t, y, cfg_scale):
    """facebookresearch/DiT's models.py DiT.forward_with_cfg at ed81ce2, as released."""
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = model(combined, t, y)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


def test_the_three_channel_option_guides_exactly_the_first_three_channels():
    model, (x, t, y), scale = small_dit(), inputs(), 4.0
    cond, null = model(x, t, y), model(x, t, null_labels(y))
    three = guided(model, scale, channels=3)(x, t, y)
    torch.testing.assert_close(three[:, :3], null[:, :3] + scale * (cond[:, :3] - null[:, :3]))
    torch.testing.assert_close(three[:, 3:], cond[:, 3:])       # eps channel 3 and variance
    # DiT's sample.py: z and t doubled, y = cat([y, null]), the first half kept
    dit = dit_forward_with_cfg(model, torch.cat([x, x]), torch.cat([t, t]),
                               torch.cat([y, null_labels(y)]), scale)[:len(x)]
    assert torch.equal(three, dit)

    every = guided(model, scale)(x, t, y)
    torch.testing.assert_close(every[:, :3], three[:, :3])
    torch.testing.assert_close(every[:, 4:], cond[:, 4:])
    assert (every[:, 3] - cond[:, 3]).abs().max() > 1e-2     # the default guides the fourth


# -- noise keyed by the sample -----------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver"])
def test_the_same_seed_gives_the_same_samples_whatever_the_batch_size(sampler):
    def sample(batch_size, cfg_scale=2.5):
        return sample_images(ElementwiseModel(), Identity(), count=5, num_classes=NUM_CLASSES,
                             seed=7, latent_shape=SHAPE[1:], sampler=sampler, steps=3,
                             batch_size=batch_size, cfg_scale=cfg_scale)

    by_two = sample(2)
    assert np.array_equal(by_two, sample(3)) and np.array_equal(by_two, sample(5))
    assert len({row.tobytes() for row in by_two}) == 5         # every sample its own noise
    assert not np.array_equal(by_two, sample(2, cfg_scale=1.0))


# -- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [-1.0, -0.5, math.nan])
def test_a_negative_scale_is_refused_naming_it(scale):
    with pytest.raises(InputError, match=re.escape(repr(scale))):
        guided(ElementwiseModel(), scale)
    with pytest.raises(InputError, match=re.escape(repr(scale))):
        sample_images(ElementwiseModel(), Identity(), count=2, num_classes=NUM_CLASSES, seed=0,
                      latent_shape=SHAPE[1:], steps=2, cfg_scale=scale)


def test_a_model_without_a_null_class_or_with_fewer_channels_is_refused():
    model = build_model("dit-t", in_channels=4, input_size=8, num_classes=NUM_CLASSES,
                        depth=1, hidden_size=32, num_heads=2, class_dropout_prob=0.0)
    with pytest.raises(InputError, match="no null class"):
        guided(model, 2.0)
    assert guided(model, 1.0) is model
    with pytest.raises(InputError, match="guidance_channels is 5, but the model has 4"):
        guided(small_dit(), 2.0, channels=5)


def params_with_evaluate(tmp_path, **evaluate) -> Path:
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    raw["evaluate"].update(evaluate)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("scales, problem", [([1.0, -2.0], r"evaluate\.cfg_scales\.1: "),
                                             ([1.0, 1.0], r"names a value twice"),
                                             ([], r"evaluate\.cfg_scales: ")])
def test_params_refuse_negative_repeated_or_no_scales(tmp_path, scales, problem):
    with pytest.raises(ParamsError, match=problem):
        load_params(params_with_evaluate(tmp_path, cfg_scales=scales))


def test_in_training_scales_default_to_the_final_ones(tmp_path):
    evaluate = load_params(params_with_evaluate(tmp_path, cfg_scales=[1.0, 3.0])).evaluate
    unset = evaluate.model_copy(update={"in_training": evaluate.in_training.model_copy(
        update={"cfg_scales": None})})
    assert unset.for_training().cfg_scales == [1.0, 3.0]
    changed = evaluate.model_copy(update={"in_training": evaluate.in_training.model_copy(
        update={"cfg_scales": [2.0]})})
    assert changed.for_training().cfg_scales == [2.0]


# -- metric names ------------------------------------------------------------------------------

def test_metric_names_carry_the_scale_except_at_the_headline():
    assert cfg_suffix(1.0, 1.0) == "" and cfg_suffix(3.0, 1.0) == "_cfg3"
    assert cfg_suffix(1.5, 1.0) == "_cfg1.5" and cfg_suffix(1.0, 4.0) == "_cfg1"
    final = {"fd_effnet": 5.0, "class_accuracy": 0.5, "fd_effnet_cfg3": 3.0,
             "class_accuracy_cfg3": 0.9, "cfg_scale": 1.0, "cfg_scales": [1.0, 3.0]}
    table = table1([ModelResults("dit-t", final=final), ModelResults("old", final={
        "fd_effnet": 7.0})], "effnet")
    assert "| run | cfg | is_effnet | fd_effnet |" in table
    assert "| dit-t | 1 | - | 5.00 | - | - | - | 0.50 |" in table
    assert "| dit-t | 3 | - | 3.00 | - | - | - | 0.90 |" in table
    assert "| old | 1 | - | 7.00 |" in table        # from before guidance: unguided


@pytest.fixture(scope="module")
def evaluation_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("guided-eval")
    latents = tiny_latents(root, num_classes=NUM_CLASSES, per_class=4, image_size=16,
                           resolution=16, shard_size=12)
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())["evaluate"]
    raw.update(reference=str(root / "reference.npz"), samples=6, steps=2, batch_size=4,
               device="cpu", classifier=None, output=str(root / "eval"))
    config = EvaluateParams.model_validate(raw)
    build_reference(config, root / "prepared", latents)
    return read_manifest(latents), config


def evaluate_at(setup, scales, out_dir) -> dict:
    manifest, config = setup
    evaluator = Evaluator(manifest, config.model_copy(update={"cfg_scales": scales}), seed=3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        evaluator.classifier = SmallClassifier(NUM_CLASSES, 16).eval()
    evaluator.classifier_meta = {"heldout_accuracy": 0.5}
    return evaluator(small_dit(in_channels=3, input_size=16).float(), out_dir)


def test_an_evaluation_reports_each_further_scale_with_its_suffix(evaluation_setup, tmp_path):
    metrics = evaluate_at(evaluation_setup, [1.0, 3.0], tmp_path / "both")
    headline = evaluate_at(evaluation_setup, [1.0], tmp_path / "one")
    for name in ("fd_effnet", "is_effnet", "precision_effnet", "recall_effnet",
                 "class_accuracy"):
        assert metrics[name] == headline[name]          # the headline is the first scale's
        assert name + "_cfg3" in metrics and name + "_cfg3" not in headline
    assert metrics["fd_effnet_cfg3"] != metrics["fd_effnet"]
    assert "num_samples_cfg3" not in metrics and "classifier_real_accuracy_cfg3" not in metrics
    assert (metrics["cfg_scale"], metrics["cfg_scales"]) == (1.0, [1.0, 3.0])
    assert json.loads((tmp_path / "both" / "metrics.json").read_text()) == metrics
    with np.load(tmp_path / "both" / "samples.npz") as both, \
            np.load(tmp_path / "one" / "samples.npz") as one:
        np.testing.assert_array_equal(both["arr_0"], one["arr_0"])
