"""Tests of dice_core.diffusion: the schedule and respacing against IDDPM's published rule,
the loss terms against closed forms, and the samplers against oracle models that know the
data distribution exactly."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm
from torch import nn

from dice_core.diffusion import (
    create_diffusion,
    discretized_gaussian_log_likelihood,
    make_scheduler,
    multiscale_noise_target,
    normal_kl,
    sample_with_scheduler,
    space_timesteps,
)
from dice_core.diffusion.fast_samplers import SCHEDULERS
from diffusion_oracles import ddim_sample, diffusers_ddpm

SHAPE = (2, 4, 8, 8)
ORIGINAL_ALPHAS_CUMPROD = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def _at(values: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values)[t].to(x.dtype).view(-1, 1, 1, 1)


# -- stand-in models ---------------------------------------------------------------------------

class ConvModel(nn.Module):
    """A 1x1 conv from C to 2C channels: the smallest model that fulfils the contract."""

    def __init__(self, channels: int = 4, scale: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 1)
        with torch.no_grad():
            self.conv.weight.mul_(scale)

    def forward(self, x, t, y=None):
        return self.conv(x)


def gaussian_data_model(x, t, y=None):
    """Exact for data ~ N(0, I): then x_t ~ N(0, I) and E[eps | x_t] = sqrt(1 - abar_t) x_t.
    It reads abar at the ORIGINAL timestep, so it is wrong if it is given respaced indices."""
    eps = torch.sqrt(1 - _at(ORIGINAL_ALPHAS_CUMPROD, t, x)) * x
    return torch.cat([eps, torch.tanh(x)], dim=1)


def point_mass_model(x0: torch.Tensor):
    """Exact for data = x0 always: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    def model(x, t, y=None):
        alpha_bar = _at(ORIGINAL_ALPHAS_CUMPROD, t, x)
        eps = (x - torch.sqrt(alpha_bar) * x0.to(x.dtype)) / torch.sqrt(1 - alpha_bar)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)
    return model


class RecordingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(t.clone())
        return gaussian_data_model(x, t)


# -- schedule and respacing --------------------------------------------------------------------

def iddpm_kept_steps(num_steps: int, section_counts: list[int]) -> list[int]:
    """IDDPM's rule, in this test's terms: the steps fall into as many equal sections as there
    are counts (the remainder one extra step each to the first sections); a section of L steps
    starting at s keeps ``count`` steps evenly strided from its first to its last, step
    k at s + k (L - 1) / (count - 1) rounded (exactly, halves to even; see
    test_an_exact_half_is_rounded_as_iddpms_float_stride_lands for where IDDPM differs)."""
    sections = len(section_counts)
    sizes = [num_steps // sections + (1 if i < num_steps % sections else 0)
             for i in range(sections)]
    starts = [sum(sizes[:i]) for i in range(sections)]
    return [start + (0 if count == 1 else round(Fraction(k * (size - 1), count - 1)))
            for start, size, count in zip(starts, sizes, section_counts)
            for k in range(count)]


def ddim_kept_steps(num_steps: int, count: int) -> list[int]:
    """The "ddimN" rule: every stride-th step from 0, for the smallest integer stride that
    gives exactly N steps (ceil(T / stride) == N)."""
    stride = min(s for s in range(1, num_steps) if -(-num_steps // s) == count)
    return list(range(0, num_steps, stride))


def iddpm_respaced_betas(kept: list[int]) -> np.ndarray:
    betas, last = [], 1.0
    for i, alpha_bar in enumerate(ORIGINAL_ALPHAS_CUMPROD):
        if i in kept:
            betas.append(1 - alpha_bar / last)
            last = alpha_bar
    return np.array(betas)


def test_linear_betas_are_ho_et_al_rescaled_by_step_count():
    np.testing.assert_array_equal(create_diffusion().betas, np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(create_diffusion(diffusion_steps=250).betas,
                               np.linspace(4e-4, 0.08, 250), rtol=1e-15)
    assert create_diffusion().betas.dtype == np.float64


def test_the_oracle_gives_the_hand_counted_steps():
    assert iddpm_kept_steps(10, [2, 3]) == [0, 4, 5, 7, 9]     # sections 0-4 and 5-9
    assert iddpm_kept_steps(11, [2, 3]) == [0, 5, 6, 8, 10]    # the extra step goes first
    assert iddpm_kept_steps(8, [3]) == [0, 4, 7]               # 3.5 rounds to 4
    assert ddim_kept_steps(10, 3) == [0, 4, 8]                 # stride 3 would give 4 steps


@pytest.mark.parametrize("num_steps, respacing, counts", [
    (1000, "250", [250]), (1000, 250, [250]), (1000, "100", [100]), (1000, "5", [5]),
    (1000, "10,15,20", [10, 15, 20]), (1000, "3,4,1,60", [3, 4, 1, 60]),
    (4000, "250", [250]), (11, "2,3", [2, 3]), (10, [10], [10])])
def test_space_timesteps_follows_iddpms_section_rule(num_steps, respacing, counts):
    assert space_timesteps(num_steps, respacing) == iddpm_kept_steps(num_steps, counts)


@pytest.mark.parametrize("count", [10, 30, 50, 100, 250, 334])
def test_ddim_respacing_takes_the_smallest_integer_stride_giving_exactly_n_steps(count):
    assert space_timesteps(1000, f"ddim{count}") == ddim_kept_steps(1000, count)


@pytest.mark.parametrize("respacing", [
    "ddim600",    # 1000 / 2 gives 500 steps, 1000 / 1 gives 1000: no stride gives 600
    "600,600",    # a section of 500 steps cannot give 600
    "0"])
def test_respacing_that_the_rule_cannot_take_is_refused(respacing):
    with pytest.raises(ValueError):
        space_timesteps(1000, respacing)


def test_an_exact_half_is_rounded_as_iddpms_float_stride_lands():
    """21 of 1000: step 10 sits at 10 x 49.95 = 499.5. IDDPM adds the stride ten times in
    floating point and lands just below the half, so it keeps 499 where exact rounding would
    keep 500; where the sum is exact (3 of 1000: 499.5 once) the half goes to even, 500."""
    assert space_timesteps(1000, "21")[10] == 499
    assert space_timesteps(1000, "3") == [0, 500, 999]


@pytest.mark.parametrize("respacing, counts", [("250", [250]), ("100", [100]),
                                               ("10,15,20", [10, 15, 20])])
def test_respaced_process_keeps_the_original_alpha_bar_at_the_kept_steps(respacing, counts):
    diffusion = create_diffusion(respacing)
    kept = iddpm_kept_steps(1000, counts)
    assert diffusion.timestep_map.tolist() == kept
    assert diffusion.num_timesteps == len(kept)
    np.testing.assert_allclose(diffusion.betas, iddpm_respaced_betas(kept), rtol=0, atol=1e-15)
    np.testing.assert_allclose(diffusion.alphas_cumprod, ORIGINAL_ALPHAS_CUMPROD[kept],
                               rtol=1e-12)
    np.testing.assert_array_equal(diffusion.original_betas, np.linspace(1e-4, 0.02, 1000))


def test_250_steps_stride_and_rounding():
    kept = create_diffusion("250").timestep_map.tolist()
    # The stride is 999 / 249 = 4.012...: multiples of 4 until the rounding carries over.
    assert kept[:4] == [0, 4, 8, 12]
    assert kept[41:44] == [164, 169, 173]
    assert kept[-1] == 999 and len(kept) == 250


def test_ddim_respacing_uses_integer_stride():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim30") == list(range(0, 1000, 34))
    assert create_diffusion("ddim10").timestep_map.tolist() == list(range(0, 1000, 100))


def test_unrespaced_process_and_bad_arguments():
    for respacing in (None, ""):
        diffusion = create_diffusion(respacing)
        assert diffusion.num_timesteps == 1000
        np.testing.assert_array_equal(diffusion.timestep_map, np.arange(1000))
        np.testing.assert_array_equal(diffusion.alphas_cumprod, ORIGINAL_ALPHAS_CUMPROD)
    with pytest.raises(ValueError):
        create_diffusion("2000")
    with pytest.raises(ValueError):
        create_diffusion(noise_schedule="quadratic")


def test_cosine_schedule_follows_its_alpha_bar():
    diffusion = create_diffusion(noise_schedule="squaredcos_cap_v2")
    s = np.arange(1, 1001) / 1000
    expected = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(diffusion.alphas_cumprod[:990], expected[:990], rtol=1e-10)
    assert diffusion.betas.max() <= 0.999


# -- forward process and loss terms -----------------------------------------------------------

def test_q_sample_moments():
    diffusion = create_diffusion()
    x0 = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64).repeat(200_000, 1)
    generator = torch.Generator().manual_seed(0)
    for step in (0, 250, 999):
        t = torch.full((x0.shape[0],), step)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x_t = diffusion.q_sample(x0, t, noise)
        alpha_bar = ORIGINAL_ALPHAS_CUMPROD[step]
        np.testing.assert_allclose(x_t.mean(0), math.sqrt(alpha_bar) * x0[0], atol=0.01)
        np.testing.assert_allclose(x_t.var(0), 1 - alpha_bar, rtol=0.02)


def test_normal_kl_against_closed_form_and_integral():
    mean, logvar = torch.tensor([0.3, -2.0]), torch.tensor([0.1, -1.0])
    torch.testing.assert_close(normal_kl(mean, logvar, mean, logvar), torch.zeros(2))

    m1, s1, m2, s2 = 0.5, 0.7, -0.2, 1.6
    density_1, density_2 = norm(m1, s1), norm(m2, s2)
    numeric, _ = integrate.quad(lambda x: density_1.pdf(x)
                                * (density_1.logpdf(x) - density_2.logpdf(x)), -20, 20)
    kl = normal_kl(torch.tensor(m1, dtype=torch.float64), 2 * math.log(s1), m2, 2 * math.log(s2))
    assert kl.item() == pytest.approx(numeric, rel=1e-8)
    assert normal_kl(torch.zeros(3, 1), 0.0, torch.zeros(1, 5), 0.0).shape == (3, 5)


@pytest.mark.parametrize("mean, std", [(0.1, 0.3), (0.9, 0.05), (-0.5, 2.0)])
def test_discretized_gaussian_likelihood(mean, std):
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    means, log_scales = torch.full_like(bins, mean), torch.full_like(bins, math.log(std))
    probabilities = discretized_gaussian_log_likelihood(bins, means, log_scales).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-6)
    edges = np.concatenate([[-np.inf], bins[:-1].numpy() + 1 / 255, [np.inf]])
    exact = np.diff(norm.cdf(edges, loc=mean, scale=std))
    # The tanh approximation of the normal CDF is good to a few 1e-4.
    np.testing.assert_allclose(probabilities.numpy(), exact, atol=3e-4)


def test_training_losses_shapes_and_values():
    diffusion = create_diffusion()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 999])
    terms = diffusion.training_losses(ConvModel(), x0, t, model_kwargs={"y": torch.tensor([1, 2])})
    assert set(terms) == {"loss", "mse", "vb"}
    for value in terms.values():
        assert value.shape == (2,) and torch.isfinite(value).all()
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_vb_trains_only_the_variance_channels():
    diffusion = create_diffusion()
    model = ConvModel()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    terms = diffusion.training_losses(model, x0, torch.tensor([0, 500]))
    terms["vb"].sum().backward(retain_graph=True)
    channels = SHAPE[1]
    assert (model.conv.weight.grad[:channels] == 0).all()
    assert (model.conv.weight.grad[channels:] != 0).any()
    model.zero_grad()
    terms["mse"].sum().backward()
    assert (model.conv.weight.grad[channels:] == 0).all()


def test_exact_eps_gives_zero_mse_and_exact_posterior_gives_zero_kl():
    diffusion = create_diffusion()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def knows_the_noise(x, t, y=None):  # v = -1 selects the posterior variance
        return torch.cat([noise, -torch.ones_like(noise)], dim=1)

    terms = diffusion.training_losses(knows_the_noise, x0, torch.tensor([1, 700]), noise=noise)
    assert terms["mse"].abs().max() < 1e-20
    assert terms["vb"].abs().max() < 1e-9


def test_vb_at_t0_is_the_decoder_nll_in_bits():
    """At t = 0 with the exact eps the decoder mean is x0 itself; v = -1 gives the clipped
    posterior variance (the t = 1 value), so each dimension costs -log2 of the normal mass of
    its 8-bit bin, [x0 - 1/255, x0 + 1/255]."""
    diffusion = create_diffusion()
    levels = torch.randint(1, 255, SHAPE, generator=torch.Generator().manual_seed(0))
    x0 = (-1 + 2 * levels / 255).double()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def knows_the_noise(x, t, y=None):
        return torch.cat([noise, -torch.ones_like(noise)], dim=1)

    vb = diffusion.training_losses(knows_the_noise, x0, torch.tensor([0, 0]), noise=noise)["vb"]
    std = math.sqrt(diffusion.posterior_variance[1])
    expected_bits = -math.log2(norm.cdf(1 / 255 / std) - norm.cdf(-1 / 255 / std))
    np.testing.assert_allclose(vb.numpy(), expected_bits, rtol=1e-3)


def test_training_model_sees_original_timesteps():
    model = RecordingModel()
    x0 = torch.zeros(3, *SHAPE[1:])
    create_diffusion("10").training_losses(model, x0, torch.tensor([0, 9, 3]))
    assert model.seen[0].tolist() == [0, 999, 333] and model.seen[0].dtype == torch.long


def test_wrong_output_shape_is_refused():
    with pytest.raises(ValueError, match="2C"):
        create_diffusion().training_losses(lambda x, t: x, torch.zeros(SHAPE), torch.tensor([0, 1]))


# -- multi-scale targets -----------------------------------------------------------------------

def test_multiscale_target_is_scale_corrected_area_average():
    noise = torch.randn(64, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    for size in (16, 8):
        target = multiscale_noise_target(noise, size)
        factor = 32 // size
        assert target.shape == (64, 4, size, size)
        assert target.var().item() == pytest.approx(1.0, abs=0.03)
        block = noise[0, 0, :factor, :factor]
        assert target[0, 0, 0, 0].item() == pytest.approx(block.mean().item() * factor, abs=1e-6)
    with pytest.raises(ValueError):
        multiscale_noise_target(noise, 5)


class TwoStageModel(nn.Module):
    """Full-resolution output from a conv; the half-resolution stage predicts ``coarse``."""

    stage_loss_weights = (1.0, 0.25)

    def __init__(self):
        super().__init__()
        self.full = ConvModel()
        self.coarse = None

    def forward(self, x, t, y=None):
        return self.full(x, t)

    def forward_stages(self, x, t, y=None):
        coarse = torch.zeros(x.shape[0], 8, 4, 4) if self.coarse is None else self.coarse
        return [self(x, t), coarse]


def test_stage_losses_are_added_with_their_weight():
    diffusion = create_diffusion()
    model = TwoStageModel()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 400])
    target = multiscale_noise_target(noise, 4)

    terms = diffusion.training_losses(model, x0, t, noise=noise)
    expected_stage = 0.25 * (target ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["stage_mse"], expected_stage)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"] + expected_stage)

    model.coarse = torch.cat([target, torch.zeros_like(target)], dim=1)
    terms = diffusion.training_losses(model, x0, t, noise=noise)
    assert terms["stage_mse"].abs().max() < 1e-12

    model.stage_loss_weights = (1.0, 0.25, 0.1)
    with pytest.raises(ValueError, match="stage"):
        diffusion.training_losses(model, x0, t, noise=noise)


# -- sampling ----------------------------------------------------------------------------------

def _samplers():
    """Each sampler as f(model, generator) with 10 steps."""
    ddpm, ddim = create_diffusion("10"), create_diffusion("ddim10")
    samplers = {
        "p_sample_loop": lambda m, g: ddpm.p_sample_loop(m, SHAPE, generator=g),
        "ddim_oracle": lambda m, g: ddim_sample(ddim, m, SHAPE, generator=g),
        "ddim_oracle_eta1": lambda m, g: ddim_sample(ddim, m, SHAPE, generator=g, eta=1.0),
    }
    for kind in SCHEDULERS:
        samplers[f"diffusers-{kind}"] = (
            lambda m, g, kind=kind: sample_with_scheduler(m, ddpm, kind, 10, SHAPE, generator=g))
    return samplers


@pytest.mark.parametrize("name", list(_samplers()))
def test_sampler_is_reproducible_from_its_generator(name):
    sample = _samplers()[name]
    global_state = torch.get_rng_state()
    first = sample(gaussian_data_model, torch.Generator().manual_seed(7))
    again = sample(gaussian_data_model, torch.Generator().manual_seed(7))
    other = sample(gaussian_data_model, torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert first.shape == SHAPE and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_samplers_run_with_a_module_and_labels():
    model, y = ConvModel(scale=0.05), {"y": torch.tensor([0, 1])}
    sample = create_diffusion("5").p_sample_loop(model, SHAPE, model_kwargs=y, progress=True)
    assert sample.shape == SHAPE
    sample = sample_with_scheduler(model, create_diffusion(), "dpm-solver", 5, SHAPE,
                                   model_kwargs=y)
    assert sample.shape == SHAPE


def test_sampling_model_sees_original_timesteps():
    diffusion, model = create_diffusion("10"), RecordingModel()
    diffusion.p_sample_loop(model, SHAPE, generator=torch.Generator().manual_seed(0))
    assert [t[0].item() for t in model.seen] == diffusion.timestep_map[::-1].tolist()
    assert all(t.dtype == torch.long and t.shape == (SHAPE[0],) for t in model.seen)


def test_scheduler_timesteps_are_original_indices():
    betas = create_diffusion().original_betas
    for kind in SCHEDULERS:
        timesteps = make_scheduler(kind, betas, 25).timesteps
        assert timesteps.dtype == torch.int64 and len(timesteps) == 25
        assert timesteps.min() >= 0 and timesteps.max() <= 999
        assert (timesteps[1:] < timesteps[:-1]).all()
    assert make_scheduler("ddim", betas, 25).timesteps.tolist() == list(range(960, -1, -40))
    with pytest.raises(ValueError):
        make_scheduler("euler", betas, 25)


def test_p_sample_loop_on_gaussian_data_gives_unit_variance():
    sample = create_diffusion("250").p_sample_loop(
        gaussian_data_model, (8, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    assert sample.mean().item() == pytest.approx(0.0, abs=0.05)
    assert sample.std().item() == pytest.approx(1.0, abs=0.05)


def test_diffusers_ddim_equals_the_ddim_oracle_on_the_same_steps():
    """Same steps, same generator, same draw order: the chains agree up to float32 rounding
    (diffusers keeps its schedule in float32)."""
    diffusion = create_diffusion("ddim10")
    oracle = ddim_sample(diffusion, gaussian_data_model, SHAPE,
                         generator=torch.Generator().manual_seed(3))
    theirs = sample_with_scheduler(gaussian_data_model, diffusion, "ddim", 10, SHAPE,
                                   generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(oracle, theirs, atol=1e-4, rtol=1e-4)


def test_p_sample_loop_equals_diffusers_ddpm_on_the_same_steps():
    diffusion = create_diffusion("10")
    own = diffusion.p_sample_loop(gaussian_data_model, SHAPE,
                                  generator=torch.Generator().manual_seed(3))
    theirs = diffusers_ddpm(gaussian_data_model, diffusion.original_betas, 10, SHAPE,
                            generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(own, theirs, atol=1e-4, rtol=1e-4)


def test_deterministic_samplers_recover_a_point_mass():
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    oracle = point_mass_model(x0)
    own_ddim = ddim_sample(create_diffusion("ddim25"), oracle, SHAPE, noise=noise)
    torch.testing.assert_close(own_ddim, x0, atol=1e-9, rtol=0)
    # Ancestral sampling too ends exactly at x0: its last step returns the x0 prediction.
    own_ddpm = create_diffusion("25").p_sample_loop(oracle, SHAPE, noise=noise)
    torch.testing.assert_close(own_ddpm, x0, atol=1e-9, rtol=0)
    for kind in ("ddim", "dpm-solver"):
        sample = sample_with_scheduler(oracle, create_diffusion(), kind, 25, SHAPE,
                                       noise=noise.float())
        torch.testing.assert_close(sample, x0.float(), atol=1e-4, rtol=1e-4)
